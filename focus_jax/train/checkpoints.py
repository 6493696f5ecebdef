"""Training checkpoints with Orbax: TrainState + the Grain iterator, by step.

  WORKDIR/checkpoints/<step>/state/   TrainState (candidate params, AdamW state,
                                      step, RNG), Orbax StandardSave (async)
  WORKDIR/checkpoints/<step>/data/    the Grain iterator state, one JSON per process

Orbax writes each step into a temporary folder renamed on completion, so a
crash never leaves a half-written step behind, and keeps the last `keep`.
The iterator state is captured when `save` is called (the grain handler is
synchronous); the arrays are copied to host memory before `save` returns and
written in the background, so the next step may donate them.

`restore_newest` falls back past damaged steps (a file lost or cut after the
save): each newer step that does not restore is moved, not deleted, to
WORKDIR/checkpoints_damaged/, and the run goes on from the newest good one.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from focus_jax.checkpoint.orbax import quiet_abandoned_reads

log = logging.getLogger(__name__)


def saved_steps(directory: str) -> list[int]:
  """Step folders under directory, read without creating anything."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(p) for p in os.listdir(directory)
                if p.isdigit() and os.path.isdir(os.path.join(directory, p)))


class TrainCheckpoints:
  """A CheckpointManager for (TrainState, data iterator) pairs."""

  def __init__(self, directory: str, *, every: int, keep: int = 3, async_save: bool = True):
    if every < 1 or keep < 1:
      raise ValueError(f"checkpoint every ({every}) and keep ({keep}) must be >= 1")
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iter, *, force: bool = False) -> bool:
    """Saves when `step` is due (every N) or `force`; returns whether it saved."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.checkpoint.CheckpointSave(data_iter))
    saved = self.manager.save(step, args=args, force=force)
    if saved:
      log.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, step: int, state_like, data_iter):
    """Restores step into the structure/shardings of `state_like` and into `data_iter`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    log.info("checkpoint: restored step %d from %s", step, self.directory)
    return out["state"], out["data"]

  def restore_newest(self, state_like, data_iter):
    """Restores the newest step that restores; moves newer damaged steps aside.

    Returns (state, data_iter, step). When no step restores, raises ValueError
    (naming the newest step and its error) and moves nothing.
    """
    failures = []
    quiet_abandoned_reads()   # before the first try: the reads may outlive its error
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, data = self.restore(step, state_like, data_iter)
      except Exception as e:  # noqa: BLE001 -- any failure to read a step means damage
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        failures.append((step, f"{type(e).__name__}: {first}"))
        continue
      for bad, why in failures:
        dest = self.set_aside(bad)
        log.warning("checkpoint step %d is damaged (%s); moved to %s; resuming from step %d",
                    bad, why[:300], dest, step)
      return state, data, step
    bad, why = failures[0]
    raise ValueError(f"no checkpoint in {self.directory} restores; the newest, step {bad}, "
                     f"fails with {why[:300]}")

  def set_aside(self, step: int) -> Path:
    """Moves step's folder to checkpoints_damaged/step_N (never deletes it)."""
    src = Path(self.directory) / str(step)
    aside = Path(self.directory).parent / "checkpoints_damaged"
    aside.mkdir(exist_ok=True)
    dest, n = aside / f"step_{step}", 1
    while dest.exists():
      dest, n = aside / f"step_{step}.{n}", n + 1
    src.rename(dest)
    self.manager.reload()
    return dest

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
