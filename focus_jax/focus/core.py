"""FocusLLM building blocks, each one call of the decoder module (pure, not jitted).

A chunk row is a LEFT-padded token row [C] whose last token is the candidate
(plan.py). Its positions restart at 0 at the row's first valid token.

  chunk_prefix   every token of each row except the candidate -> KVCache
                 (pre-RoPE; ordinary projections only).
  chunk_step     t new tokens per row on top of that cache; the LAST one is
                 the candidate (candidate projections). Its per-layer K/V are
                 the row's memory entry and are NOT kept; the t-1 others are
                 appended to the cache.
  chunk_step_streamed  the same over fixed-size row batches (O(batch) temporaries).
  local_forward  the local tokens attending to the memory (entries at RoPE
                 positions 0..n-1, visible to every local token) and causally
                 to themselves (positions n, n+1, ...).

Prefill    = chunk_prefix(rows) + chunk_step(cache, candidate alone) + local_forward.
Generation = chunk_step(cache, [prev, y_t]) + local_forward(BOS ++ local ++ y_1..y_t).

Training: no token before the candidate uses the candidate projections, so
`chunk_prefix` can run under `jax.lax.stop_gradient` (or outside the
differentiated function) and the gradient with respect to the candidate
parameters stays exact; only `chunk_step` (one token per row) and
`local_forward` need to be differentiated. `fused_candidates` computes the same
candidates' K/V as chunk_prefix + chunk_step in ONE layer scan (each layer:
the prefix without gradient, then the candidate over that layer's prefix K/V),
so only one layer's prefix K/V is alive at a time.

`model` is a LlamaForCausalLM (with candidate projections for chunk_step);
`attn` (AttnOptions) says how attention runs, `scan` (ScanOptions) how the
layer scan does (e.g. FSDP's per-layer gather, parallel.merge_shards).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jax.ad_checkpoint import checkpoint_name

from focus_jax.model.llama import (AttnOptions, KVCache, Prefix, ScanOptions, make_context,
                                   update_slice, update_slice_in_dim)

PREFIX_KV = "fused_prefix_kv"   # the values fused_candidates' backward pass keeps


def row_positions(valid, start=0):
  """Positions that restart at `start` on each row's first valid token ([n, T] int32).

  valid: [n, T] bool; start: scalar or [n]. Invalid slots get the position of
  the previous valid token (or `start`); they are masked anyway.
  """
  start = jnp.asarray(start, jnp.int32)
  if start.ndim == 1:
    start = start[:, None]
  return start + jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)


def chunk_prefix(model, tokens, valid, cache_size: int, attn: AttnOptions = AttnOptions(),
                 scan: ScanOptions = ScanOptions()) -> KVCache:
  """KV cache of every token of each row except its last one (the candidate).

  tokens: [n, C] int, valid: [n, C] bool (left padding). The cache holds
  C - 1 slots of tokens (pre-RoPE K/V, positions, validity) followed by free
  slots up to `cache_size` (>= C - 1); `index` is C - 1. Slots past C - 1 are
  for tokens later appended by `chunk_step` (generation).
  """
  n, c = tokens.shape
  if valid.shape != (n, c):
    raise ValueError(f"valid {valid.shape} must match tokens {tokens.shape}")
  if c < 1 or cache_size < c - 1:
    raise ValueError(f"cache_size ({cache_size}) must be >= row length - 1 ({c - 1})")
  toks, val = tokens[:, :-1], valid[:, :-1]
  pos = row_positions(val)
  cfg = model.config
  if c > 1:
    k, v = model(toks, pos, valid=val, logits=None, return_kv=True, attn=attn, scan=scan).kv
  else:
    k = v = jnp.zeros((cfg.num_layers, n, 0, cfg.num_kv_heads, cfg.head_dim), cfg.dtype)
  free = cache_size - (c - 1)
  pad5 = ((0, 0), (0, 0), (0, free), (0, 0), (0, 0))
  pad2 = ((0, 0), (0, free))
  return KVCache(jnp.pad(k, pad5), jnp.pad(v, pad5), jnp.pad(pos, pad2), jnp.pad(pos, pad2),
                 jnp.pad(val, pad2), jnp.asarray(c - 1, jnp.int32))


def cache_prefix(cache: KVCache) -> Prefix:
  """The cache's filled and free slots as a read-only prefix (free slots are invalid)."""
  return Prefix(cache.k, cache.v, cache.pos, cache.order, cache.valid)


