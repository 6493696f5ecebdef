"""The jitted training step: both losses, candidate gradients, Optax update.

Layout: the mesh has axes `data` and `fsdp` (samples) and `chunk` (rows of
chunks). A step batch is [A, B, T, ...] (A micro-batches, B samples, T
tasks); chunk rows [A, B, T, R, C] are split over data x fsdp (B) and chunk
(R). Parameters (frozen and candidate), gradients and AdamW state are split
over `fsdp` by the logical rules (parallel.LOGICAL_RULES), and over `tensor`
(heads, MLP width) when the mesh has it. The shard_map is manual over data,
fsdp and chunk; `tensor` stays with XLA's SPMD partitioner, which splits each
layer's matmuls Megatron style and adds their all-reduces. Inside it each
device:
  0. all-gathers the top-level weights over fsdp, and each layer's weights
     inside the layer scan (one layer whole over fsdp at a time),
  1. runs its rows (prefix without gradient, candidates with gradient),
  2. all-gathers the memory over `chunk`, so every device of a chunk group
     holds the tasks' whole memory,
  3. runs the local inputs and the loss: when the chunk group's tasks divide
     evenly, each device takes a share of them and receives all rows of its
     tasks (all_to_all); otherwise every device of the group repeats all of
     them (all_gather) and its loss counts 1 / group size,
  4. accumulates gradients over the A micro-batches (a scan), and
  5. sums gradients over all devices (psum; a leaf split over fsdp arrives
     summed over fsdp and split, by the transposed all_gather) and loss sums
     over the sample axes.
The summed gradient is that of the mean task loss: the transposes of
all_to_all / all_gather return each memory row's cotangent to its device.
Only the candidate projections (the CandidateParam State of `split_model`)
and their AdamW state are in TrainState; the frozen State is a separate
argument with no optimiser state (it may be stored in bfloat16).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from focus_jax import parallel
from flax import nnx
from jax.sharding import PartitionSpec as P

from focus_jax.focus.losses import loss_sums, task_losses
from focus_jax.train.run_config import TrainConfig

ROW_KEYS = ("chunk_tokens", "chunk_valid")


class TrainState(NamedTuple):
  step: jax.Array        # [] int32, optimiser steps done
  params: nnx.State      # trainable candidate projections (CandidateParam)
  opt_state: optax.OptState


def init_state(candidate: nnx.State, tx: optax.GradientTransformation) -> TrainState:
  """Step 0; the candidate params are copied (the step donates the state's buffers)."""
  candidate = jax.tree.map(lambda x: jnp.array(x, copy=True), candidate)
  return TrainState(jnp.zeros((), jnp.int32), candidate, tx.init(candidate))


def batch_specs(mesh, batch: dict) -> dict:
  """PartitionSpecs of a step batch: samples over data x fsdp, chunk rows over `chunk`."""
  out = {}
  for k, v in batch.items():
    dims = [None, parallel.BATCH_AXES] + [None] * (v.ndim - 2)
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


class Placement(NamedTuple):
  """Where a run's arrays live: the shard_map specs and the TrainState's shardings."""
  param_specs: tuple          # (candidate specs, frozen specs), parallel.state_specs
  state_shardings: object     # TrainState of NamedShardings


def as_dtype(tree, dtype: str | None):
  """The arrays (or abstract arrays) of `tree` in `dtype`; None: as they are."""
  if dtype is None:
    return tree
  from focus_jax.config import dtype_of
  dt = dtype_of(dtype)
  return jax.tree.map(lambda x: (x.astype(dt) if hasattr(x, "astype") else
                                 jax.ShapeDtypeStruct(x.shape, dt)), tree)


def place_state(cand, frozen, tx: optax.GradientTransformation, mesh, *,
                base_dtype: str | None = None):
  """(TrainState, frozen State, Placement): parameters, gradients' and AdamW's
  state split over "fsdp" and "tensor" by the logical rules (replicated over the
  other axes).

  Works on concrete arrays and on abstract ones (jax.ShapeDtypeStruct, for
  planning). base_dtype: store the frozen base in this dtype (e.g. bfloat16);
  the candidates and AdamW stay in their own dtype.
  """
  frozen = as_dtype(frozen, base_dtype)
  specs = (parallel.state_specs(cand, mesh), parallel.state_specs(frozen, mesh))
  cand_sh, frozen_sh = (parallel.leaf_shardings(x, mesh) for x in (cand, frozen))
  abstract = jax.eval_shape(lambda c: init_state(c, tx), cand)
  rep = jax.sharding.NamedSharding(mesh, P())
  # AdamW's moments are placed like their parameters, its counts replicated.
  state_sh = TrainState(rep, cand_sh, optax.tree_map_params(
      tx, lambda _, sh: sh, abstract.opt_state, cand_sh, transform_non_params=lambda _: rep))
  concrete = not isinstance(jax.tree.leaves(cand)[0], jax.ShapeDtypeStruct)
  if concrete:
    state = jax.jit(lambda c: init_state(c, tx), out_shardings=state_sh)(
        jax.device_put(cand, cand_sh))
    frozen = jax.device_put(frozen, frozen_sh)
  else:
    state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                         abstract, state_sh)
    frozen = parallel.abstract_state(frozen, mesh)
  return state, frozen, Placement(specs, state_sh)


