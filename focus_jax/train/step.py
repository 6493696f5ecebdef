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

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from focus_jax import parallel
from flax import nnx
from jax.sharding import PartitionSpec as P

from focus_jax.focus.losses import loss_sums, task_losses

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


def place_state(cand, frozen, tx: optax.GradientTransformation, mesh, *,
                base_dtype: str | None = None):
  """(TrainState, frozen State, Placement): parameters, gradients' and AdamW's
  state split over "fsdp" and "tensor" by the logical rules (replicated over the
  other axes).

  Works on concrete arrays and on abstract ones (jax.ShapeDtypeStruct, for
  planning). base_dtype: store the frozen base in this dtype (e.g. bfloat16);
  the candidates and AdamW stay in their own dtype.
  """
  if base_dtype is not None:
    from focus_jax.config import dtype_of
    dt = dtype_of(base_dtype)
    frozen = jax.tree.map(lambda x: (x.astype(dt) if hasattr(x, "astype") else
                                     jax.ShapeDtypeStruct(x.shape, dt)), frozen)
  specs = (parallel.state_specs(cand, mesh), parallel.state_specs(frozen, mesh))
  cand_sh, frozen_sh = (parallel.state_shardings(x, mesh) for x in (cand, frozen))
  abstract = jax.eval_shape(lambda c: init_state(c, tx), cand)
  table = {jax.tree_util.keystr(p): (x.shape, sh) for (p, x), sh in zip(
      jax.tree_util.tree_flatten_with_path(cand)[0], jax.tree.leaves(cand_sh))}
  rep = jax.sharding.NamedSharding(mesh, P())

  def sharding_of(path, leaf):
    key = jax.tree_util.keystr(path)   # AdamW moments end in a parameter's key path
    for suffix, (shape, sh) in table.items():
      if key.endswith(suffix) and tuple(leaf.shape) == tuple(shape):
        return sh
    return rep
  state_sh = jax.tree_util.tree_map_with_path(sharding_of, abstract)
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


def make_train_step(graphdef, mesh, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, tasks_per_step: int,
                    stop_gradient_prefix: bool = True, param_specs=None,
                    remat: str = "none", state_shardings=None, bos_sees_memory: bool = True,
                    fused_chunks: bool = False, fused_groups: int = 0):
  """Returns step(state, frozen, batch) -> (state, metrics), jitted, state donated.

  graphdef: of the model with candidates (`split_model`); frozen: its frozen State.
  param_specs: (candidate specs, frozen specs) from parallel.state_specs; None:
    replicated. Leaves split over "fsdp" enter the device function as shards;
    the top-level ones (embeddings, head) are all-gathered once, each layer's
    inside the layer scan, so one layer at a time is whole on a device; the
    transposed gather returns each device its shard of the gradient.
  remat: rematerialise each layer in the backward pass (model.REMAT_POLICIES).
  fused_chunks: run each row's prefix and candidate in one layer scan
    (core.fused_candidates; with stop_gradient_prefix), so one layer's prefix
    K/V is alive at a time; fused_groups: its checkpointed layer groups
    (0: the backward pass keeps every layer's prefix K/V, no recomputation).
  state_shardings: the TrainState's shardings (explicit out_shardings; donated).
  tasks_per_step: the number of tasks in one optimiser step over all hosts
  (A * global batch * T); the loss is their mean.
  metrics: loss_sum, count, {continuation,repetition}_{sum,count}, grad_norm, lr.
  """
  chunk_n = parallel.axis_size(mesh, "chunk")
  fsdp_n = parallel.axis_size(mesh, "fsdp")
  rep = parallel.spec(mesh)
  if param_specs is None:
    cand_specs = frozen_specs = rep
  else:
    cand_specs, frozen_specs = param_specs
  axes = tuple(a for a in ("data", "fsdp", "chunk") if a in mesh.axis_names)
  data_axes = tuple(a for a in parallel.BATCH_AXES if a in mesh.axis_names)

  fsdp = fsdp_n > 1 and param_specs is not None

  def gathered_model(cand, frozen):
    specs = (cand_specs, frozen_specs) if fsdp else None
    return parallel.merge_shards(graphdef, (cand, frozen), specs, remat=remat)

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
      model, scan = gathered_model(c, frozen)
      ce, kind = task_losses(model, mb, stop_gradient_prefix=stop_gradient_prefix, route=route,
                             bos_sees_memory=bos_sees_memory, fused=fused_chunks,
                             fused_groups=fused_groups, scan=scan)
      return ce.sum() / (tasks_per_step * repeats), (ce, kind)

    def micro(carry, mb):
      (_, (ce, kind)), g = jax.value_and_grad(objective, has_aux=True)(cand, mb)
      return jax.tree.map(jnp.add, carry, (g, loss_sums(ce, kind))), None

    zero_sums = loss_sums(jnp.zeros((1,), jnp.float32), jnp.full((1,), -1, jnp.int32))
    zero_sums = jax.tree.map(jnp.zeros_like, zero_sums)
    init = (jax.tree.map(jnp.zeros_like, cand), zero_sums)
    (g, sums), _ = jax.lax.scan(micro, init, batch)
    # A leaf split over fsdp already holds the sum over fsdp (the transposed all_gather).
    table = parallel.spec_table(g, cand_specs)
    flat, treedef = jax.tree_util.tree_flatten_with_path(g)
    summed = []
    for path, x in flat:
      split_fsdp = parallel.gather_axes(table[jax.tree_util.keystr(path)], "fsdp") is not None
      over = tuple(a for a in axes if not (split_fsdp and a == "fsdp"))
      summed.append(jax.lax.psum(x, over) if over else x)
    g = jax.tree.unflatten(treedef, summed)
    if sum_axes:
      sums = jax.lax.psum(sums, sum_axes)
    return g, sums

  def step(state: TrainState, frozen, batch: dict):
    specs = batch_specs(mesh, batch)
    fn = parallel.shard(device_grads, mesh, in_specs=(cand_specs, frozen_specs, specs),
                        out_specs=(cand_specs, rep))
    grads, sums = fn(state.params, frozen, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(sums, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    return TrainState(state.step + 1, params, opt_state), metrics

  return jax.jit(step, donate_argnums=0,
                 out_shardings=None if state_shardings is None else (state_shardings, None))
