"""Device meshes, partition specs and the project's one shard_map helper.

A mesh is described by a string of `name:size` pairs, e.g. "chunk:8" or
"data:2,chunk:4"; names come from AXES:
  data   independent samples (training batches),
  fsdp   parameter sharding (optional),
  chunk  FocusLLM chunks: every chunk is encoded independently, so the chunk
         axis of the inputs and of the chunk KV caches is split over it.
One size may be -1 (all devices left over). Code refers to axes by name only
and uses `spec(mesh, ...)`, which drops the names a mesh lacks, so the same
code runs on "chunk:8", "data:2,chunk:4" or a single device.

`shard` is the only place that calls `jax.shard_map` (its API moved between
JAX releases; the pinned one is `jax.shard_map(f, mesh=, in_specs=,
out_specs=, axis_names=, check_vma=)`).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "chunk")


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


def sharding(mesh: Mesh, *dims) -> NamedSharding:
  return NamedSharding(mesh, spec(mesh, *dims))


def replicate(tree, mesh: Mesh):
  """Places every array of `tree` (a pytree or an nnx.Module) on all devices of `mesh`."""
  from flax import nnx
  if isinstance(tree, nnx.Module):
    graphdef, state = nnx.split(tree)
    return nnx.merge(graphdef, jax.device_put(state, NamedSharding(mesh, P())))
  return jax.device_put(tree, NamedSharding(mesh, P()))


def _check_specs(mesh: Mesh, specs, what: str):
  for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)):
    if not isinstance(s, P):
      raise TypeError(f"shard {what}: expected PartitionSpec leaves, got {type(s).__name__}")
    for d in s:
      for a in (d if isinstance(d, tuple) else (d,)):
        if a is not None and a not in mesh.axis_names:
          raise ValueError(f"shard {what}: axis {a!r} is not in the mesh {dict(mesh.shape)}")


def shard(fn, mesh: Mesh, in_specs, out_specs, *, check_vma: bool = False):
  """`fn` mapped over shards of its arguments (the project's only shard_map).

  in_specs / out_specs are pytrees (prefixes) of PartitionSpecs; every axis
  they name must be in `mesh`. Inside `fn`, collectives use the mesh axis
  names. check_vma is off by default: the decoder's scans carry values that
  start replicated and become device-varying, which the checker rejects.
  """
  _check_specs(mesh, in_specs, "in_specs")
  _check_specs(mesh, out_specs, "out_specs")
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=check_vma)
