#!/usr/bin/env bash
# The main job on the bundled model, from a fresh clone: sets up .venv (scripts/bootstrap.sh), then runs
# `psvit-export demo` (ONNX FP32/FP16/INT8, engines where a builder is installed, accuracy and latency tables).
# Extra arguments go to `psvit-export demo`, e.g. `bash scripts/demo.sh --out /tmp/demo`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec "${PSVIT_VENV:-$root/.venv}/bin/psvit-export" demo "$@"
