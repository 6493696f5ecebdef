#!/usr/bin/env bash
# The evaluations of docs/RESULTS.md on the embedded SmolLM2 (reduced grid for a 2-core CPU).
# Resumable: run it again to continue; each step logs its wall time to $RUNS/times.log.
#   bench/eval_smollm2.sh CHECKPOINT RUNS_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-/work/main/.venv/bin/python}"
CKPT="$1"
RUNS="$2"
mkdir -p "$RUNS"
FOCUS="--chunk_size=1024 --local_window=1024 --fragment_len=512 --min_focus_len=2048"
SE="--neighbor_window=1024"
step() {  # name, args...
  local name="$1"; shift
  local t0=$(date +%s)
  nice -n 19 "$PY" -m launch.evaluate --checkpoint="$CKPT" --out="$RUNS/$name" "$@" \
      > "$RUNS/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s: $*" >> "$RUNS/times.log"
}
PK="--task=passkey --depths=0,0.5,1 --seeds=1"
step passkey_plain --mode=plain $PK --lengths=4096,8192
step passkey_selfextend --mode=selfextend $SE $PK --lengths=4096,8192
step passkey_focus --mode=focus $FOCUS $PK --lengths=4096,8192
PPL="--task=perplexity --max_windows=2"
step ppl_plain --mode=plain $PPL --lengths=2048,4096,8192
step ppl_selfextend --mode=selfextend $SE $PPL --lengths=2048,4096,8192,16384
step ppl_focus --mode=focus $FOCUS --task=perplexity --max_windows=1 --lengths=4096,8192
step passkey_selfextend --mode=selfextend $SE $PK --lengths=4096,8192,16384
step passkey_focus --mode=focus $FOCUS $PK --lengths=4096,8192,16384
