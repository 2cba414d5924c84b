#!/usr/bin/env bash
# Run the test suite from a fresh clone: sets up .venv (scripts/bootstrap.sh), then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` or `bash scripts/test.sh tests/test_model.py`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec "${PSVIT_VENV:-$root/.venv}/bin/python" -m pytest "$@"
