#!/usr/bin/env bash
# GPU figures of issue 14 in one unattended run, no downloads (bench/gpu_suite.py has the details):
#   bash bench/gpu_suite.sh --out $OUT/gpu_suite.json            full suite, < 8 min on one H100
#   bash bench/gpu_suite.sh --quick --out $OUT/gpu_suite.json    fewer repeats, < 2.5 min
#   bash bench/gpu_suite.sh --dry-run --out /tmp/gpu_suite.json  CPU, tiny preset: checks every code path (CI)
# Python: $PYTHON if set, else python3. Needs torch, einops, safetensors, numpy, pillow and kornia (PYTHONPATH).
# A hard wall-clock limit ($SUITE_TIMEOUT s, default 470; --quick 150) ends the run; the JSON keeps every case
# finished before it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # repose_core from this checkout, no install needed
PY="${PYTHON:-python3}"
limit="${SUITE_TIMEOUT:-470}"
for a in "$@"; do
  if [ "$a" = "--quick" ] && [ -z "${SUITE_TIMEOUT:-}" ]; then limit=150; fi
  if [ "$a" = "-h" ] || [ "$a" = "--help" ]; then exec "$PY" bench/gpu_suite.py --help; fi
done
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout --signal=TERM --kill-after=10 "$limit" "$PY" bench/gpu_suite.py "$@"
