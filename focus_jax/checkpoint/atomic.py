"""Writing an output folder atomically, and replacing only folders this project wrote.

An output is built in a temporary sibling `.NAME.tmp-PID-TAG` and then moved to
NAME. Replacing an existing NAME (overwrite) is a swap: on Linux one atomic
renameat2(RENAME_EXCHANGE), elsewhere two renames (NAME -> `.NAME.old-PID-TAG`,
tmp -> NAME). A process killed between those two renames leaves NAME missing
and the old folder beside it; the next write to NAME (or `recover`) puts it
back. Siblings of that naming pattern left by a dead process are removed.

overwrite replaces only a folder of a known kind (OWNERS): a focus_jax
checkpoint (model_config.json + params/) or an HF export carrying EXPORT_MARKER.
Anything else, and the working folder, its parents, the home folder or /,
is refused and left untouched.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
from pathlib import Path
import re
import shutil
import time
import uuid

EXPORT_MARKER = ".focus_jax_export"
CHECKPOINT, EXPORT = "checkpoint", "export"
OWNERS = {
    CHECKPOINT: (lambda p: (p / "model_config.json").is_file() and (p / "params").is_dir(),
                 "a focus_jax checkpoint (model_config.json + params/)"),
    EXPORT: (lambda p: (p / EXPORT_MARKER).is_file(),
             f"an HF export written by launch.export_hf (marker file {EXPORT_MARKER})"),
}
# Test hook: seconds to sleep in the middle of a replacement (kill tests).
_SWAP_PAUSE_ENV = "FOCUS_JAX_TEST_SWAP_PAUSE"


def _protected(target: Path) -> bool:
  cwd = Path.cwd().resolve()
  real = target.resolve()
  return real == cwd or real in cwd.parents or real == Path.home().resolve() or real == Path("/")


def check_target(target, overwrite: bool, owner: str = CHECKPOINT) -> Path:
  """Raises FileExistsError unless target may be written: absent, an empty folder, or
  (with overwrite) a folder of kind `owner`."""
  target = Path(target).absolute()
  recover(target)
  if not target.exists() and not target.is_symlink():
    return target
  if not target.is_dir():
    raise FileExistsError(f"{target} exists and is not a folder; choose another output path")
  if _protected(target):
    raise FileExistsError(f"refusing to write into {target} (the working folder, one of its "
                          "parents, the home folder or /); choose a new output folder")
  if not any(target.iterdir()):
    return target
  is_owned, what = OWNERS[owner]
  if not overwrite:
    raise FileExistsError(f"{target} already exists; pass overwrite (--overwrite) to replace it")
  if not is_owned(target):
    raise FileExistsError(f"{target} is not {what}; --overwrite replaces only such a folder, "
                          "so it was left untouched (remove it yourself or choose another path)")
  return target


def _sibling_re(target: Path):
  return re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)-([0-9a-f]{{8}})$")


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def recover(target) -> None:
  """Undoes what a killed replacement of `target` left: restores a moved-away old
  folder when target is missing, then removes this pattern's siblings of dead processes."""
  target = Path(target).absolute()
  if not target.parent.is_dir():
    return
  pattern = _sibling_re(target)
  stale = []
  for p in target.parent.iterdir():
    m = pattern.match(p.name)
    if m and not _alive(int(m.group(2))):
      stale.append((m.group(1), p))
  for kind, p in sorted(stale, key=lambda x: x[0] != "old"):
    if kind == "old" and not target.exists():
      p.rename(target)  # the run died between its two renames: the old output comes back
    else:
      shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
  """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fn = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
  return rc == 0


def _pause():
  if os.environ.get(_SWAP_PAUSE_ENV):
    time.sleep(float(os.environ[_SWAP_PAUSE_ENV]))


@contextlib.contextmanager
def atomic_dir(target, overwrite: bool = False, owner: str = CHECKPOINT):
  """Yields a fresh temporary folder that becomes `target` when the block succeeds.

  On error the temporary folder is removed and an existing target is left as
  it was; with overwrite, the old target (of kind `owner`) is replaced only
  once the new one is complete. An EXPORT output gets its marker file.
  """
  target = check_target(target, overwrite, owner)
  target.parent.mkdir(parents=True, exist_ok=True)
  tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp = target.parent / f".{target.name}.tmp-{tag}"
  tmp.mkdir()
  try:
    yield tmp
    if owner == EXPORT:
      (tmp / EXPORT_MARKER).write_text(json.dumps({"written_by": "focus_jax"}) + "\n")
    check_target(target, overwrite, owner)  # nothing foreign appeared meanwhile
    if not target.exists():
      tmp.rename(target)
      return
    if not os.environ.get("FOCUS_JAX_NO_EXCHANGE") and _exchange(tmp, target):
      _pause()
      shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old output
      return
    old = target.parent / f".{target.name}.old-{tag}"
    target.rename(old)
    _pause()
    try:
      tmp.rename(target)
    except BaseException:
      old.rename(target)
      raise
    shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
