"""Device meshes, partition specs and the project's one shard_map helper.

A mesh is described by a string of `name:size` pairs, e.g. "chunk:8" or
"data:2,fsdp:8,chunk:4"; names come from AXES:
  data   independent samples (training batches),
  fsdp   parameters, gradients and optimiser state are split over it (FSDP);
         samples are split over data x fsdp,
  tensor attention heads and the MLP width are split over it (Megatron style:
         q/k/v/gate/up by output columns, o/down by input rows); inside
         `shard` it is left to XLA's SPMD partitioner (AUTO_AXES),
  chunk  FocusLLM chunks: every chunk is encoded independently, so the chunk
         axis of the inputs and of the chunk KV caches is split over it.
Model variables carry logical axis names (focus_jax.model); LOGICAL_RULES maps
them to mesh axes, and `state_specs` turns a model state into PartitionSpecs.
One size may be -1 (all devices left over). Code refers to axes by name only
and uses `spec(mesh, ...)`, which drops the names a mesh lacks, so the same
code runs on "chunk:8", "data:2,chunk:4" or a single device.

`shard` is the only place that calls `jax.shard_map` (its API moved between
JAX releases; the pinned one is `jax.shard_map(f, mesh=, in_specs=,
out_specs=, axis_names=, check_vma=)`). It is manual over every mesh axis
but AUTO_AXES: specs may name "tensor" (they are the arrays' placements);
shard_map sees them without it, and the body computes on arrays still split
over "tensor", which the partitioner handles (collectives after o_proj and
down_proj included).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor", "chunk")
# logical axis name (model variables) -> mesh axis (None: replicated)
LOGICAL_RULES = {"layers": None, "vocab": None, "embed": "fsdp", "heads": "tensor",
                 "kv_heads": "tensor", "mlp": "tensor", "norm": None}
BATCH_AXES = ("data", "fsdp")   # mesh axes that split the samples of a batch
AUTO_AXES = ("tensor",)         # left to the SPMD partitioner inside `shard`
TENSOR_FIELDS = ("num_heads", "num_kv_heads", "intermediate_size")  # split over "tensor"


def parse_mesh(text: str | None) -> tuple[tuple[str, int], ...]:
  """Parses "data:2,chunk:4" into (("data", 2), ("chunk", 4)); "" or None is ()."""
  if text is None or not text.strip():
    return ()
  out = []
  for part in text.split(","):
    name, sep, size = part.strip().partition(":")
    if not sep or not name:
      raise ValueError(f"bad mesh entry {part!r} in {text!r}; expected name:size, e.g. 'chunk:8'")
    if name not in AXES:
      raise ValueError(f"unknown mesh axis {name!r} in {text!r}; known axes: {AXES}")
    if name in dict(out):
      raise ValueError(f"mesh axis {name!r} given twice in {text!r}")
    try:
      n = int(size)
    except ValueError:
      raise ValueError(f"mesh axis size must be an integer, got {size!r} in {text!r}") from None
    if n < 1 and n != -1:
      raise ValueError(f"mesh axis size must be >= 1 (or -1 for the rest), got {n} in {text!r}")
    out.append((name, n))
  if sum(n == -1 for _, n in out) > 1:
    raise ValueError(f"at most one mesh axis may have size -1, got {text!r}")
  return tuple(out)


def make_mesh(text: str | None = None, devices: Sequence | None = None) -> Mesh:
  """Builds a mesh from a description (see module doc); None/"" is "chunk:1".

  The product of the sizes must not exceed the number of devices; the first
  that many devices are used.
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = parse_mesh(text) or (("chunk", 1),)
  known = math.prod(n for _, n in axes if n != -1)
  if any(n == -1 for _, n in axes):
    if len(devices) % known:
      raise ValueError(f"mesh {text!r}: {len(devices)} devices are not a multiple of {known}")
    axes = tuple((a, len(devices) // known if n == -1 else n) for a, n in axes)
  total = math.prod(n for _, n in axes)
  if total > len(devices):
    raise ValueError(f"mesh {text!r} needs {total} devices but only {len(devices)} are available "
                     f"(jax.device_count() = {jax.device_count()}); on CPU, force more with "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={total}")
  names = tuple(a for a, _ in axes)
  grid = np.asarray(devices[:total], dtype=object).reshape([n for _, n in axes])
  return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))


def axis_size(mesh: Mesh, name: str) -> int:
  """Size of a mesh axis; 1 when the mesh lacks it."""
  return int(mesh.shape[name]) if name in mesh.axis_names else 1


def spec(mesh: Mesh, *dims) -> P:
  """PartitionSpec keeping only the axis names present in `mesh` (others: None)."""
  def keep(d):
    if d is None:
      return None
    if isinstance(d, tuple):
      kept = tuple(a for a in d if a in mesh.axis_names)
      return kept or None
    return d if d in mesh.axis_names else None
  return P(*(keep(d) for d in dims))


def check_tensor(cfg, mesh: Mesh) -> None:
  """Raises ValueError unless the tensor axis divides the heads and the MLP width."""
  n = axis_size(mesh, "tensor")
  for field in TENSOR_FIELDS:
    value = getattr(cfg, field)
    if value % n:
      raise ValueError(f"the mesh's tensor axis ({n}) must divide the model config's {field} "
                       f"({value}); use a tensor size that divides num_heads, num_kv_heads "
                       f"and intermediate_size")


def sharding(mesh: Mesh, *dims) -> NamedSharding:
  return NamedSharding(mesh, spec(mesh, *dims))


def replicate(tree, mesh: Mesh):
  """Places every array of `tree` (a pytree or an nnx.Module) on all devices of `mesh`."""
  from flax import nnx
  if isinstance(tree, nnx.Module):
    graphdef, state = nnx.split(tree)
    return nnx.merge(graphdef, jax.device_put(state, NamedSharding(mesh, P())))
  return jax.device_put(tree, NamedSharding(mesh, P()))


def logical_spec(mesh: Mesh, names, shape) -> P:
  """Mesh PartitionSpec of a variable with logical axis `names` and `shape`.

  A dimension whose mesh axis is absent, of size 1, or does not divide it is
  replicated (so a tiny model still runs on any mesh).
  """
  if names is None:
    return P()
  if len(names) != len(shape):
    raise ValueError(f"logical axes {names} do not match shape {shape}")
  dims = []
  for name, n in zip(names, shape):
    if name not in LOGICAL_RULES:
      raise ValueError(f"no sharding rule for logical axis {name!r}; known: {sorted(LOGICAL_RULES)}")
    axis = LOGICAL_RULES[name]
    ok = axis in mesh.axis_names and mesh.shape[axis] > 1 and n % mesh.shape[axis] == 0
    dims.append(axis if ok else None)
  return P(*dims)


def _is_var(x):
  from flax import nnx
  return isinstance(x, nnx.Variable)


def _is_spec(x):
  return isinstance(x, P)


def state_specs(state, mesh: Mesh):
  """PartitionSpecs of an nnx State (a P in place of each Variable): a shard_map prefix."""
  def one(v):
    meta = v.get_metadata()
    return logical_spec(mesh, meta.get("out_sharding"), v.shape)
  return jax.tree.map(one, state, is_leaf=_is_var)


def leaf_shardings(state, mesh: Mesh):
  """A NamedSharding per array of an nnx State (its own structure), per `state_specs`."""
  return map_specs(lambda s, v: jax.tree.map(lambda _: NamedSharding(mesh, s), v),
                   state_specs(state, mesh), state)


def abstract_state(state, mesh: Mesh):
  """The State as jax.ShapeDtypeStructs placed per the logical rules (for lowering)."""
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                      state, leaf_shardings(state, mesh))


