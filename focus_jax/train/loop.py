"""The training loop: resume, step, log, checkpoint, stop cleanly.

  WORKDIR/checkpoints/   Orbax steps (TrainState + Grain iterator state)
  WORKDIR/metrics.jsonl  one JSON object per step; WORKDIR/tensorboard/ events
  WORKDIR/model/         the trained model (base + candidate projections) as a
                         focus_jax checkpoint, for launch.export_hf / generate
  WORKDIR/config.json    the run's config

A run resumes from the latest checkpoint in WORKDIR unless config.resume is
False. SIGTERM (and SIGINT) finish the current step, save and exit normally. A
non-finite loss raises NonFiniteLoss before anything of that step is saved.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import zlib

import jax
import numpy as np

from focus_jax import parallel
from focus_jax.focus.losses import join_params, split_params
from focus_jax.train import setup
from focus_jax.train.checkpoints import TrainCheckpoints
from focus_jax.train.metrics import MetricsWriter, Stopwatch
from focus_jax.train.optim import make_optimizer, make_schedule
from focus_jax.train.step import init_state, make_train_step, place_batch

log = logging.getLogger(__name__)


class NonFiniteLoss(FloatingPointError):
  """The loss became NaN or infinite."""


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
  for name in ("continuation", "repetition"):
    if m[f"{name}_count"] > 0:
      out[f"loss_{name}"] = float(m[f"{name}_sum"] / m[f"{name}_count"])
  out.update(grad_norm=float(m["grad_norm"]), lr=float(m["lr"]), step_time=dt,
             tokens=tokens, tokens_per_s=tokens / max(dt, 1e-9))
  return out


def train(config, workdir: str, *, export_only: bool = False) -> dict:
  """Runs (or resumes) training; returns a summary of the last step.

  export_only: restore WORKDIR's latest checkpoint and write WORKDIR/model, no step.
  """
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  mesh = parallel.make_mesh(config.mesh)
  model = setup.load_model(config)
  cfg = model.cfg
  spec = setup.sample_spec(config, cfg, parallel.axis_size(mesh, "chunk"))
  bspec = setup.batch_spec(config, parallel.axis_size(mesh, "data"))
  source = setup.make_source(config, model, workdir)
  log.info("mesh %s; %s; %d params trainable of %d", dict(mesh.shape), source,
           _count(model.params["candidate"]), _count(model.params))

  schedule = make_schedule(config.lr, config.steps, config.warmup_steps, config.decay,
                           config.end_lr_factor)
  tx = make_optimizer(schedule, weight_decay=config.weight_decay, b1=config.b1, b2=config.b2,
                      eps=config.eps, clip_norm=config.clip_norm)
  cand, frozen = split_params(model.params)
  state, frozen = parallel.replicate((init_state(cand, tx, config.seed), frozen), mesh)
  data = _iterator(source, spec, bspec, config)
  ckpts = TrainCheckpoints(os.path.join(workdir, "checkpoints"), every=config.checkpoint_every,
                           keep=config.keep_checkpoints, async_save=config.async_checkpoints)
  writer = MetricsWriter(workdir, config.steps, enabled=jax.process_index() == 0,
                         tensorboard=config.tensorboard)
  start = ckpts.latest_step() if config.resume or export_only else None
  if export_only:
    if start is None:
      raise FileNotFoundError(f"no checkpoint in {ckpts.directory} to export")
    state, _ = ckpts.restore(start, state, data)
    ckpts.close()
    writer.close()
    return {"step": start, "model": export_model(config, workdir, model, state.params, frozen)}
  if start is not None:
    state, data = ckpts.restore(start, state, data)
    writer.truncate(start)
    log.info("resumed from step %d", start)
  step_fn = make_train_step(cfg, mesh, tx, schedule,
                            tasks_per_step=bspec.samples_per_step * spec.tasks_per_sample,
                            stop_gradient_prefix=config.stop_gradient_prefix,
                            bos_sees_memory=config.get("bos_sees_memory", True))
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
      if not math.isfinite(last["loss"]):
        ckpts.wait()
        raise NonFiniteLoss(
            f"loss is {last['loss']} at step {step}; stopping. Nothing of this step was saved; "
            f"the last good checkpoint is step {ckpts.latest_step()} in {ckpts.directory}")
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
    export_model(config, workdir, model, state.params, frozen)
  return {"step": step, **last}


def _iterator(source, spec, bspec, config):
  from focus_jax.data import step_iterator
  return step_iterator(source, spec, bspec, config.seed)


def export_model(config, workdir: str, model, candidate, frozen) -> str | None:
  """Writes WORKDIR/model: base + trained candidate projections (a focus_jax checkpoint)."""
  from focus_jax.checkpoint.orbax import save_checkpoint
  if jax.process_count() > 1:
    log.warning("multi-process run: WORKDIR/model is not written; the trained candidate "
                "projections are in WORKDIR/checkpoints")
    return None
  out = os.path.join(workdir, "model")
  params = jax.device_get(join_params(candidate, frozen))
  cfg = model.cfg.replace(compute_dtype="float32")
  save_checkpoint(out, params, cfg, model.hf_config, tokenizer_src=model.tokenizer_dir,
                  focus_config=setup.focus_config(config), overwrite=True)
  log.info("trained model written to %s", out)
  return out


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
