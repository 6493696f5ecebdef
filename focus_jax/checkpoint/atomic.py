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
is refused and left untouched, and so is a target holding one of the inputs
(`sources`: the folder being converted or exported). A symbolic link as the
target is followed: the folder it points to is replaced, the link stays.

Folders written into rather than replaced (a training run, an evaluation's
OUT) use the same kinds through check_own_folder: new, empty, or of that kind.
atomic_file writes one file (temporary sibling + rename); exclusive_lock holds
a lock file for as long as a block runs (released by the kernel if the process
dies).
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
RUN_MARKER = ".focus_jax_run"   # a training run folder; also its lock file
CHECKPOINT, EXPORT, RUN, EVAL = "checkpoint", "export", "run", "evaluation"
OWNERS = {
    CHECKPOINT: (lambda p: (p / "model_config.json").is_file() and (p / "params").is_dir(),
                 "a focus_jax checkpoint (model_config.json + params/)"),
    EXPORT: (lambda p: (p / EXPORT_MARKER).is_file(),
             f"an HF export written by launch.export_hf (marker file {EXPORT_MARKER})"),
    # Run folders from before the marker: config.json + checkpoints/.
    RUN: (lambda p: (p / RUN_MARKER).is_file() or (
        (p / "config.json").is_file() and (p / "checkpoints").is_dir()),
          f"a training run folder of launch.train (marker file {RUN_MARKER})"),
    EVAL: (lambda p: (p / "run.json").is_file(),
           "an evaluation folder of launch.evaluate (its run.json)"),
}
# Entries a run folder may hold before its marker exists (train --eval's data cache).
_RUN_PRELUDE = {"data_cache", RUN_MARKER}
# Test hook: seconds to sleep in the middle of a replacement (kill tests).
_SWAP_PAUSE_ENV = "FOCUS_JAX_TEST_SWAP_PAUSE"


def _protected(target: Path) -> bool:
  cwd = Path.cwd().resolve()
  real = target.resolve()
  return real == cwd or real in cwd.parents or real == Path.home().resolve() or real == Path("/")


def _inside(path: Path, folder: Path) -> bool:
  return path == folder or folder in path.parents


def check_sources(target, sources) -> None:
  """Raises FileExistsError when an input (as given or resolved) is target or lies in it:
  replacing target would delete the input."""
  outs = {Path(os.path.abspath(target)), Path(os.path.realpath(target))}
  for src in sources:
    if src is None or "://" in str(src):
      continue
    for s in {Path(os.path.abspath(src)), Path(os.path.realpath(src))}:
      if any(_inside(s, o) for o in outs):
        raise FileExistsError(f"the input {src} is the output {target} or lies inside it; "
                              "writing the output would delete it: choose an output path "
                              "outside the input")


def resolve_link(target) -> Path:
  """target as an absolute path; a symbolic link is followed to what it points to
  (so a replacement updates that and leaves the link), a dangling one is refused."""
  target = Path(target).absolute()
  if target.is_symlink():
    if not target.exists():
      raise FileExistsError(f"{target} is a symbolic link to a missing path "
                            f"({os.readlink(target)}); choose another output path")
    target = Path(os.path.realpath(target))
  return target


def check_target(target, overwrite: bool, owner: str = CHECKPOINT, sources=()) -> Path:
  """Raises FileExistsError unless target may be written: absent, an empty folder, or
  (with overwrite) a folder of kind `owner`; never one holding a path of `sources`.
  Returns the path to write (a symbolic link resolved)."""
  target = resolve_link(target)
  recover(target)
  if not target.exists():
    return target
  if not target.is_dir():
    raise FileExistsError(f"{target} exists and is not a folder; choose another output path")
  if _protected(target):
    raise FileExistsError(f"refusing to write into {target} (the working folder, one of its "
                          "parents, the home folder or /); choose a new output folder")
  if not any(target.iterdir()):
    return target
  is_owned, what = OWNERS[owner]
  if not is_owned(target):
    raise FileExistsError(f"{target} is not {what}; --overwrite replaces only such a folder, "
                          "so it was left untouched (remove it yourself or choose another path)")
  # Replacing target must not delete an input; checked before the advice to pass
  # overwrite, which would then refuse.
  check_sources(target, sources)
  if not overwrite:
    raise FileExistsError(f"{target} already exists; pass overwrite (--overwrite) to replace it")
  return target


def check_own_folder(folder, owner: str, flag: str = "--out") -> Path:
  """Raises FileExistsError unless `folder` may be written into (not replaced): absent,
  empty, or of kind `owner`; never the working folder, its parents, home or /."""
  folder = resolve_link(folder)
  if not folder.exists():
    return folder
  if not folder.is_dir():
    raise FileExistsError(f"{flag}={folder} exists and is not a folder; choose another path")
  if _protected(folder):
    raise FileExistsError(f"refusing to write into {folder} (the working folder, one of its "
                          f"parents, the home folder or /); choose a new {flag} folder")
  is_owned, what = OWNERS[owner]
  names = {p.name for p in folder.iterdir()}
  if names and not is_owned(folder) and not (owner == RUN and names <= _RUN_PRELUDE):
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    raise FileExistsError(f"{flag}={folder} holds other files ({shown}) and is not {what}; "
                          f"it was left untouched: choose a new or empty {flag} folder")
  return folder


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


def check_file_target(path, overwrite: bool, flag: str = "--out") -> Path:
  """Raises FileExistsError unless `path` may be written as one file: absent, or (with
  overwrite) an existing regular file. Returns the path to write (a link resolved)."""
  path = resolve_link(path)
  if path.is_dir():
    raise FileExistsError(f"{flag}={path} is a folder; give a file name")
  if path.exists():
    if not path.is_file():
      raise FileExistsError(f"{flag}={path} exists and is not a regular file")
    if not overwrite:
      raise FileExistsError(f"{flag}={path} already exists; pass --overwrite to replace it")
  if not path.parent.is_dir():
    raise FileNotFoundError(f"{flag}={path}: no such folder {path.parent}")
  return path


@contextlib.contextmanager
def atomic_file(path, overwrite: bool = True, flag: str = "--out", suffix: str = ""):
  """Yields a temporary sibling path that replaces `path` (renamed over it) when the
  block succeeds; on error it is removed and `path` is left as it was. A link is
  followed (its target is replaced, the link stays). suffix: the temporary name's
  ending (numpy.savez appends .npz to a name without it)."""
  path = check_file_target(path, overwrite, flag)
  tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    check_file_target(path, overwrite, flag)  # nothing appeared meanwhile
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


class LockHeld(OSError):
  """Another live process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path, what: str):
  """Holds an exclusive flock on `path` (created) for the block, with this pid written
  in it. Raises LockHeld naming the holder's pid when another process holds it. The
  kernel drops the lock when the file is closed or the process dies, so a crash never
  leaves it stuck."""
  import fcntl
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}").get("pid", "unknown")
      except (ValueError, AttributeError):
        holder = "unknown"
      raise LockHeld(f"{what} is in use by process {holder} (lock {path}); wait for it to "
                     "finish or stop it, or choose another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps({"written_by": "focus_jax", "pid": os.getpid()}) + "\n").encode(),
              0)
    yield
  finally:
    os.close(fd)  # releases the flock
