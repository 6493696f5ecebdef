"""Held-out loss of the two FocusLLM losses, with and without the memory.

  evaluate(config, workdir, n_samples=32) -> {"step", "loss", "loss_continuation",
      "loss_repetition", "loss_no_memory", ...}

Samples come from `config.eval_data` (default: config.data) with the seed
`config.seed + 1000`, so they differ from the training stream; the candidate
projections are those of WORKDIR's latest checkpoint, or the initial copies
when there is none (step 0). `loss_no_memory` is the same local inputs and
targets with the memory masked out: the plain model on the local window.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

from focus_jax.data import BatchSpec, step_iterator
from focus_jax.focus.losses import join_params, split_params, task_losses
from focus_jax.train import setup
from focus_jax.train.checkpoints import TrainCheckpoints
from focus_jax.train.optim import make_optimizer, make_schedule
from focus_jax.train.step import init_state

log = logging.getLogger(__name__)
EVAL_SEED_OFFSET = 1000


def evaluate(config, workdir: str, n_samples: int = 32, step: int | None = None) -> dict:
  """Mean held-out losses of the checkpoint at `step` (default: latest; 0: initial)."""
  model = setup.load_model(config)
  cfg = model.cfg
  cand, frozen = split_params(model.params)
  ckdir = os.path.join(workdir, "checkpoints")
  if step != 0 and os.path.isdir(ckdir):
    ckpts = TrainCheckpoints(ckdir, every=1)
    step = ckpts.latest_step() if step is None else step
    if step is not None:
      tx = make_optimizer(make_schedule(config.lr, config.steps))
      restored = ckpts.manager.restore(step, args=_state_only(init_state(cand, tx, 0)))
      cand = restored["state"].params
    ckpts.close()
  step = step or 0
  eval_config = config.copy_and_resolve_references()
  with eval_config.unlocked():
    eval_config.data = config.get("eval_data") or config.data
  spec = setup.sample_spec(config, cfg, 1)
  source = setup.make_source(eval_config, model, workdir)
  it = step_iterator(source, spec, BatchSpec(global_batch=1), config.seed + EVAL_SEED_OFFSET)
  params = join_params(cand, frozen)

  bos_mem = config.get("bos_sees_memory", True)

  @jax.jit
  def losses(p, b):
    with_mem, _ = task_losses(p, cfg, b, bos_sees_memory=bos_mem)
    no_mem, _ = task_losses(p, cfg, dict(b, n_memory=b["n_memory"] * 0))
    return with_mem, no_mem
  ce, ce0, kinds = [], [], []
  for _ in range(n_samples):
    b = {k: v[0] for k, v in next(it).items()}
    a, z = jax.device_get(losses(params, b))
    ce.append(a.ravel()), ce0.append(z.ravel()), kinds.append(b["kind"].ravel())
  ce, ce0, kinds = map(np.concatenate, (ce, ce0, kinds))
  out = {"step": int(step), "n_tasks": int(ce.size), "loss": float(ce.mean()),
         "loss_no_memory": float(ce0.mean())}
  for i, name in enumerate(("continuation", "repetition")):
    if (kinds == i).any():
      out[f"loss_{name}"] = float(ce[kinds == i].mean())
      out[f"loss_{name}_no_memory"] = float(ce0[kinds == i].mean())
  log.info("eval at step %d: %s", step, out)
  return out


def _state_only(state):
  import orbax.checkpoint as ocp
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  return ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
