r"""Held-out FocusLLM losses with and without the memory against step, one line per run.

  .venv/bin/python bench/plot_memory.py --runs=NAME=RUN_DIR,NAME2=RUN_DIR2 \
      [--out=docs/memory_training.png]

Each RUN_DIR holds heldout.jsonl (bench/memory_eval.py) and metrics.jsonl
(the training loop), and optionally heldout_retrieval.jsonl (memory_eval.py
--retrieval). Four panels: held-out repetition loss, held-out continuation
loss, held-out fact retrieval (solid: with the memory, dashed: without, the
plain model on the same local windows), and the training loss (window means
of metrics.jsonl).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", None, "Comma-separated NAME=RUN_DIR.")
flags.DEFINE_string("out", "docs/memory_training.png", "PNG to write.")
flags.DEFINE_integer("window", 25, "Steps per training-loss mean.")
flags.mark_flag_as_required("runs")


def _heldout(run: str, name: str = "heldout.jsonl") -> list[dict]:
  path = os.path.join(run, name)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = {}
    for line in f:
      if line.strip():
        r = json.loads(line)
        rows[r["step"]] = r
  return [rows[s] for s in sorted(rows)]


def main(argv):
  del argv
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from focus_jax.train.metrics import loss_curve, read_metrics
  runs = [r.split("=", 1) for r in FLAGS.runs.split(",") if r]
  for r in runs:
    if len(r) != 2:
      raise SystemExit(f"--runs entries must be NAME=RUN_DIR, got {'='.join(r)!r}")
  fig, axes = plt.subplots(1, 4, figsize=(21, 4.8))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (name, run) in enumerate(runs):
    col = colors[i % len(colors)]
    ho, hr = _heldout(run), _heldout(run, "heldout_retrieval.jsonl")
    for ax, kind, rows in ((axes[0], "repetition", ho), (axes[1], "continuation", ho),
                           (axes[2], "continuation", hr)):
      pts = [r for r in rows if f"loss_{kind}" in r]
      if pts:
        st = [r["step"] for r in pts]
        ax.plot(st, [r[f"loss_{kind}"] for r in pts], "-o", color=col, ms=3,
                label=f"{name}, memory")
        ax.plot(st, [r[f"loss_{kind}_no_memory"] for r in pts], "--x", color=col, lw=1, ms=4,
                label=f"{name}, no memory")
    if os.path.exists(os.path.join(run, "metrics.jsonl")):
      curve = loss_curve(read_metrics(run), FLAGS.window)
      if curve:
        axes[3].plot([c["last_step"] for c in curve], [c["loss"] for c in curve], "-",
                     color=col, label=name)
  for ax, title in zip(axes, ("held-out repetition loss (K=1)",
                              "held-out continuation loss (K=1)",
                              "held-out fact retrieval: a token of the number",
                              f"training loss (means of {FLAGS.window} steps)")):
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  tmp = FLAGS.out + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, FLAGS.out)
  print(FLAGS.out)


if __name__ == "__main__":
  app.run(main)
