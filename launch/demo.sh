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

# FocusLLM training of the candidate projections (a few steps: minutes on 2 CPU cores;
# DEMO_TRAIN_STEPS=N for more), export to an HF folder, reload it with transformers,
# then FocusLLM generation with the trained parameters on a passkey prompt.
RUN=out/demo_train
HF_OUT=out/demo_train_hf
"$PY" -m launch.train --config=configs/smollm2_135m.py --workdir="$RUN" \
  --config.steps="${DEMO_TRAIN_STEPS:-6}" --config.warmup_steps=2 --config.checkpoint_every=3
"$PY" -m launch.export_hf --checkpoint="$RUN/model" --out="$HF_OUT" --overwrite
"$PY" - "$HF_OUT" <<'PYEOF'
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
ids = tok("The capital of France is", return_tensors="pt")
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
print("transformers reload:", repr(tok.decode(out[0][ids["input_ids"].shape[1]:])))
PYEOF
# FocusLLM with the trained candidates that ship with focus_jax (focus_jax/trained/,
# reproduced by `make train-smollm2`): a 2K-token prompt whose answer lies far before
# the local window, FocusLLM (memory + local window) against the plain model on the
# local window alone.
TRAINED_HF=out/smollm2_memory_hf
TRAINED=out/smollm2_memory
if [[ ! -d "$TRAINED" ]]; then
  "$PY" -m focus_jax.trained --out="$TRAINED_HF" --overwrite
  "$PY" -m launch.convert --hf_model="$TRAINED_HF" --out="$TRAINED"
fi
"$PY" -m launch.demo_memory --checkpoint="$TRAINED" --task=fact --length=2048 --depth=0.3
"$PY" -m launch.demo_memory --checkpoint="$TRAINED" --task=passkey --length=2048 --depth=0.3