def append(cache: KVCache, k, v, pos, valid) -> KVCache:
  """Writes t entries (k, v [L, n, t, KV, hd]; pos, valid [n, t]) at cache.index.

  The caller guarantees room (index + t <= size); dynamic_update_slice would
  otherwise clamp and overwrite the last slots.
  """
  i = cache.index
  z = jnp.zeros((), jnp.int32)
  return KVCache(
      update_slice(cache.k, k, (z, z, i, z, z)),
      update_slice(cache.v, v, (z, z, i, z, z)),
      jax.lax.dynamic_update_slice(cache.pos, pos.astype(jnp.int32), (z, i)),
      jax.lax.dynamic_update_slice(cache.order, pos.astype(jnp.int32), (z, i)),
      jax.lax.dynamic_update_slice(cache.valid, valid, (z, i)),
      i + k.shape[2])


def cache_rows(cache: KVCache, start, size: int) -> KVCache:
  """Rows [start, start + size) of a chunk KVCache (the same index)."""
  sl = lambda x, ax: jax.lax.dynamic_slice_in_dim(x, start, size, ax)
  return KVCache(sl(cache.k, 1), sl(cache.v, 1), sl(cache.pos, 0), sl(cache.order, 0),
                 sl(cache.valid, 0), cache.index)


def put_rows(cache: KVCache, rows: KVCache, start) -> KVCache:
  """`cache` with rows [start, start + n) replaced by the n rows of `rows` (cast to the
  cache's dtypes, e.g. a compact bfloat16 cache); the index stays `cache.index`."""
  upd = lambda buf, x, ax: update_slice_in_dim(buf, x, start, ax)
  return KVCache(upd(cache.k, rows.k, 1), upd(cache.v, rows.v, 1), upd(cache.pos, rows.pos, 0),
                 upd(cache.order, rows.order, 0), upd(cache.valid, rows.valid, 0), cache.index)


def chunk_step(model, cache: KVCache, tokens, valid, attn: AttnOptions = AttnOptions(),
               scan: ScanOptions = ScanOptions()):
  """Runs t new tokens per row [n, t] on top of `cache`; the last one is the candidate.

  Positions continue each row's own numbering (the count of valid cache
  entries). The candidate uses the candidate projections; the others use the
  ordinary ones and are appended to the cache (free slots needed: t - 1).
  Returns (mem_k, mem_v, new_cache) with mem_k, mem_v [L, n, KV, hd], the
  candidates' pre-RoPE K/V. Rows whose tokens are all invalid give
  meaningless entries that the caller must mask (mem_valid).
  """
  n, t = tokens.shape
  if valid.shape != (n, t) or t < 1:
    raise ValueError(f"tokens [n, t >= 1] and valid must match, got {tokens.shape}, {valid.shape}")
  if cache.valid.shape[0] != n:
    raise ValueError(f"cache has {cache.valid.shape[0]} rows, tokens have {n}")
  pos = row_positions(valid, jnp.sum(cache.valid, axis=1, dtype=jnp.int32))
  cand = jnp.full((n,), t - 1, jnp.int32)
  k, v = model(tokens, pos, valid=valid, candidate_index=cand, prefix=cache_prefix(cache),
               logits=None, return_kv=True, attn=attn, scan=scan).kv
  if t > 1:
    cache = append(cache, k[:, :, :-1], v[:, :, :-1], pos[:, :-1], valid[:, :-1])
  return k[:, :, -1], v[:, :, -1], cache


