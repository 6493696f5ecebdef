r"""Trains FocusLLM's candidate projections.

  python -m launch.train --config=configs/tiny.py --workdir=DIR [--config.lr=1e-4 ...]

Every field of the config file can be overridden on the command line
(`--config.steps=100`, `--config.chunk_sizes='(64,128)'`). The run resumes
from DIR's latest checkpoint that restores; a config that changes the run's
meaning is refused unless --allow_config_change, and --config.resume=False
into a DIR with checkpoints is refused. Multi-process: pass --coordinator_address,
--num_processes and --process_id, or run under SLURM / a TPU pod, where
jax.distributed is initialised from the environment. --export_only writes
DIR/model from DIR's latest checkpoint without training; --eval=N prints the
held-out losses (with and without the memory) of N samples.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from launch.cli_errors import fail_cleanly, run_cli, start

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, trained model.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_boolean("export_only", False, "Write WORKDIR/model from the latest checkpoint; no training.")
flags.DEFINE_integer("eval", 0, "Instead of training: held-out losses on this many samples "
                     "(printed as one JSON line).")
flags.DEFINE_integer("eval_step", -1, "Checkpoint step for --eval: -1 the latest, 0 the initial "
                     "candidate projections.")
flags.DEFINE_boolean("allow_config_change", False, "Resume even when the config differs from "
                     "WORKDIR/config.json in a field that changes the run (model, data, lr, "
                     "losses, shapes); the change is recorded in WORKDIR/config_history.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])

log = logging.getLogger("focus_jax.launch.train")


def run(config, workdir):
  from focus_jax.train.distributed import maybe_initialize
  maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.eval:
    import json
    from focus_jax.train.evaluate import evaluate
    step = None if FLAGS.eval_step < 0 else FLAGS.eval_step
    result = evaluate(config, workdir, FLAGS.eval, step=step,
                      allow_config_change=FLAGS.allow_config_change)
    print(json.dumps(result), flush=True)
    return result
  from focus_jax.train.loop import train
  summary = train(config, workdir, export_only=FLAGS.export_only,
                  allow_config_change=FLAGS.allow_config_change)
  log.info("done: %s", summary)
  return summary


def check_config_file(path) -> None:
  """One line and exit 1 for a --config file that does not exist (ml_collections would
  raise while parsing the flags when overrides follow)."""
  if path is not None and not os.path.isfile(path.split(":", 1)[0]):
    print(f"train: error: --config={path}: no such file", file=sys.stderr)
    sys.exit(1)


def _config_arg(argv):
  for i, a in enumerate(argv[1:], 1):
    if a.startswith("--config="):
      return a[len("--config="):]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def main(argv):
  start("train", argv)
  check_config_file(config_flags.get_config_filename(FLAGS["config"]))
  from focus_jax.train.loop import NonFiniteLoss
  try:
    fail_cleanly("train", run, FLAGS.config, FLAGS.workdir)
  except NonFiniteLoss as e:
    print(f"train: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from launch.console import resolve_config_argv
  sys.argv = resolve_config_argv(sys.argv)
  check_config_file(_config_arg(sys.argv))
  run_cli("train", main)
