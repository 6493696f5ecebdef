"""Writing an output folder atomically: build it beside the target, then rename."""
from __future__ import annotations

import contextlib
from pathlib import Path
import shutil
import uuid


def check_target(target, overwrite: bool) -> Path:
  """Raises FileExistsError when target exists (and is not an empty folder) without overwrite."""
  target = Path(target).absolute()
  if target.exists() and not overwrite:
    if not target.is_dir() or any(target.iterdir()):
      raise FileExistsError(f"{target} already exists; pass overwrite (--overwrite) to replace it")
  if target.exists() and not target.is_dir():
    raise FileExistsError(f"{target} exists and is not a folder")
  return target


@contextlib.contextmanager
def atomic_dir(target, overwrite: bool = False):
  """Yields a fresh temporary folder that becomes `target` when the block succeeds.

  On error the temporary folder is removed and an existing target is left as
  it was; with overwrite, the old target is replaced only once the new one is
  complete.
  """
  target = check_target(target, overwrite)
  target.parent.mkdir(parents=True, exist_ok=True)
  tag = uuid.uuid4().hex[:8]
  tmp = target.parent / f".{target.name}.tmp-{tag}"
  tmp.mkdir()
  try:
    yield tmp
    check_target(target, overwrite)  # nothing appeared meanwhile
    old = None
    if target.exists():
      old = target.parent / f".{target.name}.old-{tag}"
      target.rename(old)
    tmp.rename(target)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