class StepPlan(NamedTuple):
  """What a training step is compiled for (static)."""
  graphdef: nnx.GraphDef        # of the model with candidates (`split_model`)
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  config: TrainConfig           # stop_gradient_prefix, remat, bos_sees_memory, fused_*
  specs: tuple | None           # Placement.param_specs; None: replicated


def make_train_step(graphdef, mesh, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, config: TrainConfig,
                    placement: Placement | None = None):
  """train_step(state, frozen, batch) -> (state, metrics), jitted, the state donated.
  placement: place_state's (shard_map specs, TrainState out_shardings); None: replicated."""
  plan = StepPlan(graphdef, mesh, tx, schedule, config,
                  None if placement is None else placement.param_specs)
  return jax.jit(functools.partial(train_step, plan), donate_argnums=0, out_shardings=(
      None if placement is None else (placement.state_shardings, None)))


def train_step(plan: StepPlan, state: TrainState, frozen, batch: dict):
  """One optimiser step on the mean loss of the batch's tasks. metrics: loss_sum, count,
  {continuation,repetition}_{sum,count}, grad_norm, lr."""
  rep = parallel.spec(plan.mesh)
  cand_specs, frozen_specs = plan.specs or (rep, rep)
  fn = parallel.shard(functools.partial(device_grads, plan, batch["kind"].size), plan.mesh,
                      in_specs=(cand_specs, frozen_specs, batch_specs(plan.mesh, batch)),
                      out_specs=(cand_specs, rep))
  grads, sums = fn(state.params, frozen, batch)
  updates, opt_state = plan.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(sums, grad_norm=optax.tree.norm(grads), lr=plan.schedule(state.step))
  return TrainState(state.step + 1, params, opt_state), metrics


def split_route(mk, mv, local):
  """Task share j of the chunk group gets every row of its tasks (all_to_all)."""
  j, n = jax.lax.axis_index("chunk"), jax.lax.axis_size("chunk")
  per = local["kind"].shape[0] // n
  a2a = lambda x: jax.lax.all_to_all(x, "chunk", split_axis=1, concat_axis=2, tiled=True)
  return a2a(mk), a2a(mv), {k: jax.lax.dynamic_slice_in_dim(v, j * per, per, 0)
                            for k, v in local.items()}


def gather_route(mk, mv, local):
  """Every device of the chunk group gets all rows of all its tasks (all_gather)."""
  return (*(jax.lax.all_gather(x, "chunk", axis=2, tiled=True) for x in (mk, mv)), local)


def objective(cand, plan: StepPlan, frozen, mb: dict, route, tasks: int):
  """(summed task loss / tasks, (ce, kind)) of micro-batch `mb` on this device."""
  c = plan.config
  model, scan = parallel.merge_shards(plan.graphdef, (cand, frozen), plan.specs, remat=c.remat)
  ce, kind = task_losses(model, mb, stop_gradient_prefix=c.stop_gradient_prefix, route=route,
                         bos_sees_memory=c.bos_sees_memory, fused=c.fused_chunks,
                         fused_groups=c.fused_groups, scan=scan)
  return ce.sum() / tasks, (ce, kind)


def device_grads(plan: StepPlan, tasks: int, cand, frozen, batch: dict):
  """This device's (gradient, loss sums), summed over the mesh, of `tasks` tasks' mean loss."""
  axes = tuple(a for a in ("data", "fsdp", "chunk") if a in plan.mesh.axis_names)
  chunk_n = parallel.axis_size(plan.mesh, "chunk")
  split = chunk_n > 1 and (batch["kind"].shape[1] * batch["kind"].shape[2]) % chunk_n == 0
  route = split_route if split else (gather_route if chunk_n > 1 else None)
  # With all_gather the chunk group repeats the same tasks: count them once.
  repeats = chunk_n if route is gather_route else 1

  def micro(carry, mb):
    (_, (ce, kind)), g = jax.value_and_grad(objective, has_aux=True)(
        cand, plan, frozen, mb, route, tasks * repeats)
    return jax.tree.map(jnp.add, carry, (g, loss_sums(ce, kind))), None

  zero_sums = jax.tree.map(jnp.zeros_like, loss_sums(jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)))
  (g, sums), _ = jax.lax.scan(micro, (jax.tree.map(jnp.zeros_like, cand), zero_sums), batch)
  sum_axes = axes if split else tuple(a for a in parallel.BATCH_AXES if a in axes)
  return sum_grads(g, plan.specs[0] if plan.specs else P(), axes), (
      jax.lax.psum(sums, sum_axes) if sum_axes else sums)


def sum_grads(grads, specs, axes: tuple):
  """psum over `axes` of each gradient, but over fsdp for a leaf its spec splits over it:
  that one already holds the sum over fsdp (the transposed all_gather)."""
  def one(spec, g):
    over = tuple(a for a in axes if a != "fsdp" or parallel.gather_axes(spec, "fsdp") is None)
    return jax.lax.psum(g, over) if over else g
  return parallel.map_specs(one, specs, grads)
