"""The jitted training step: both losses, candidate gradients, Optax update.

Layout: the mesh has axes `data` (samples) and `chunk` (rows of chunks). A
step batch is [A, B, T, ...] (A micro-batches, B samples, T tasks); chunk
rows [A, B, T, R, C] are split over data (B) and chunk (R). Inside one
shard_map each device:
  1. runs its rows (prefix without gradient, candidates with gradient),
  2. all-gathers the memory over `chunk`, so every device of a chunk group
     holds the tasks' whole memory,
  3. runs the local inputs and the loss: when the chunk group's tasks divide
     evenly, each device takes a share of them and receives all rows of its
     tasks (all_to_all); otherwise every device of the group repeats all of
     them (all_gather) and its loss counts 1 / group size,
  4. accumulates gradients over the A micro-batches (a scan), and
  5. sums gradients over all devices (psum) and loss sums over `data`.
The summed gradient is that of the mean task loss: the transposes of
all_to_all / all_gather return each memory row's cotangent to its device.
Only the candidate projections and their AdamW state are in TrainState; the
frozen model is a separate, replicated argument with no optimiser state.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from focus_jax import parallel
from focus_jax.config import ModelConfig
from focus_jax.focus.losses import join_params, loss_sums, task_losses

ROW_KEYS = ("chunk_tokens", "chunk_valid")


class TrainState(NamedTuple):
  step: jax.Array        # [] int32, optimiser steps done
  params: dict           # trainable candidate projections
  opt_state: optax.OptState
  rng: jax.Array         # [2] uint32, for stochastic extensions (unused by the losses)


def init_state(candidate: dict, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """Step 0; the candidate params are copied (the step donates the state's buffers)."""
  candidate = jax.tree.map(lambda x: jnp.array(x, copy=True), candidate)
  return TrainState(jnp.zeros((), jnp.int32), candidate, tx.init(candidate),
                    jax.random.PRNGKey(seed))


def batch_specs(mesh, batch: dict) -> dict:
  """PartitionSpecs of a step batch: samples over `data`, chunk rows over `chunk`."""
  out = {}
  for k, v in batch.items():
    dims = [None, "data"] + [None] * (v.ndim - 2)
    if k in ROW_KEYS:
      dims[3] = "chunk"
    out[k] = parallel.spec(mesh, *dims)
  return out


def place_batch(mesh, local_batch: dict) -> dict:
  """Host-local numpy step batch -> global jax arrays sharded per batch_specs."""
  specs = batch_specs(mesh, local_batch)
  nproc = jax.process_count()
  out = {}
  for k, v in local_batch.items():
    shape = (v.shape[0], v.shape[1] * nproc) + v.shape[2:]
    out[k] = jax.make_array_from_process_local_data(
        jax.sharding.NamedSharding(mesh, specs[k]), v, shape)
  return out


def make_train_step(cfg: ModelConfig, mesh, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, tasks_per_step: int,
                    stop_gradient_prefix: bool = True, bos_sees_memory: bool = True):
  """Returns step(state, frozen, batch) -> (state, metrics), jitted, state donated.

  tasks_per_step: the number of tasks in one optimiser step over all hosts
  (A * global batch * T); the loss is their mean.
  metrics: loss_sum, count, {continuation,repetition}_{sum,count}, grad_norm, lr.
  """
  chunk_n = parallel.axis_size(mesh, "chunk")
  axes = tuple(a for a in ("data", "chunk") if a in mesh.axis_names)
  data_axes = tuple(a for a in ("data",) if a in mesh.axis_names)

  def split_route(mk, mv, local):
    """Task share j of the chunk group gets every row of its tasks (all_to_all)."""
    j = jax.lax.axis_index("chunk")
    per = local["kind"].shape[0] // chunk_n
    a2a = lambda x: jax.lax.all_to_all(x, "chunk", split_axis=1, concat_axis=2, tiled=True)
    share = {k: jax.lax.dynamic_slice_in_dim(v, j * per, per, 0) for k, v in local.items()}
    return a2a(mk), a2a(mv), share

  def gather_route(mk, mv, local):
    """Every device of the chunk group gets all rows of all its tasks (all_gather)."""
    gather = lambda x: jax.lax.all_gather(x, "chunk", axis=2, tiled=True)
    return gather(mk), gather(mv), local

  def device_grads(cand, frozen, batch):
    tasks_here = batch["kind"].shape[1] * batch["kind"].shape[2]
    split = chunk_n > 1 and tasks_here % chunk_n == 0
    route = split_route if split else (gather_route if chunk_n > 1 else None)
    # With all_gather the chunk group repeats the same tasks: count them once.
    repeats = chunk_n if route is gather_route else 1
    sum_axes = axes if split else data_axes

    def objective(c, mb):
      ce, kind = task_losses(join_params(c, frozen), cfg, mb,
                             stop_gradient_prefix=stop_gradient_prefix, route=route,
                             bos_sees_memory=bos_sees_memory)
      return ce.sum() / (tasks_per_step * repeats), (ce, kind)

    def micro(carry, mb):
      (_, (ce, kind)), g = jax.value_and_grad(objective, has_aux=True)(cand, mb)
      return jax.tree.map(jnp.add, carry, (g, loss_sums(ce, kind))), None

    zero_sums = loss_sums(jnp.zeros((1,), jnp.float32), jnp.full((1,), -1, jnp.int32))
    zero_sums = jax.tree.map(jnp.zeros_like, zero_sums)
    init = (jax.tree.map(jnp.zeros_like, cand), zero_sums)
    (g, sums), _ = jax.lax.scan(micro, init, batch)
    if axes:
      g = jax.lax.psum(g, axes)
    if sum_axes:
      sums = jax.lax.psum(sums, sum_axes)
    return g, sums

  def step(state: TrainState, frozen: dict, batch: dict):
    specs = batch_specs(mesh, batch)
    rep = parallel.spec(mesh)
    fn = parallel.shard(device_grads, mesh, in_specs=(rep, rep, specs), out_specs=(rep, rep))
    grads, sums = fn(state.params, frozen, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(sums, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    return TrainState(state.step + 1, params, opt_state, state.rng), metrics

  return jax.jit(step, donate_argnums=0)
