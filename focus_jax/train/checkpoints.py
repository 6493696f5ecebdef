"""Training checkpoints with Orbax: TrainState + the Grain iterator, by step.

  WORKDIR/checkpoints/<step>/state/   TrainState (candidate params, AdamW state,
                                      step, RNG), Orbax StandardSave (async)
  WORKDIR/checkpoints/<step>/data/    the Grain iterator state, one JSON per process

Orbax writes each step into a temporary folder renamed on completion, so a
crash never leaves a half-written step behind, and keeps the last `keep`.
The iterator state is captured when `save` is called (the grain handler is
synchronous); the arrays are copied to host memory before `save` returns and
written in the background, so the next step may donate them.
"""
from __future__ import annotations

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


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

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
