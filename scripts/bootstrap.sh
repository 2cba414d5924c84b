#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with everything the tests and the demo
# need, then install this project in editable mode. Idempotent: re-runs only when pyproject.toml changed.
#
# torch: 2.14.1 + torchvision 0.29.1 because timm (used to check DeiT parity) needs torchvision; on the
# machines this project is developed on, pip takes both from a local wheel cache.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${PSVIT_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.psvit-bootstrap"
want="$(cat "$root/pyproject.toml" "$0" | sha256sum | cut -c1-16)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] creating $venv (first run takes about 2 minutes)" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" -U pip 2>&1 | grep -v "is ignored" >&2 || true
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" >&2 || true
"${pip[@]}" -e "$root[onnx,trt-rtx,timm,plot,serve,examples,parquet,ray,test]" 2>&1 | grep -v "is ignored" >&2 || true
"$venv/bin/python" -c "import psvit, psvit.export, psvit.serve, torch, timm, onnxruntime, tensorrt_rtx, pytriton, tritonclient.grpc, fastapi, ray, pyarrow" \
  || { echo "[bootstrap] the environment in $venv is incomplete (see pip's output above)" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[bootstrap] ready: $venv" >&2
