#!/usr/bin/env bash
# Interleaved A/B of `hhmr bench --json`: a git revision (A) against this working tree (B),
# alternating B, A, B, A ... so the VM's speed swings hit both alike; prints each row's median
# over the rounds and B/A. Usage: bash research/bench_ab.sh REV [ROUNDS=4]   (~40 s a run)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1; rounds=${2:-4}
out=$(mktemp -d); base="$out/base"
git worktree add -q --detach "$base" "$rev"
trap 'git worktree remove --force "$base"; rm -rf "$out"' EXIT
py=$(command -v python)
for i in $(seq "$rounds"); do
  python -m hhmr.cli bench --json > "$out/b$i.json"
  (cd "$base" && PYTHONPATH="$base/backend" "$py" -m hhmr.cli bench --json > "$out/a$i.json")
done
python - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for side in "ab":
    for i in range(1, rounds + 1):
        for r in json.load(open(f"{out}/{side}{i}.json"))["results"]:
            rows.setdefault((r["task"], r["n"], r["guidance"]), {}).setdefault(side, []).append(
                r["median_ms"])
print(f"{'task':20s} {'n':>3s} {'guided':>6s} {'A ms':>7s} {'B ms':>7s}  B/A")
for (task, n, guided), v in rows.items():
    a, b = statistics.median(v["a"]), statistics.median(v["b"])
    print(f"{task:20s} {n:3d} {str(guided):>6s} {a:7.1f} {b:7.1f}  {b / a:.2f}")
PY
