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

import dataclasses

import logging
import os

import jax
import numpy as np

from focus_jax.data import LOSS_NAMES, BatchSpec, step_iterator
from flax import nnx

from focus_jax.focus.losses import split_model, task_losses
from focus_jax.train import run_config, setup
from focus_jax.train.run_config import TrainConfig
from focus_jax.train.checkpoints import TrainCheckpoints, saved_steps

log = logging.getLogger(__name__)
EVAL_SEED_OFFSET = 1000


def evaluate(config, workdir: str, n_samples: int = 32, step: int | None = None,
             allow_config_change: bool = False, retrieval: bool = False) -> dict:
  """Mean held-out losses of the checkpoint at `step` (default: latest; 0: initial).

  retrieval: every held-out sample becomes a fact-retrieval document
  (data.retrieval; its continuation task targets a fact's digit), instead of
  the eval data's own tasks.
  """
  config = TrainConfig.from_config(config)
  if n_samples < 1:
    raise ValueError(f"the number of eval samples must be >= 1, got {n_samples}")
  ckdir = os.path.join(workdir, "checkpoints")
  steps = saved_steps(ckdir)
  if step not in (None, 0) and step not in steps:
    raise ValueError(f"no checkpoint step {step} in {ckdir} (saved steps: {steps or 'none'})")
  if steps:
    run_config.check_config(config, workdir, allow_config_change)
  model, extras = setup.load_model(config)
  graphdef, cand, frozen = split_model(model)
  if step != 0 and steps:
    ckpts = TrainCheckpoints(ckdir, every=1)
    step = steps[-1] if step is None else step
    cand = _saved_params(ckpts, step, cand)
    ckpts.close()
  step = step or 0
  # Held-out tasks are the eval data's own (no fact documents) unless `retrieval`,
  # whatever the run trained on.
  eval_config = dataclasses.replace(config, data=config.eval_data or config.data,
                                    retrieval_frac=1.0 if retrieval else 0.0)
  spec = setup.sample_spec(eval_config, model.config, 1)
  source = setup.make_source(eval_config, model, extras, workdir)
  it = step_iterator(source, spec, BatchSpec(global_batch=1), config.seed + EVAL_SEED_OFFSET,
                     facts=setup.fact_inserter(eval_config, model, extras))

  @jax.jit
  def losses(c, f, b):
    m = nnx.merge(graphdef, c, f)
    with_mem, _ = task_losses(m, b, bos_sees_memory=config.bos_sees_memory)
    no_mem, _ = task_losses(m, dict(b, n_memory=b["n_memory"] * 0))
    return with_mem, no_mem
  ce, ce0, kinds = [], [], []
  for _ in range(n_samples):
    b = {k: v[0] for k, v in next(it).items()}
    a, z = jax.device_get(losses(cand, frozen, b))
    ce.append(a.ravel()), ce0.append(z.ravel()), kinds.append(b["kind"].ravel())
  ce, ce0, kinds = map(np.concatenate, (ce, ce0, kinds))
  out = {"step": int(step), "n_tasks": int(ce.size), "loss": float(ce.mean()),
         "loss_no_memory": float(ce0.mean())}
  for i, name in enumerate(LOSS_NAMES):
    if (kinds == i).any():
      out[f"loss_{name}"] = float(ce[kinds == i].mean())
      out[f"loss_{name}_no_memory"] = float(ce0[kinds == i].mean())
  log.info("eval at step %d: %s", step, out)
  return out


def _saved_params(ckpts, step: int, cand_like):
  """The candidate parameters of `step`, read with the saved tree (whatever optimiser made
  it), checked against the model's shapes."""
  import orbax.checkpoint as ocp
  restored = ckpts.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  saved = restored["state"]
  params = saved["params"] if isinstance(saved, dict) else saved.params
  # the saved tree is the candidate State's, in the same (sorted) leaf order
  got = jax.tree.leaves(params)
  want = jax.tree.leaves(cand_like)
  if [(tuple(x.shape), str(x.dtype)) for x in got] != [(x.shape, str(x.dtype)) for x in want]:
    raise ValueError(f"checkpoint step {step} in {ckpts.directory} does not match the model "
                     "of this config (candidate parameter shapes differ)")
  return jax.tree.unflatten(jax.tree.structure(cand_like), [jax.numpy.asarray(x) for x in got])
