#!/usr/bin/env bash
# Product check on a machine with a CUDA GPU, in under 10 minutes: the device, the model and
# sampling tests on cuda, `hhmr bench` on cuda and a short mixed-precision (bf16 autocast)
# training run. Every log and JSON goes to one folder; each step has a time limit and a
# failing step does not stop the others. The machine needs no network: torch (and pytest for
# the tests) must be installed; the project is used from this tree (PYTHONPATH=backend)
# unless `import hhmr` already works.
#
# Usage: bash tools/gpu_check.sh   (from the repository root or anywhere)
#   OUT=folder (default: $OUT if set, else gpu_check_out), PYTHON=python3,
#   TRAIN_MINUTES=3, KEEP_CHECKPOINTS=1 keeps the training run's .pt files.
# Writes: nvidia-smi.txt, torch.json, pytest.log/.xml, bench.json, train.json, each step's
# stdout (NAME.log) and stderr (NAME.err), and summary.json ({"steps": [{"name", "rc", "seconds"}], ...}; rc 124: the step timed out).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
TRAIN_MINUTES="${TRAIN_MINUTES:-3}"
STEPS=()
START=$(date +%s)

# step NAME LIMIT_S COMMAND...: run with a time limit; stdout to $OUT/NAME.log, stderr to
# $OUT/NAME.err; records the exit status and the seconds
step() {
  local name=$1 limit=$2 t0 rc ms
  shift 2
  t0=$(date +%s%N)
  echo "== $name (limit ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>"$OUT/$name.err"
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  STEPS+=("$name $rc $((ms / 1000)).$(printf '%03d' $((ms % 1000)))")
  echo "   rc $rc, ${ms} ms" >&2
  return 0
}

# (a) the machine and the project
step nvidia_smi 30 nvidia-smi
cp "$OUT/nvidia_smi.log" "$OUT/nvidia-smi.txt" 2>/dev/null
if ! "$PY" -c "import hhmr" >/dev/null 2>&1; then
  export PYTHONPATH="$PWD/backend${PYTHONPATH:+:$PYTHONPATH}"
fi
step torch 60 "$PY" -c '
import json, sys, torch
import hhmr
info = {"python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "hhmr": hhmr.__file__}
if torch.cuda.is_available():
    info.update(device=torch.cuda.get_device_name(0),
                bf16=torch.cuda.is_bf16_supported(),
                memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
print(json.dumps(info, indent=1))
'
cp "$OUT/torch.log" "$OUT/torch.json" 2>/dev/null

# (b) the tests that touch models, diffusion, sampling and training (files that exist)
shopt -s nullglob
TESTS=(tests/test_models*.py tests/test_graph_unet*.py tests/test_diffusion*.py
       tests/test_sampling*.py tests/test_training*.py tests/test_device.py)
shopt -u nullglob
if [ ${#TESTS[@]} -gt 0 ]; then
  step pytest 180 env HHMR_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
    --maxfail=10 --junitxml="$OUT/pytest.xml" "${TESTS[@]}"
else
  STEPS+=("pytest 127 0")
fi

# (c) latency and memory of each task on the GPU
step bench 120 "$PY" -m hhmr.cli bench --device cuda --json
cp "$OUT/bench.log" "$OUT/bench.json" 2>/dev/null

# (d) a short training run (bf16 autocast on cuda)
step train $((TRAIN_MINUTES * 60 + 90)) "$PY" -m hhmr.cli train --config configs/prior.toml \
  --out "$OUT/train" --fresh --max-minutes "$TRAIN_MINUTES" --device cuda
sed -n '/^{/,$p' "$OUT/train.log" >"$OUT/train.json" 2>/dev/null
if [ "${KEEP_CHECKPOINTS:-0}" != 1 ] && [ -d "$OUT/train" ]; then
  ls -l "$OUT/train" >"$OUT/train_files.txt" 2>&1
  rm -f "$OUT"/train/*.pt
fi

# summary
{
  printf '{"out": "%s", "total_seconds": %s, "steps": [' "$OUT" "$(( $(date +%s) - START ))"
  sep=""
  for s in "${STEPS[@]}"; do
    read -r name rc secs <<<"$s"
    printf '%s\n {"name": "%s", "rc": %s, "seconds": %s}' "$sep" "$name" "$rc" "$secs"
    sep=","
  done
  printf '\n]}\n'
} >"$OUT/summary.json"
cat "$OUT/summary.json"