def shard_state(state, mesh: Mesh):
  """Places an nnx State on `mesh` per the logical rules (FSDP over "fsdp")."""
  return jax.device_put(state, leaf_shardings(state, mesh))


def gather_axes(spec: P, axis: str, skip: int = 0) -> int | None:
  """The dimension of `spec` split over `axis` (minus `skip` leading dims), or None."""
  for i, d in enumerate(spec):
    if d == axis or (isinstance(d, tuple) and axis in d):
      return i - skip
  return None


def map_specs(fn, specs, tree):
  """fn(spec, part) for each PartitionSpec of `specs` and the part of `tree` it covers
  (specs: a prefix of `tree`, one P for all of it or a P per Variable as state_specs gives)."""
  return jax.tree.map(fn, specs, tree, is_leaf=_is_spec)


def fsdp_gather(state, specs, layer: bool = False):
  """all_gather over "fsdp" of the Variables of `state` that `specs` split over it: all but
  the stacked layers' (leading logical axis "layers"), or with `layer` one layer's slice
  of those inside the layer scan (the specs' leading axis gone)."""
  def one(spec, var):
    stacked = (var.get_metadata().get("out_sharding") or ())[:1] == ("layers",)
    d = gather_axes(spec, "fsdp", skip=int(layer))
    if d is None or stacked != layer:
      return var
    return jax.tree.map(lambda x: jax.lax.all_gather(x, "fsdp", axis=d, tiled=True), var)
  return map_specs(one, specs, state)


