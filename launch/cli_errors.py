"""Shared CLI plumbing: readable progress logs and one-line errors for bad input.

  if __name__ == "__main__":
    run_cli("convert", main)

Bad flags, bad files and bad values end with exit status 1 and a single
`prog: error: message` line on stderr, no traceback. Default logs are one line
per phase; `--verbosity=1` (absl's flag) brings back the per-tensor / per-layer
detail and JAX's own INFO lines.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags

# Errors that mean bad input (a path, a file, a config): reported in one line.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               PermissionError, OSError, app.UsageError, UnicodeDecodeError)
# Loggers whose INFO lines are per-tensor / per-layer detail (shown with --verbosity=1).
DETAIL_LOGGERS = ("focus_jax.checkpoint", "focus_jax.model", "focus_jax.focus",
                  "focus_jax.generation", "focus_jax.selfextend", "focus_jax.data")


class _HideBackendProbe(logging.Filter):
  """Drops JAX's "Unable to initialize backend 'tpu'" style lines (a CPU machine is fine)."""

  def filter(self, record):
    return "Unable to initialize backend" not in record.getMessage()


def start(name: str, argv: list[str]) -> None:
  """A launcher's first step in main(argv): refuse positional arguments (absl hands them
  over unparsed) with one line and exit status 1, then setup_logging()."""
  if len(argv) > 1:
    print(f"{name}: error: unexpected arguments: {argv[1:]}", file=sys.stderr)
    sys.exit(1)
  setup_logging()


def setup_logging() -> None:
  """focus_jax phases at INFO; detail loggers, Orbax, absl and JAX at WARNING unless
  --verbosity >= 1."""
  verbose = flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1
  logging.getLogger("focus_jax").setLevel(logging.INFO)
  for name in DETAIL_LOGGERS:
    logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
  for name in ("absl", "jax", "orbax", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
  if not verbose:
    for name in ("jax._src.xla_bridge", "jax"):
      logging.getLogger(name).addFilter(_HideBackendProbe())
    # Hide JAX's backend probe even where it goes through absl's root handler.
    for h in logging.getLogger().handlers:
      h.addFilter(_HideBackendProbe())


def error_line(prog: str, e: BaseException) -> str:
  msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  return f"{prog}: error: {msg}"


def fail_cleanly(prog: str, fn, *args, **kw):
  """Runs fn; on a user error exits with status 1 and `prog: error: message` on stderr."""
  try:
    return fn(*args, **kw)
  except USER_ERRORS as e:
    print(error_line(prog, e), file=sys.stderr)
    sys.exit(1)


def run_cli(prog: str, main) -> None:
  """absl app.run with flag errors (bad value, missing required flag) in one line."""
  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(error_line(prog, e), file=sys.stderr)
      sys.exit(1)
  app.run(main, flags_parser=parse)