def chunk_step_streamed(model, cache: KVCache, tokens, valid, rows: int, n_batches=None,
                        attn: AttnOptions = AttnOptions(), scan: ScanOptions = ScanOptions()):
  """`chunk_step` run over batches of `rows` rows in a loop inside the trace.

  Each batch reads its rows of the cache (upcast to the compute dtype per
  layer, as in chunk_step), runs and writes them back in place, so the
  temporaries are O(rows), not O(n), whatever the cache's length. n_batches:
  how many leading batches run (may be traced; default all): the others keep
  their cache and give zero entries (all-padding rows, masked by the caller).
  Returns what chunk_step returns.
  """
  n, t = tokens.shape
  if valid.shape != (n, t) or t < 1 or rows < 1 or n % rows:
    raise ValueError(f"tokens [n, t >= 1] with n a multiple of rows ({rows}) and valid must "
                     f"match, got {tokens.shape}, {valid.shape}")
  cfg = model.config
  mem_shape = (cfg.num_layers, n, cfg.num_kv_heads, cfg.head_dim)

  def body(j, carry):
    cache, mem_k, mem_v = carry
    r0 = j * rows
    pick = lambda x: jax.lax.dynamic_slice_in_dim(x, r0, rows, 0)
    k, v, sub = chunk_step(model, cache_rows(cache, r0, rows), pick(tokens), pick(valid), attn,
                           scan)
    put = lambda buf, x: update_slice_in_dim(buf, x, r0, 1)
    return put_rows(cache, sub, r0), put(mem_k, k), put(mem_v, v)

  init = (cache, jnp.zeros(mem_shape, cfg.dtype), jnp.zeros(mem_shape, cfg.dtype))
  cache, mem_k, mem_v = jax.lax.fori_loop(0, n // rows if n_batches is None else n_batches,
                                          body, init)
  return mem_k, mem_v, cache._replace(index=cache.index + (t - 1))


def fused_candidates(model, tokens, valid, *, groups: int = 0,
                     attn: AttnOptions = AttnOptions(), scan: ScanOptions = ScanOptions()):
  """The candidates' pre-RoPE K/V of rows [n, C] (last token), prefix in the same layer scan.

  Equals chunk_prefix (under stop_gradient) + chunk_step of the candidate
  alone, layer by layer: each scan step runs the layer on the C - 1 prefix
  tokens (ordinary projections, no gradient), then on the candidate
  attending to that layer's prefix K/V. Each step is rematerialised except
  for that K/V (the only large value its backward pass needs; the gathered
  weights and the candidate's activations are recomputed). Without `groups`
  the backward pass keeps every layer's prefix K/V; with `groups` = G it
  keeps the rows' hidden state at G group boundaries and recomputes one
  group's prefix at a time (LlamaModel.scan_layers): G hidden states + L/G
  layers' K/V instead of L layers' K/V, for one more prefix forward.
  Returns (k, v), each [L, n, KV, hd].
  """
  n, c = tokens.shape
  if valid.shape != (n, c) or c < 2:
    raise ValueError(f"tokens [n, C >= 2] and valid must match, got {tokens.shape}, {valid.shape}")
  cfg = model.config
  toks, val = tokens[:, :-1], valid[:, :-1]
  pos = row_positions(val)
  ctx_prefix = make_context(cfg, pos, valid=val, attn=attn)
  cand_pos = row_positions(valid[:, -1:], jnp.sum(val, axis=1, dtype=jnp.int32))
  ctx_cand = make_context(cfg, cand_pos, valid=valid[:, -1:],
                          candidate_index=jnp.zeros((n,), jnp.int32),
                          prefix=Prefix(None, None, pos, pos, val), attn=attn)
  embed = lambda t: model.model.embed_tokens(t).astype(cfg.dtype)

  def step(layer, carry, _):
    xp, xc = carry
    xp, _, kv = layer(xp, ctx_prefix)
    xp, kv = jax.lax.stop_gradient((xp, kv))
    kv = checkpoint_name(kv, PREFIX_KV)
    xc, _, (kc, vc) = layer(xc, ctx_cand, kv)
    return (xp, xc), (kc[:, -1], vc[:, -1])

  init = (jax.lax.stop_gradient(embed(toks)), embed(tokens[:, -1:]))
  keep_kv = jax.checkpoint_policies.save_only_these_names(PREFIX_KV)
  _, (k, v) = model.model.scan_layers(step, init, scan=scan, remat=keep_kv, groups=groups)
  return k, v


