#!/usr/bin/env bash
# Interleaved A/B of `hhmr bench --json`: a git revision (A) against this working tree (B),
# alternating B, A, B, A ... so the VM's speed swings hit both alike; prints each row's median
# over the rounds and B/A. Usage: bash research/bench_ab.sh REV [ROUNDS=4] [--service]
# (~40 s a run; with --service, `hhmr bench --service --json`: p50 and requests/s per client
# count against a real server, ~70 s a run)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1; rounds=${2:-4}; extra=("${@:3}")
[[ $rounds =~ ^[0-9]+$ ]] || { echo "ROUNDS must be a number (before --service)" >&2; exit 2; }
out=$(mktemp -d); base="$out/base"
git worktree add -q --detach "$base" "$rev"
trap 'git worktree remove --force "$base"; rm -rf "$out"' EXIT
py=$(command -v python)
for i in $(seq "$rounds"); do
  python -m hhmr.cli bench ${extra[@]+"${extra[@]}"} --json > "$out/b$i.json"
  (cd "$base" && PYTHONPATH="$base/backend" "$py" -m hhmr.cli bench \
    ${extra[@]+"${extra[@]}"} --json > "$out/a$i.json")
done
python - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for side in "ab":
    for i in range(1, rounds + 1):
        for r in json.load(open(f"{out}/{side}{i}.json"))["results"]:
            if "clients" in r:  # --service: one row per client count
                keys = [(f"service {r['clients']} clients p50 ms", r["p50_ms"]),
                        (f"service {r['clients']} clients req/s", r["throughput_rps"])]
            else:
                keys = [(f"{r['task']} n={r['n']} guided={r['guidance']} ms", r["median_ms"])]
            for key, value in keys:
                rows.setdefault(key, {}).setdefault(side, []).append(value)
print(f"{'row':36s} {'A':>7s} {'B':>7s}  B/A")
for key, v in rows.items():
    a, b = statistics.median(v["a"]), statistics.median(v["b"])
    print(f"{key:36s} {a:7.1f} {b:7.1f}  {b / a:.2f}")
PY
