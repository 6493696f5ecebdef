"""The training loop: resume, step, log, checkpoint, stop cleanly.

  WORKDIR/checkpoints/   Orbax steps (TrainState + Grain iterator state)
  WORKDIR/metrics.jsonl  one JSON object per step; WORKDIR/tensorboard/ events
  WORKDIR/model/         the trained model (base + candidate projections) as a
                         focus_jax checkpoint, for launch.export_hf / generate
  WORKDIR/config.json    the config the run started with (focus_jax.train.run_config;
                         accepted changes on resume go to config_history.jsonl)
  WORKDIR/.focus_jax_run the folder's marker (a run of its own) and lock file

WORKDIR must be new, empty or a run folder of its own (its marker; runs from
before the marker: config.json + checkpoints/); anything else (an HF model
folder, a checkpoint, the working folder, home, a folder of other files) is
refused before anything is written. A run holds the marker's flock while it
works, so a second trainer on the same WORKDIR is refused with the first one's
pid; the kernel drops the lock when the process ends, however it ends. Only
process 0 of a multi-process run takes it; a non-local WORKDIR (gs://...) is
neither checked nor locked (a warning says so).

A run resumes from the newest checkpoint in WORKDIR that restores (damaged
newer steps are moved to WORKDIR/checkpoints_damaged/). A resume with a config
that changes the run's meaning is refused unless allow_config_change, before
anything is written; resume=False into a WORKDIR that holds checkpoints is
refused (a new run needs a new WORKDIR). SIGTERM (and SIGINT) finish the
current step, save and exit normally. A non-finite loss, or non-finite
parameters after an update, raise NonFiniteLoss before anything of that step
is saved.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from focus_jax import parallel
from focus_jax.data import LOSS_NAMES, step_iterator
from focus_jax.checkpoint.atomic import (RUN, RUN_MARKER, LockHeld, check_own_folder,
                                         exclusive_lock)
from focus_jax.focus.losses import split_model
from focus_jax.model import param_count
from focus_jax.train import run_config, setup
from focus_jax.train.run_config import TrainConfig
from focus_jax.train.checkpoints import TrainCheckpoints, saved_steps
from focus_jax.train.metrics import MetricsWriter, Stopwatch
from focus_jax.train.step import make_train_step, place_batch, place_state

log = logging.getLogger(__name__)


class NonFiniteLoss(FloatingPointError):
  """The loss, or a parameter after an update, became NaN or infinite."""


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.asarray([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


class StopRequest:
  """Turns SIGTERM/SIGINT into a flag checked between steps (agreed by all processes)."""

  def __init__(self):
    self.flag = False
    self._old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handler)

  def _handler(self, signum, frame):
    del frame
    log.warning("signal %d: saving a checkpoint after this step, then stopping", signum)
    self.flag = True

  def requested(self) -> bool:
    if jax.process_count() == 1:
      return self.flag
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray([self.flag]))))

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def data_fingerprint(local: dict) -> int:
  """CRC32 of this host's step batch (local inputs and targets): checks the data order."""
  return zlib.crc32(np.ascontiguousarray(local["local_tokens"]).tobytes()
                    + np.ascontiguousarray(local["targets"]).tobytes())


def _step_metrics(m: dict, tokens: int, dt: float) -> dict:
  out = {"loss": float(m["loss_sum"] / max(m["count"], 1.0))}
  for name in LOSS_NAMES:
    if m[f"{name}_count"] > 0:
      out[f"loss_{name}"] = float(m[f"{name}_sum"] / m[f"{name}_count"])
  out.update(grad_norm=float(m["grad_norm"]), lr=float(m["lr"]), step_time=dt,
             tokens=tokens, tokens_per_s=tokens / max(dt, 1e-9))
  return out


def _remote(workdir: str) -> bool:
  return "://" in workdir


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds WORKDIR's lock for the block (process 0 of a local WORKDIR only)."""
  if _remote(workdir) or jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  with exclusive_lock(os.path.join(workdir, RUN_MARKER), f"--workdir={workdir}"):
    yield


def _take_lock(workdir: str, hold: contextlib.ExitStack) -> None:
  """Process 0 takes WORKDIR's lock into `hold`; every process learns whether it got it,
  so all of them stop together (none waits for a refused process 0 in a collective)."""
  err = None
  try:
    hold.enter_context(workdir_lock(workdir))
  except LockHeld as e:
    err = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    ok = np.asarray(multihost_utils.process_allgather(np.asarray([err is None])))
    if err is None and not ok.all():
      err = LockHeld(f"--workdir={workdir} is in use by another trainer (process 0 of this "
                     "run could not take its lock)")
  if err is not None:
    raise err


def prepare_workdir(config, workdir: str, *, export_only: bool = False,
                    allow_config_change: bool = False,
                    hold: contextlib.ExitStack | None = None) -> list[int]:
  """Checks WORKDIR against config before anything is written; returns its saved steps.

  hold: takes WORKDIR's lock into this stack once the checks pass, before the first write.
  """
  config = TrainConfig.from_config(config)  # a bad field or value fails here
  if _remote(workdir):
    log.warning("--workdir=%s is not a local path: it is neither checked for foreign files "
                "nor locked against a second trainer", workdir)
  else:
    check_own_folder(workdir, RUN, "--workdir")
  steps = saved_steps(os.path.join(workdir, "checkpoints"))
  if export_only and not steps:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')} to export")
  if steps and not config.resume and not export_only:
    raise FileExistsError(
        f"{workdir} already holds checkpoints (steps {steps[0]}..{steps[-1]}) and "
        "config.resume is False; start the new run in a new --workdir, or resume this one")
  fresh = not steps and not export_only
  changes = {} if fresh else run_config.check_config(config, workdir, allow_config_change)
  if hold is not None:
    _take_lock(workdir, hold)
  if jax.process_index() == 0 and not export_only:
    os.makedirs(workdir, exist_ok=True)
    run_config.record_config(config, workdir, changes, steps[-1] if steps else None, fresh=fresh)
    if changes:
      log.warning("resuming with config changes %s (recorded in %s)", changes,
                  run_config.HISTORY_FILE)
  return steps


