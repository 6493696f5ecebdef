#!/usr/bin/env bash
# Demo: the embedded SmolLM2-135M-Instruct GGUF -> focus_jax checkpoint -> greedy generation.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
CKPT=out/smollm2

GGUF="$("$PY" -c 'from focus_jax import assets; print(assets.smollm2_gguf())')"
if [[ -d "$CKPT" ]]; then
  echo "using existing checkpoint $CKPT"
else
  "$PY" -m launch.convert --hf_model="$GGUF" --out="$CKPT"
fi
"$PY" -m launch.generate --checkpoint="$CKPT" --prompt="The capital of France is" --max_new_tokens=16
