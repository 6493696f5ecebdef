#!/usr/bin/env bash
# Demo: the embedded SmolLM2-135M-Instruct GGUF -> focus_jax checkpoint -> generation; a short
# FocusLLM training run with its held-out losses; HF export + transformers reload; FocusLLM
# with the shipped trained candidates against the plain model on the same local window.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
# This runs on the CPU: JAX need not probe for (and report the absence of) TPUs and GPUs.
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
say() { printf '\n== %s\n' "$*"; }
CKPT=out/smollm2
PROMPT="The capital of France is"

say "1. SmolLM2-135M-Instruct (the embedded GGUF) as a focus_jax checkpoint, greedy generation"
GGUF="$("$PY" -c 'from focus_jax import assets; print(assets.smollm2_gguf())')"
if [[ -d "$CKPT" ]]; then
  echo "using existing checkpoint $CKPT"
else
  "$PY" -m launch.convert --hf_model="$GGUF" --out="$CKPT"
fi
GEN="$("$PY" -m launch.generate --checkpoint="$CKPT" --prompt="$PROMPT" --max_new_tokens=16)"
GEN="'${GEN//$'\n'/\\n}'"   # one line, quoted
echo "$PROMPT -> $GEN"

# FocusLLM training of the candidate projections (a few steps: minutes on 2 CPU cores;
# DEMO_TRAIN_STEPS=N for more). One step's loss is that of one target token, so the
# per-step log jumps around; the held-out losses below average 4 unseen samples.
STEPS="${DEMO_TRAIN_STEPS:-6}"
RUN=out/demo_train
HF_OUT=out/demo_train_hf
TRAIN=(--config=configs/smollm2_135m.py --workdir="$RUN" --config.steps="$STEPS"
       --config.warmup_steps=2 --config.checkpoint_every=3)
say "2. FocusLLM training of the candidate projections: $STEPS steps"
echo "(each step's loss is that of one target token of one sample: noise from step to step)"
"$PY" -m launch.train "${TRAIN[@]}"
heldout() {   # $1: checkpoint step (0: the initial copies, -1: the latest) -> "LOSS LOSS_NO_MEMORY"
  "$PY" -m launch.train "${TRAIN[@]}" --eval=4 --eval_step="$1" | tail -n 1 | "$PY" -c '
import json, sys
r = json.loads(sys.stdin.read())
print("%.3f %.3f" % (r["loss"], r["loss_no_memory"]))'
}
read -r L0 N0 <<< "$(heldout 0)"
read -r L1 N1 <<< "$(heldout -1)"
echo "held-out loss, mean over 4 samples the run never saw (8 targets):"
echo "  with the memory:    $L0 before training, $L1 after $STEPS steps"
echo "  without the memory: $N0 before, $N1 after (the plain model on the local window)"

say "3. The trained checkpoint as an HF folder, reloaded by plain transformers"
"$PY" -m launch.export_hf --checkpoint="$RUN/model" --out="$HF_OUT" --overwrite
HF_GEN="$("$PY" - "$HF_OUT" "$PROMPT" <<'PYEOF'
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging
logging.set_verbosity_error()   # its weight-loading bar and notes are not part of the demo
logging.disable_progress_bar()
path, prompt = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
ids = tok(prompt, return_tensors="pt")
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
print(repr(tok.decode(out[0][ids["input_ids"].shape[1]:])))
PYEOF
)"
echo "transformers reload: $PROMPT -> $HF_GEN"

# FocusLLM with the trained candidates that ship with focus_jax (focus_jax/trained/,
# reproduced by `make train-smollm2`): a 2K-token prompt whose answer lies far before
# the local window, FocusLLM (memory + local window) against the plain model on the
# local window alone.
say "4. The shipped trained candidates (600 steps): answers from outside the local window"
TRAINED_HF=out/smollm2_memory_hf
TRAINED=out/smollm2_memory
# Rebuilt when the shipped file changed since the last demo (its pinned sha256 is
# recorded beside the converted checkpoint), so an upgrade never demos stale candidates.
SHIPPED_SHA="$("$PY" -c 'from focus_jax import trained; print(trained.SHIPPED["smollm2_memory"])')"
if [[ ! -d "$TRAINED" || "$(cat "$TRAINED.sha256" 2>/dev/null)" != "$SHIPPED_SHA" ]]; then
  "$PY" -m focus_jax.trained --out="$TRAINED_HF" --overwrite
  "$PY" -m launch.convert --hf_model="$TRAINED_HF" --out="$TRAINED" --overwrite
  echo "$SHIPPED_SHA" > "$TRAINED.sha256"
fi
verdict() {   # the JSON last line of launch.demo_memory -> "FocusLLM right, plain model wrong"
  "$PY" -c '
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
m = ["right" if r[k]["correct"] else "wrong"
     for k in ("FocusLLM (memory + local window)", "plain model, local window only")]
print("FocusLLM %s, plain model %s" % tuple(m))'
}
FACT="$("$PY" -m launch.demo_memory --checkpoint="$TRAINED" --task=fact --length=2048 --depth=0.3)"
echo "$FACT" | head -n -1
PASS="$("$PY" -m launch.demo_memory --checkpoint="$TRAINED" --task=passkey --length=2048 --depth=0.3)"
echo "$PASS" | head -n -1

say "What this showed"
echo "1. SmolLM2-135M, converted from its GGUF file, continues '$PROMPT' with $GEN."
echo "2. $STEPS FocusLLM training steps took the held-out loss with the memory from $L0 to $L1" \
     "against $N1 without it: a memory that helps takes hundreds of steps (make train-smollm2: 600)."
echo "3. The trained checkpoint exports to an HF folder that plain transformers loads and" \
     "generates from: $HF_GEN."
echo "4. With the shipped trained candidates, on 2K-token prompts whose answer is outside the" \
     "last 128 tokens: fact $(echo "$FACT" | verdict); passkey $(echo "$PASS" | verdict)."