def train(config, workdir: str, *, export_only: bool = False,
          allow_config_change: bool = False) -> dict:
  """Runs (or resumes) training; returns a summary of the last step.

  export_only: restore WORKDIR's latest checkpoint and write WORKDIR/model, no step.
  allow_config_change: resume even when the config differs in a meaningful field.
  WORKDIR is locked from the end of its checks until this returns or raises.
  """
  config = TrainConfig.from_config(config)
  with contextlib.ExitStack() as hold:
    prepare_workdir(config, workdir, export_only=export_only,
                    allow_config_change=allow_config_change, hold=hold)
    return _train(config, workdir, export_only)


def _train(config: TrainConfig, workdir: str, export_only: bool) -> dict:
  mesh = parallel.make_mesh(config.mesh)
  model, extras = setup.load_model(config)
  parallel.check_tensor(model.config, mesh)
  spec = setup.sample_spec(config, model.config, parallel.axis_size(mesh, "chunk"))
  bspec = setup.batch_spec(config, parallel.axis_size(mesh, "data") *
                           parallel.axis_size(mesh, "fsdp"))
  source = setup.make_source(config, model, extras, workdir)
  graphdef, cand, frozen = split_model(model)
  log.info("mesh %s; %s; %d params trainable of %d", dict(mesh.shape), source,
           param_count(cand), param_count(cand) + param_count(frozen))
  schedule, tx = setup.schedule_and_optimizer(config)
  state, frozen, placement = place_state(cand, frozen, tx, mesh,
                                         base_dtype=config.base_dtype or None)
  data = step_iterator(source, spec, bspec, config.seed,
                       facts=setup.fact_inserter(config, model, extras))
  ckpts = TrainCheckpoints(os.path.join(workdir, "checkpoints"), every=config.checkpoint_every,
                           keep=config.keep_checkpoints, async_save=config.async_checkpoints)
  writer = MetricsWriter(workdir, config.steps, enabled=jax.process_index() == 0,
                         tensorboard=config.tensorboard)
  start = ckpts.latest_step() if config.resume or export_only else None
  if export_only:
    if start is None:
      raise FileNotFoundError(f"no checkpoint in {ckpts.directory} to export")
    state, _, start = ckpts.restore_newest(state, data)
    ckpts.close()
    writer.close()
    return {"step": start,
            "model": export_model(config, workdir, extras, graphdef, state.params, frozen)}
  if start is not None:
    state, data, start = ckpts.restore_newest(state, data)
    log.info("resumed from step %d", start)
  writer.truncate(start or 0)
  step_fn = make_train_step(graphdef, mesh, tx, schedule, config, placement)
  stop = StopRequest()
  step, last, saved_at = int(start or 0), {}, start
  try:
    clock = Stopwatch()
    while step < config.steps:
      local = next(data)
      tokens = jax.process_count() * int(local["chunk_valid"].sum() + local["local_valid"].sum())
      state, m = step_fn(state, frozen, place_batch(mesh, local))
      m = jax.device_get(m)
      step += 1
      last = _step_metrics(m, tokens, clock.lap())
      last["data_crc"] = data_fingerprint(local)
      bad = None if math.isfinite(last["loss"]) else f"loss is {last['loss']}"
      if bad is None and not bool(_all_finite(state.params)):
        bad = "a parameter is NaN or infinite after the update"
      if bad:
        ckpts.wait()
        good = ckpts.latest_step()
        raise NonFiniteLoss(
            f"{bad} at step {step}; stopping. Nothing of this step was saved; " + (
                f"the last good checkpoint is step {good} in {ckpts.directory}"
                if good is not None else "no checkpoint was saved before it"))
      writer.write(step, last)
      if ckpts.save(step, state, data):
        saved_at = step
      if stop.requested():
        if saved_at != step:
          ckpts.save(step, state, data, force=True)
          saved_at = step
        log.warning("stopped at step %d on request; resume with the same command", step)
        break
    if step >= config.steps and saved_at != step:
      ckpts.save(step, state, data, force=True)
    ckpts.wait()
  finally:
    stop.restore()
    ckpts.close()
    writer.close()
  if step >= config.steps and config.export_model:
    export_model(config, workdir, extras, graphdef, state.params, frozen)
  return {"step": step, **last}


def export_model(config: TrainConfig, workdir: str, extras, graphdef, candidate, frozen):
  """Writes WORKDIR/model: base + trained candidate projections (a focus_jax checkpoint)."""
  from focus_jax.checkpoint.orbax import save_checkpoint
  if jax.process_count() > 1:
    log.warning("multi-process run: WORKDIR/model is not written; the trained candidate "
                "projections are in WORKDIR/checkpoints")
    return None
  out = os.path.join(workdir, "model")
  trained = nnx.merge(graphdef, jax.device_get(candidate), jax.device_get(frozen))
  trained.set_config(trained.config.replace(compute_dtype="float32"))
  save_checkpoint(out, trained, extras.get("hf_config"), tokenizer_src=extras.get("tokenizer_dir"),
                  focus_config=setup.focus_config(config), overwrite=True)
  log.info("trained model written to %s", out)
  return out