def memory_prefix(mem_k, mem_v, mem_valid, mem_pos=None, bos_sees_memory: bool = True):
  """The memory as a Prefix visible to every token (order -1) and its entry count.

  mem_k, mem_v: [L, B, N, KV, hd]; mem_valid: [B, N] bool; mem_pos: [B, N]
  RoPE positions (default: 0, 1, ... over the valid entries in array order).
  bos_sees_memory=False (not the official layout; FocusConfig.bos_sees_memory): the
  first local token, at position n (the local BOS, the attention sink), does not see
  the memory: its entries get mask order n + 1, so only local tokens at positions
  > n (every later token, cached or generated) attend to them.
  Returns (Prefix, n_valid [B]).
  """
  mem_valid = jnp.asarray(mem_valid, bool)
  if mem_pos is None:
    mem_pos = row_positions(mem_valid)
  n_valid = jnp.sum(mem_valid, axis=1, dtype=jnp.int32)
  order = jnp.broadcast_to((-1 if bos_sees_memory else n_valid[:, None] + 1),
                           mem_valid.shape).astype(jnp.int32)
  return Prefix(mem_k, mem_v, jnp.asarray(mem_pos, jnp.int32), order, mem_valid), n_valid


def local_forward(model, mem_k, mem_v, mem_valid, local_tokens, local_valid=None, *,
                  mem_pos=None, logits: str = "last", attn: AttnOptions = AttnOptions(),
                  bos_sees_memory: bool = True):
  """Logits of the local tokens reading the memory.

  mem_k, mem_v: [L, B, N, KV, hd] (or [L, N, KV, hd] for B = 1); mem_valid:
  [B, N] (or [N]); local_tokens: [B, T] (or [T]) = BOS ++ local (++ generated),
  LEFT-padded where local_valid is False. Memory entries sit at positions
  mem_pos (default 0..n-1 over valid entries), local tokens at n, n+1, ...
  (n = valid entries of the row). logits: "last" -> [B, V], "all" -> [B, T, V]
  (float32); unbatched inputs drop the B axis. bos_sees_memory: see memory_prefix.
  """
  unbatched = jnp.ndim(local_tokens) == 1
  if unbatched:
    mem_k, mem_v = mem_k[:, None], mem_v[:, None]
    mem_valid = jnp.asarray(mem_valid)[None]
    mem_pos = None if mem_pos is None else jnp.asarray(mem_pos)[None]
    local_tokens = jnp.asarray(local_tokens)[None]
    local_valid = None if local_valid is None else jnp.asarray(local_valid)[None]
  if logits not in ("last", "all"):
    raise ValueError(f"logits must be 'last' or 'all', got {logits!r}")
  if local_valid is None:
    local_valid = jnp.ones(local_tokens.shape, bool)
  prefix, n_valid = memory_prefix(mem_k, mem_v, mem_valid, mem_pos, bos_sees_memory)
  pos = row_positions(local_valid, n_valid)
  out = model(local_tokens, pos, valid=local_valid, prefix=prefix, logits=logits,
              attn=attn).logits
  out = out[:, -1] if logits == "last" else out
  return out[0] if unbatched else out
