#!/usr/bin/env bash
# The two user commands of this repository (see README.md):
#   bash run.sh demo [args...]        install the core environment, then run the demo (python -m repose_core.demo)
#   bash run.sh test [pytest args...] install everything incl. a real ComfyUI host, then run the whole test suite
# Environments are cached under $REPOSE_CACHE (default ~/.cache/repose); see scripts/bootstrap.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
  sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

# repose_core and train/ import from this checkout without an install (an installed copy would come second)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

cmd="${1:-}"
if [ $# -gt 0 ]; then shift; fi
case "$cmd" in
  demo)
    source scripts/bootstrap.sh core
    if [ ! -f repose_core/demo.py ] && [ ! -f repose_core/demo/__main__.py ]; then
      echo "run.sh: the demo (repose_core/demo.py) is not part of this checkout yet; the environment is ready at $REPOSE_PY" >&2
      exit 3
    fi
    exec "$REPOSE_PY" -m repose_core.demo "$@"
    ;;
  test)
    source scripts/bootstrap.sh comfy
    export REPOSE_COMFY
    echo "[run.sh] python: $REPOSE_PY" >&2
    echo "[run.sh] ComfyUI host: $REPOSE_COMFY" >&2
    exec "$REPOSE_PY" -m pytest "$@"
    ;;
  -h|--help|help)
    usage
    ;;
  *)
    echo "run.sh: unknown or missing command '${cmd}'" >&2
    usage
    exit 2
    ;;
esac
