#!/usr/bin/env bash
# One prepared accelerator check (bench/device_check.py): kernels against the reference,
# prefill/FocusLLM/training throughput, FSDP equality. The last line is one JSON object.
#   bench/device_check.sh            on a GPU / TPU host (about 8 minutes on one H200)
#   bench/device_check.sh --quick    tiny, on CPU (a minute or two)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [[ " $* " == *" --quick "* ]]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
else
  # the device's memory is for the checks: no preallocation of most of it
  export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
fi
exec "$PY" bench/device_check.py "$@"