def merge_shards(graphdef, states, specs=None, remat: str = "none"):
  """(model, ScanOptions), inside shard_map, from this device's shards of its States.

  specs: the States' PartitionSpecs (state_specs), or None when replicated.
  Top-level Variables split over "fsdp" are all-gathered here; each layer's inside
  the layer scan (the ScanOptions' gather, to pass to the model's calls), so one
  layer at a time is whole on a device. remat: the layer scan's rematerialisation policy.
  """
  from flax import nnx
  from focus_jax.model import ScanOptions
  if specs is None:
    return nnx.merge(graphdef, *states), ScanOptions(remat=remat)
  layers = nnx.merge_state(*specs)["model"]["layers"]
  states = [fsdp_gather(st, sp) for st, sp in zip(states, specs)]
  return nnx.merge(graphdef, *states), ScanOptions(
      gather=lambda layer: fsdp_gather(layer, layers, layer=True), remat=remat)


def _check_specs(mesh: Mesh, specs, what: str):
  for s in jax.tree.leaves(specs, is_leaf=_is_spec):
    if not isinstance(s, P):
      raise TypeError(f"shard {what}: expected PartitionSpec leaves, got {type(s).__name__}")
    for d in s:
      for a in (d if isinstance(d, tuple) else (d,)):
        if a is not None and a not in mesh.axis_names:
          raise ValueError(f"shard {what}: axis {a!r} is not in the mesh {dict(mesh.shape)}")


def manual_specs(specs):
  """`specs` (a pytree of PartitionSpecs) without the AUTO_AXES."""
  def drop(s):
    def keep(d):
      if isinstance(d, tuple):
        kept = tuple(a for a in d if a not in AUTO_AXES)
        return kept or None
      return None if d in AUTO_AXES else d
    return P(*(keep(d) for d in s))
  return jax.tree.map(drop, specs, is_leaf=_is_spec)


def shard(fn, mesh: Mesh, in_specs, out_specs, *, check_vma: bool = False):
  """`fn` mapped over shards of its arguments (the project's only shard_map).

  in_specs / out_specs are pytrees (prefixes) of PartitionSpecs; every axis
  they name must be in `mesh`. Inside `fn`, collectives use the mesh axis
  names. The map is manual over the mesh's axes except AUTO_AXES ("tensor"):
  their names are dropped from the specs, and `fn` sees those dimensions
  whole, partitioned by XLA (a mesh of AUTO_AXES only runs `fn` unmapped).
  check_vma is off by default: the decoder's scans carry values that
  start replicated and become device-varying, which the checker rejects.
  """
  _check_specs(mesh, in_specs, "in_specs")
  _check_specs(mesh, out_specs, "out_specs")
  manual = frozenset(a for a in mesh.axis_names if a not in AUTO_AXES)
  if not manual:
    return fn
  return jax.shard_map(fn, mesh=mesh, in_specs=manual_specs(in_specs),
                       out_specs=manual_specs(out_specs), axis_names=manual,
                       check_vma=check_vma)
