r"""Held-out losses with and without the memory at every checkpoint of a run.

  .venv/bin/python bench/memory_eval.py --workdir=RUN [--samples=16] [--watch]

Reads RUN/config.json, evaluates step 0 (initial candidates) and every
checkpoint not yet in RUN/heldout.jsonl (focus_jax.train.evaluate: the
config's eval_data, seed + 1000, the same samples at every step) with one
target token (K = 1, whatever the run trained with), and appends one JSON line
per step to RUN/heldout.jsonl. --watch keeps polling until the run's last
step is evaluated (run it beside the training).
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training run folder.")
flags.DEFINE_integer("samples", 16, "Held-out samples (two tasks each).")
flags.DEFINE_boolean("watch", False, "Poll for new checkpoints until the last step.")
flags.DEFINE_integer("poll_s", 60, "Seconds between polls with --watch.")
flags.DEFINE_integer("every", 1, "Evaluate only checkpoints whose step is a multiple of this.")
flags.DEFINE_boolean("retrieval", False, "Held-out fact-retrieval documents (data.retrieval) "
                     "instead of the eval data's own tasks; appends to heldout_retrieval.jsonl.")
flags.mark_flag_as_required("workdir")

HELDOUT_FILE = "heldout.jsonl"
RETRIEVAL_FILE = "heldout_retrieval.jsonl"


def read_heldout(workdir: str, name: str = HELDOUT_FILE) -> list[dict]:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()
                and os.path.exists(os.path.join(d, n, "_CHECKPOINT_METADATA")))


def main(argv):
  del argv
  import ml_collections
  from focus_jax.train.evaluate import evaluate
  wd = FLAGS.workdir
  with open(os.path.join(wd, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.target_tokens = 1
  last = int(config.steps)
  name = RETRIEVAL_FILE if FLAGS.retrieval else HELDOUT_FILE
  while True:
    done = {r["step"] for r in read_heldout(wd, name) if r.get("n_samples") == FLAGS.samples}
    todo = [s for s in [0] + _steps(wd) if s not in done and s % FLAGS.every == 0]
    for s in todo:
      t = time.time()
      r = evaluate(config, wd, FLAGS.samples, step=s, retrieval=FLAGS.retrieval)
      r.update(n_samples=FLAGS.samples, eval_s=round(time.time() - t, 1))
      with open(os.path.join(wd, name), "a") as f:
        f.write(json.dumps(r) + "\n")
      print(json.dumps(r), flush=True)
    if not FLAGS.watch or last in done | set(todo):
      return
    time.sleep(FLAGS.poll_s)


if __name__ == "__main__":
  app.run(main)
