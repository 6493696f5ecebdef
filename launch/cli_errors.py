"""Shared CLI plumbing: readable progress logs and one-line errors for bad input."""
from __future__ import annotations

import logging
import sys

# Errors that mean bad input (a path, a file, a config): reported in one line.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               PermissionError, OSError)


def setup_logging() -> None:
  """Shows focus_jax progress at INFO; keeps Orbax/JAX chatter at WARNING."""
  logging.getLogger("focus_jax").setLevel(logging.INFO)
  for name in ("absl", "jax", "orbax"):
    logging.getLogger(name).setLevel(logging.WARNING)


def fail_cleanly(prog: str, fn, *args, **kw):
  """Runs fn; on a user error exits with status 1 and `prog: error: message` on stderr."""
  try:
    return fn(*args, **kw)
  except USER_ERRORS as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(1)
