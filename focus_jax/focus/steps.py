"""Jitted, mesh-sharded FocusLLM steps: chunk encoding, memory gather, local and decode steps.

Chunk rows are split over the mesh's "chunk" axis with `parallel.shard`:
every device encodes its own rows (`core.chunk_prefix` + `core.chunk_step`)
and keeps their KV caches, which stay sharded where they were computed.
Only the candidates' K/V (one entry per row and layer) are all-gathered for
the local step, which runs replicated. Builders are cached per static
configuration (the model's graphdef, the mesh, AttnOptions), so a call with
the same shapes reuses its compilation; each returned function takes the
model's state (`nnx.split(model)[1]`) and merges it inside the trace.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from flax import nnx

from focus_jax.config import ModelConfig
from focus_jax.focus import core
from focus_jax.model.llama import AttnOptions, KVCache, init_cache, update_slice_in_dim
from focus_jax import parallel
from focus_jax.parallel import axis_size, shard, sharding, spec

CHUNK = "chunk"


def cache_specs(mesh) -> KVCache:
  """PartitionSpecs of a chunk KVCache whose rows are split over the chunk axis."""
  kv, rows = spec(mesh, None, CHUNK), spec(mesh, CHUNK)
  return KVCache(kv, kv, rows, rows, rows, P())


def cache_shardings(mesh) -> KVCache:
  kv, rows = sharding(mesh, None, CHUNK), sharding(mesh, CHUNK)
  return KVCache(kv, kv, rows, rows, rows, sharding(mesh))


@functools.lru_cache(maxsize=None)
def alloc_fn(cfg: ModelConfig, mesh, n_rows: int, size: int, index: int, keep: bool,
             cache_dtype: str | None = None):
  """() -> (cache or None, mem_k, mem_v): empty, sharded buffers for n_rows chunk rows.

  cache_dtype: the chunk cache's K/V storage (e.g. "bfloat16", half the bytes;
  every step upcasts what it reads to the compute dtype); default the compute
  dtype. The memory entries stay in the compute dtype.
  """
  mem_shape = (cfg.num_layers, n_rows, cfg.num_kv_heads, cfg.head_dim)

  def alloc():
    cache = init_cache(cfg, n_rows, size, cache_dtype)._replace(
        index=jnp.asarray(index, jnp.int32))
    zeros = jnp.zeros(mem_shape, cfg.dtype)
    return (cache if keep else None), zeros, zeros

  mem = sharding(mesh, None, CHUNK)
  return jax.jit(alloc, out_shardings=((cache_shardings(mesh) if keep else None), mem, mem))


@functools.lru_cache(maxsize=None)
def encode_fn(graphdef, mesh, batch: int, keep: bool, attn: AttnOptions = AttnOptions()):
  """Encodes chunk batch j in place: (state, tokens, valid, cache, mem_k, mem_v, j) -> (cache, mem_k, mem_v).

  Each device encodes rows [j*b, (j+1)*b) of its own block (b = batch / shards):
  prefix (all but the candidate), then the candidate alone on top of it. The
  buffers are donated and updated in place; with keep=False there is no cache.
  """
  shards = axis_size(mesh, CHUNK)
  if batch % shards:
    raise ValueError(f"chunk batch {batch} must be a multiple of the chunk axis size {shards}")
  b = batch // shards

  def body(specs, state, tokens, valid, cache, mem_k, mem_v, j):
    model, scan = parallel.merge_shards(graphdef, (state,), specs)
    r0 = j * b
    tok = jax.lax.dynamic_slice_in_dim(tokens, r0, b, 0)
    val = jax.lax.dynamic_slice_in_dim(valid, r0, b, 0)
    size = cache.k.shape[2] if keep else tok.shape[1] - 1
    pc = core.chunk_prefix(model, tok, val, size, attn, scan)
    mk, mv, _ = core.chunk_step(model, pc, tok[:, -1:], val[:, -1:], attn, scan)
    mem_k = update_slice_in_dim(mem_k, mk, r0, 1)
    mem_v = update_slice_in_dim(mem_v, mv, r0, 1)
    if keep:
      cache = core.put_rows(cache, pc, r0)
    return cache, mem_k, mem_v

  rows, mem = spec(mesh, CHUNK), spec(mesh, None, CHUNK)
  cspec = cache_specs(mesh) if keep else None

  def run(state, *args):
    sspec, specs = _state_specs(state, mesh)
    fn = shard(functools.partial(body, specs), mesh,
               in_specs=(sspec, rows, rows, cspec, mem, mem, P()), out_specs=(cspec, mem, mem))
    return fn(state, *args)
  return jax.jit(run, donate_argnums=(3, 4, 5))


def _state_specs(state, mesh):
  """(shard_map in_spec of the model state, specs for merge_shards or None): the state is
  split over "fsdp" per the logical rules when the mesh has that axis, else replicated."""
  if axis_size(mesh, "fsdp") == 1:
    return P(), None
  specs = parallel.state_specs(state, mesh)
  return specs, (specs,)


def gather_rows(mesh, *xs, axis: int = 1):
  """All-gathers arrays whose `axis` is split over the chunk axis (replicated result)."""
  if CHUNK not in mesh.axis_names:
    return xs
  body = lambda *a: tuple(jax.lax.all_gather(x, CHUNK, axis=axis, tiled=True) for x in a)
  in_spec = spec(mesh, *([None] * axis + [CHUNK]))
  return shard(body, mesh, in_specs=(in_spec,) * len(xs), out_specs=(P(),) * len(xs))(*xs)


def _local_logits(model, mem_k, mem_v, mem_valid, mem_pos, local, local_valid, attn,
                  bos_sees_memory: bool = True):
  return core.local_forward(model, mem_k[:, None], mem_v[:, None], mem_valid[None],
                            local[None], local_valid[None], mem_pos=mem_pos[None], attn=attn,
                            bos_sees_memory=bos_sees_memory)[0]


@functools.lru_cache(maxsize=None)
def local_fn(graphdef, mesh, attn: AttnOptions = AttnOptions(), bos_sees_memory: bool = True):
  """(state, mem_k, mem_v, mem_valid, mem_pos, local [T], local_valid [T]) -> logits [V].

  Gathers the memory over the chunk axis, then runs the local tokens
  (left-padded) on it; exact mode runs this from scratch at every step.
  """
  def fn(state, mem_k, mem_v, mem_valid, mem_pos, local, local_valid):
    mem_k, mem_v = gather_rows(mesh, mem_k, mem_v)
    return _local_logits(nnx.merge(graphdef, state), mem_k, mem_v, mem_valid, mem_pos, local,
                         local_valid, attn, bos_sees_memory)

  return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def exact_step_fn(graphdef, mesh, attn: AttnOptions = AttnOptions(), step_rows: int = 0,
                  bos_sees_memory: bool = True):
  """One exact generation step.

  (state, cache, row_valid, pair [2] = [prev, y_t], mem_pos, local, local_valid
  [, n_batches]) -> (logits [V], cache): every chunk row runs [prev, y_t] on its
  cache (prev appended, y_t the new candidate), the memory is rebuilt from the
  new candidates and the local tokens are recomputed on it. The cache is donated.

  step_rows > 0 (a multiple of the chunk-axis size): the rows run in batches of
  step_rows (core.chunk_step_streamed), so the step's temporaries do not grow
  with the number of rows; n_batches (default all) is how many leading batches
  of each device's rows hold real chunks. 0: all rows in one call.
  """
  rows = spec(mesh, CHUNK)
  shards = axis_size(mesh, CHUNK)
  if step_rows % shards:
    raise ValueError(f"step_rows {step_rows} must be a multiple of the chunk axis size {shards}")
  per_dev = step_rows // shards

  def chunks(specs, state, cache, row_valid, pair, n_batches):
    n = row_valid.shape[0]
    toks = jnp.broadcast_to(pair[None, :], (n, 2))
    val = jnp.broadcast_to(row_valid[:, None], (n, 2))
    model, scan = parallel.merge_shards(graphdef, (state,), specs)
    if per_dev and per_dev < n:
      mem_k, mem_v, cache = core.chunk_step_streamed(model, cache, toks, val, per_dev,
                                                     n_batches, attn, scan)
    else:
      mem_k, mem_v, cache = core.chunk_step(model, cache, toks, val, attn, scan)
    return cache, mem_k, mem_v

  mem = spec(mesh, None, CHUNK)

  def fn(state, cache, row_valid, pair, mem_pos, local, local_valid, n_batches=None):
    sspec, specs = _state_specs(state, mesh)
    if n_batches is None:
      n_batches = cache.valid.shape[0] // max(step_rows, 1)
    n_batches = jnp.asarray(n_batches, jnp.int32)
    sharded = shard(functools.partial(chunks, specs), mesh,
                    in_specs=(sspec, cache_specs(mesh), rows, P(), P()),
                    out_specs=(cache_specs(mesh), mem, mem))
    cache, mem_k, mem_v = sharded(state, cache, row_valid, pair, n_batches)
    mem_k, mem_v = gather_rows(mesh, mem_k, mem_v)
    logits = _local_logits(nnx.merge(graphdef, state), mem_k, mem_v, row_valid, mem_pos, local,
                           local_valid, attn, bos_sees_memory)
    return logits, cache

  return jax.jit(fn, donate_argnums=(1,))


@functools.lru_cache(maxsize=None)
def fast_prefill_fn(graphdef, mesh, cache_size: int, attn: AttnOptions = AttnOptions(),
                    bos_sees_memory: bool = True):
  """Fast mode: (state, mem_k, mem_v, mem_valid, mem_pos, local, local_valid)
  -> (logits [V], memory (k, v, valid, pos) gathered, local KVCache, next position)."""
  def fn(state, mem_k, mem_v, mem_valid, mem_pos, local, local_valid):
    model = nnx.merge(graphdef, state)
    mem_k, mem_v = gather_rows(mesh, mem_k, mem_v)
    prefix, n_valid = core.memory_prefix(mem_k[:, None], mem_v[:, None], mem_valid[None],
                                         mem_pos[None], bos_sees_memory)
    pos = core.row_positions(local_valid[None], n_valid)
    out = model(local[None], pos, valid=local_valid[None], prefix=prefix,
                cache=init_cache(model.config, 1, cache_size), logits="last", attn=attn)
    return out.logits[0, -1], (mem_k, mem_v), out.cache, pos[0, -1] + 1

  return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def fast_step_fn(graphdef, mesh, attn: AttnOptions = AttnOptions(),
                 bos_sees_memory: bool = True):
  """Fast mode step: (state, (mem_k, mem_v), mem_valid, mem_pos, cache, token, position)
  -> (logits [V], cache). The memory stays frozen at its prefill value."""
  def fn(state, mem, mem_valid, mem_pos, cache, token, position):
    prefix, _ = core.memory_prefix(mem[0][:, None], mem[1][:, None], mem_valid[None],
                                   mem_pos[None], bos_sees_memory)
    out = nnx.merge(graphdef, state)(token.reshape(1, 1), position.reshape(1, 1), prefix=prefix,
                                     cache=cache, logits="last", attn=attn)
    return out.logits[0, -1], out.cache

  return jax.jit(fn, donate_argnums=(4,))
