"""The LLaMA decoder as Flax NNX modules with Hugging Face attribute names.

  LlamaForCausalLM            model, lm_head (None when embeddings are tied)
    LlamaModel                embed_tokens, layers, norm
      DecoderLayer            self_attn, mlp, input_layernorm, post_attention_layernorm
        Attention             q_proj, k_proj, v_proj, o_proj (+ candidate_{q,k,v,o}_proj)
        MLP                   gate_proj, up_proj, down_proj
      RMSNorm                 weight

Weights are `nnx.Param` stored [in, out] (`kernel`); FocusLLM's candidate
projections are `CandidateParam`, a subclass, so the trainable set is a type
(`nnx.state(model, CandidateParam)`). Every variable carries logical axis
names (`out_sharding`, see focus_jax.parallel.LOGICAL_RULES). `model.layers`
is ONE DecoderLayer whose variables have a leading "layers" axis; the call
runs `jax.lax.scan` over its split state with `nnx.merge` in the body, so
compile time does not grow with depth.

The call keeps an explicit contract (see `LlamaForCausalLM.__call__`):
positions for RoPE, an order/validity mask, a prefix of extra keys/values
(FocusLLM memory), a KV cache, the index of one candidate token per row and
attention options. Keys and values are kept before RoPE everywhere, so a cache
or a memory can be placed at any positions later. Caches and prefixes are
plain pytrees passed in and returned.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from focus_jax.config import CANDIDATE_PROJS, ModelConfig
from focus_jax.model.attention import attention
from focus_jax.model.rope import inv_frequencies


class CandidateParam(nnx.Param):
  """FocusLLM's candidate projections: the only parameters that train."""


def candidate_attr(proj: str) -> str:
  """Attribute (and HF module) name of the candidate projection of q|k|v|o."""
  return f"candidate_{proj}_proj"


class Prefix(NamedTuple):
  """Extra keys/values placed before the tokens (pre-RoPE), per layer."""
  k: jax.Array      # [L, B, P, KV, hd]
  v: jax.Array      # [L, B, P, KV, hd]
  pos: jax.Array    # [B, P] RoPE positions
  order: jax.Array  # [B, P] mask order (e.g. -1: visible to all)
  valid: jax.Array  # [B, P] bool


class KVCache(NamedTuple):
  """Pre-RoPE keys/values of past tokens; slots [index, S) are free."""
  k: jax.Array      # [L, B, S, KV, hd]
  v: jax.Array      # [L, B, S, KV, hd]
  pos: jax.Array    # [B, S]
  order: jax.Array  # [B, S]
  valid: jax.Array  # [B, S] bool
  index: jax.Array  # [] int32, next free slot


class AttnOptions(NamedTuple):
  """How attention runs (hashable, static): blocking and SelfExtend.

  block_q, block_k: query/key block sizes; dense_max: one dense block when
  T * S <= dense_max. selfextend: (group_size, neighbor_window) or None.
  """
  block_q: int = 256
  block_k: int = 256
  dense_max: int = 512 * 1024
  selfextend: tuple[int, int] | None = None
  attention: str = "auto"   # kernel: focus_jax.model.kernels.NAMES ("reference": blockwise)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class ScanOptions(NamedTuple):
  """How the layer scan runs (static; passed like AttnOptions, e.g. by parallel.merge_shards).

  gather: applied to each layer's state in the scan body, e.g. FSDP's
    all_gather over the "fsdp" axis, so one layer at a time is whole on a device.
  remat: a REMAT_POLICIES name: rematerialise each layer in the backward pass.
  """
  gather: object = None
  remat: str = "none"


class ForwardOutput(NamedTuple):
  logits: jax.Array | None   # [B, T or 1, V] float32 (None when logits=None)
  hidden: jax.Array          # [B, T, D] after the final norm
  cache: KVCache | None      # the updated cache (None without one)
  kv: tuple | None           # (k, v) [L, B, T, KV, hd] pre-RoPE, with return_kv


class LayerContext(NamedTuple):
  """What every layer of one call shares (built once by `make_context`)."""
  positions: jax.Array       # [B, T] query RoPE positions
  order: jax.Array           # [B, T]
  k_pos: jax.Array           # [B, S] keys (prefix ++ cache or tokens)
  k_order: jax.Array
  k_valid: jax.Array
  inv_freq: jax.Array
  cand_onehot: jax.Array | None   # [B, T] bool: the token using candidate projections
  cand_idx: jax.Array | None      # [B], or [B, M] for several candidates per row
  cache_index: jax.Array | None
  attn: AttnOptions
  q_seg: jax.Array | None = None  # [B, T] with `private`: a private token's own segment
  k_seg: jax.Array | None = None  # [B, S] (0: a key every query may see)


# The int8 cache: each cached key or value vector (one token, one KV head) is stored as
# head_dim int8 values followed by the 4 bytes of its float32 scale (absmax / 127), so an
# entry takes head_dim + 4 bytes instead of 2 * head_dim (bfloat16) or 4 * head_dim, and the
# cache stays one array per K and V (slicing, row updates and shardings are unchanged).
INT8 = jnp.dtype(jnp.int8)
SCALE_BYTES = 4


def cache_entry_bytes(head_dim: int, dtype) -> int:
  """Bytes of one cached key (or value) vector stored in `dtype`."""
  dtype = jnp.dtype(dtype)
  return head_dim + SCALE_BYTES if dtype == INT8 else head_dim * dtype.itemsize


def quantize_int8(x: jax.Array) -> jax.Array:
  """[..., hd] float -> [..., hd + 4] int8: round(x / scale) and the bits of the float32
  scale = max|x| / 127 (1 for an all-zero vector), so every entry moves by at most scale / 2."""
  x = x.astype(jnp.float32)
  amax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
  scale = jnp.where(amax > 0, amax / 127, 1.0)
  q = jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8)
  bits = jax.lax.bitcast_convert_type(scale, jnp.int8).reshape(x.shape[:-1] + (SCALE_BYTES,))
  return jnp.concatenate([q, bits], axis=-1)


def cache_values(buf: jax.Array, dtype) -> jax.Array:
  """Cached keys or values as `dtype`: an int8 cache is dequantised (values * scale)."""
  if buf.dtype != INT8:
    return buf.astype(dtype)
  scale = jax.lax.bitcast_convert_type(buf[..., -SCALE_BYTES:], jnp.float32)
  return (buf[..., :-SCALE_BYTES].astype(jnp.float32) * scale[..., None]).astype(dtype)


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=None) -> KVCache:
  """An empty cache; dtype the K/V storage (default the compute dtype; int8: quantized with
  one scale per vector, see quantize_int8)."""
  dtype = jnp.dtype(dtype or cfg.dtype)
  hd = cfg.head_dim + SCALE_BYTES if dtype == INT8 else cfg.head_dim
  shape = (cfg.num_layers, batch, size, cfg.num_kv_heads, hd)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                 jnp.zeros((batch, size), jnp.int32), jnp.zeros((batch, size), jnp.int32),
                 jnp.zeros((batch, size), bool), jnp.zeros((), jnp.int32))


_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@jax.custom_jvp
def _update_bits(buf, x, start):
  bits = lambda a: jax.lax.bitcast_convert_type(a, jnp.uint16)
  out = jax.lax.dynamic_update_slice(bits(buf), bits(x), start)
  return jax.lax.bitcast_convert_type(out, buf.dtype)


@_update_bits.defjvp
def _update_bits_jvp(primals, tangents):
  (buf, x, start), (d_buf, d_x, _) = primals, tangents
  return _update_bits(buf, x, start), jax.lax.dynamic_update_slice(d_buf, d_x, start)


def update_slice(buf: jax.Array, x: jax.Array, start) -> jax.Array:
  """`buf` with `x` (cast to buf's dtype) written at `start` (one index per axis), in place
  when `buf` is donated.

  An int8 buffer is a quantized cache (init_cache): float `x` [..., hd] is quantized
  (quantize_int8) before it is written. A 16-bit float buffer is updated through its
  integer bits: XLA:CPU otherwise upcasts
  the whole buffer to float32 around the update, so every write of one row into a
  bfloat16 cache read and wrote all of it (the chunk encoding of a 400K-token input
  grew with the square of the input length). Values and derivatives are those of
  `jax.lax.dynamic_update_slice`.
  """
  if buf.dtype == INT8 and x.dtype != INT8:   # an int8 cache: quantize the new vectors
    x = quantize_int8(x)
  x = x.astype(buf.dtype)
  start = tuple(jnp.asarray(i, jnp.int32) for i in start)
  if buf.dtype in _HALF:
    return _update_bits(buf, x, start)
  return jax.lax.dynamic_update_slice(buf, x, start)


def update_slice_in_dim(buf: jax.Array, x: jax.Array, start, axis: int) -> jax.Array:
  """`update_slice` at `start` along `axis` (index 0 on every other axis)."""
  return update_slice(buf, x, tuple(start if a == axis else 0 for a in range(buf.ndim)))


def _var(kind, value, axes):
  return kind(value, out_sharding=axes, eager_sharding=False)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias); kernel [in, out] and bias [out] of variable type `kind`."""

  def __init__(self, kernel, bias=None, *, axes: tuple, kind=nnx.Param):
    self.kernel = _var(kind, kernel, axes)
    self.bias = nnx.data(None if bias is None else _var(kind, bias, axes[1:]))

  @classmethod
  def random(cls, din: int, dout: int, *, bias: bool, axes: tuple, cfg: ModelConfig,
             rngs: nnx.Rngs, std: float = 0.02) -> "Linear":
    w = (std * jax.random.normal(rngs.params(), (din, dout))).astype(cfg.pdtype)
    return cls(w, jnp.zeros((dout,), cfg.pdtype) if bias else None, axes=axes)

  def copy_as(self, kind) -> "Linear":
    """A copy of these weights as variables of type `kind` (same axis names)."""
    axes = self.kernel.get_metadata()["out_sharding"]
    b = None if self.bias is None else jnp.array(self.bias[...], copy=True)
    return Linear(jnp.array(self.kernel[...], copy=True), b, axes=axes, kind=kind)

  def __call__(self, x):
    y = jnp.einsum("...i,io->...o", x, self.kernel[...].astype(x.dtype))
    return y if self.bias is None else y + self.bias[...].astype(x.dtype)


class RMSNorm(nnx.Module):
  def __init__(self, dim: int, eps: float, cfg: ModelConfig):
    self.weight = _var(nnx.Param, jnp.ones((dim,), cfg.pdtype), ("norm",))
    self.eps = eps

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(x.dtype) * xf.astype(x.dtype)


class MLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, std: float = 0.02):
    d, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
    self.gate_proj = Linear.random(d, i, bias=b, axes=("embed", "mlp"), cfg=cfg, rngs=rngs, std=std)
    self.up_proj = Linear.random(d, i, bias=b, axes=("embed", "mlp"), cfg=cfg, rngs=rngs, std=std)
    self.down_proj = Linear.random(i, d, bias=b, axes=("mlp", "embed"), cfg=cfg, rngs=rngs, std=std)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


_PROJ_AXES = {"q": ("embed", "heads"), "k": ("embed", "kv_heads"), "v": ("embed", "kv_heads"),
              "o": ("heads", "embed")}


class Attention(nnx.Module):
  """Self-attention over pre-RoPE keys; the candidate token uses candidate_*_proj."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, std: float = 0.02):
    d, hq, hk = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    dims = {"q": (d, hq), "k": (d, hk), "v": (d, hk), "o": (hq, d)}
    self.config = cfg
    for p in CANDIDATE_PROJS:
      setattr(self, f"{p}_proj", Linear.random(*dims[p], bias=cfg.attention_bias, axes=_PROJ_AXES[p],
                                        cfg=cfg, rngs=rngs, std=std))
      setattr(self, candidate_attr(p), nnx.data(None))

  def _proj(self, p: str, x, ctx: LayerContext, x_cand):
    y = getattr(self, f"{p}_proj")(x)
    cand = getattr(self, candidate_attr(p))
    if cand is None or ctx.cand_onehot is None:
      return y
    if ctx.cand_idx.ndim == 2:   # several candidates per row: scattered back to their tokens
      rows = jnp.arange(y.shape[0])[:, None]
      return y.at[rows, ctx.cand_idx].set(cand(x_cand).astype(y.dtype), mode="drop")
    return jnp.where(ctx.cand_onehot[..., None], cand(x_cand), y)

  def __call__(self, h, ctx: LayerContext, prefix_kv=None, cache_kv=None):
    """h [B,T,D] -> (out [B,T,D], updated cache (k, v) or None, this call's pre-RoPE (k, v))."""
    cfg = self.config
    b, t, _ = h.shape
    idx = None if ctx.cand_idx is None else (
        ctx.cand_idx[:, :, None] if ctx.cand_idx.ndim == 2 else ctx.cand_idx[:, None, None])
    pick = lambda x: (None if idx is None else
                      jnp.take_along_axis(x, idx, axis=1, mode="clip"))
    hc = pick(h)
    q = self._proj("q", h, ctx, hc).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = self._proj("k", h, ctx, hc).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = self._proj("v", h, ctx, hc).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    keys, vals, new_cache = k, v, None
    if cache_kv is not None:
      at = (0, ctx.cache_index, 0, 0)
      keys = update_slice(cache_kv[0], k, at)
      vals = update_slice(cache_kv[1], v, at)
      new_cache = (keys, vals)
    if keys.dtype == INT8:   # an int8 cache: dequantised here, as a bfloat16 one is upcast
      keys, vals = cache_values(keys, h.dtype), cache_values(vals, h.dtype)
    if prefix_kv is not None:
      keys = jnp.concatenate([cache_values(prefix_kv[0], keys.dtype), keys], 1)
      vals = jnp.concatenate([cache_values(prefix_kv[1], vals.dtype), vals], 1)
    o = ctx.attn
    a = attention(q, keys.astype(h.dtype), vals.astype(h.dtype), ctx.positions, ctx.k_pos,
                  ctx.order, ctx.k_order, ctx.k_valid, ctx.inv_freq, selfextend=o.selfextend,
                  block_q=o.block_q, block_k=o.block_k, dense_max=o.dense_max,
                  q_seg=ctx.q_seg, k_seg=ctx.k_seg, kernel=o.attention)
    a = a.reshape(b, t, cfg.num_heads * cfg.head_dim)
    return self._proj("o", a, ctx, pick(a)), new_cache, (k, v)


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, std: float = 0.02):
    self.self_attn = Attention(cfg, rngs, std)
    self.mlp = MLP(cfg, rngs, std)
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg)

  def __call__(self, x, ctx: LayerContext, prefix_kv=None, cache_kv=None):
    a, new_cache, kv = self.self_attn(self.input_layernorm(x), ctx, prefix_kv, cache_kv)
    x = x + a
    x = x + self.mlp(self.post_attention_layernorm(x))
    return x, new_cache, kv


def make_context(cfg: ModelConfig, positions, *, order=None, valid=None, candidate_index=None,
                 prefix: Prefix | None = None, cache: KVCache | None = None,
                 attn: AttnOptions = AttnOptions(), private=None) -> LayerContext:
  """The per-call inputs every layer shares: key positions/order/validity, RoPE, candidate."""
  b, t = positions.shape
  order = positions if order is None else order
  valid = jnp.ones((b, t), bool) if valid is None else valid
  cand_onehot = cand_idx = None
  if candidate_index is not None:
    candidate_index = jnp.asarray(candidate_index)
    if candidate_index.ndim == 2:   # [B, M]: several candidates per row
      inside = (candidate_index >= 0) & (candidate_index < t)
      cand_onehot = jnp.any((jnp.arange(t)[None, :, None] == candidate_index[:, None, :])
                            & inside[:, None, :], axis=-1)
      cand_idx = jnp.where(inside, candidate_index, t)   # t: dropped when scattered back
    else:
      cand_onehot = jnp.arange(t)[None, :] == candidate_index[:, None]
      cand_idx = jnp.clip(candidate_index, 0, t - 1)
  q_seg = k_seg = None
  if private is not None:
    if cache is not None:
      raise ValueError("private tokens cannot be written to a KV cache")
    q_seg = jnp.where(jnp.asarray(private, bool), jnp.arange(1, t + 1)[None, :], 0)
    q_seg = jnp.broadcast_to(q_seg, (b, t)).astype(jnp.int32)
    k_seg = q_seg if prefix is None else jnp.concatenate(
        [jnp.zeros(prefix.valid.shape, jnp.int32), q_seg], 1)
  max_pos = jnp.max(positions)
  k_pos, k_ord, k_val, index = positions, order, valid, None
  if cache is not None:
    index = cache.index
    max_pos = jnp.maximum(max_pos, jnp.max(jnp.where(cache.valid, cache.pos, 0)))
    k_pos = jax.lax.dynamic_update_slice(cache.pos, positions.astype(jnp.int32), (0, index))
    k_ord = jax.lax.dynamic_update_slice(cache.order, order.astype(jnp.int32), (0, index))
    k_val = jax.lax.dynamic_update_slice(cache.valid, valid, (0, index))
  if prefix is not None:
    max_pos = jnp.maximum(max_pos, jnp.max(prefix.pos))
    k_pos = jnp.concatenate([prefix.pos, k_pos], 1)
    k_ord = jnp.concatenate([prefix.order, k_ord], 1)
    k_val = jnp.concatenate([prefix.valid, k_val], 1)
  return LayerContext(positions, order, k_pos, k_ord, k_val, inv_frequencies(cfg, max_pos + 1),
                      cand_onehot, cand_idx, index, attn, q_seg, k_seg)


def _stacked_layers(cfg: ModelConfig, rngs: nnx.Rngs, std: float) -> DecoderLayer:
  """One DecoderLayer whose variables carry a leading "layers" axis of num_layers."""
  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(r):
    return DecoderLayer(cfg, r, std)
  return create(rngs)


class Embedding(nnx.Module):
  """Token embeddings [V, D] (`embedding`)."""

  def __init__(self, table):
    self.embedding = _var(nnx.Param, table, ("vocab", "embed"))

  def __call__(self, tokens):
    return jnp.take(self.embedding[...], tokens, axis=0)


class LlamaModel(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, std: float = 0.02):
    self.config = cfg
    emb = std * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size))
    self.embed_tokens = Embedding(emb.astype(cfg.pdtype))
    self.layers = _stacked_layers(cfg, rngs, std)
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg)

  def layer(self, i: int) -> DecoderLayer:
    """Decoder layer i as its own module (a view of slice i of the stacked state)."""
    graphdef, state = nnx.split(self.layers)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))

  def scan_layers(self, fn, carry, xs=None, *, scan: ScanOptions = ScanOptions(),
                  remat: str | None = None, groups: int = 0):
    """`jax.lax.scan` of fn(layer, carry, xs_l) -> (carry, ys_l) over the decoder layers.

    Each step merges one layer (after `scan.gather`, e.g. FSDP's all_gather)
    and calls fn; xs and ys have a leading layer axis.
    remat: REMAT_POLICIES name or a checkpoint policy for each step (None:
    scan.remat).
    groups > 0: the layers run as `groups` equal groups, each under
    `jax.checkpoint`, so the backward pass keeps only the carry at the group
    boundaries and rematerialises one group at a time, keeping inside it what
    each step's `remat` policy saves (sqrt-style nesting).
    """
    graphdef, state = nnx.split(self.layers)
    remat = scan.remat if remat is None else remat
    if isinstance(remat, str) and remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {remat!r}; known: {sorted(REMAT_POLICIES)}")

    def body(c, inp):
      layer_state, x = inp
      if scan.gather is not None:
        layer_state = scan.gather(layer_state)
      return fn(nnx.merge(graphdef, layer_state), c, x)

    if remat != "none":
      policy = REMAT_POLICIES[remat] if isinstance(remat, str) else remat
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    if not groups:
      return jax.lax.scan(body, carry, (state, xs))
    n = self.config.num_layers
    if groups < 0 or n % groups:
      raise ValueError(f"groups ({groups}) must divide the number of layers ({n})")
    per = n // groups

    def group(c, g):  # slices of the stacked layers (no regrouped copy of the weights)
      part = lambda a: jax.lax.dynamic_slice_in_dim(a, g * per, per, 0)
      return jax.lax.scan(body, c, jax.tree.map(part, (state, xs)))

    group = jax.checkpoint(group, policy=jax.checkpoint_policies.nothing_saveable,
                           prevent_cse=False)
    carry, ys = jax.lax.scan(group, carry, jnp.arange(groups))
    return carry, jax.tree.map(lambda a: a.reshape((n,) + a.shape[2:]), ys)

  def __call__(self, tokens, ctx: LayerContext, prefix: Prefix | None = None,
               cache: KVCache | None = None, return_kv: bool = False,
               scan: ScanOptions = ScanOptions()):
    """Returns (hidden after the final norm, new cache (k, v) stacked or None, kv or None)."""
    x = self.embed_tokens(tokens).astype(self.config.dtype)

    def step(layer, x, xs):
      pre, cch = xs
      x, new_cache, kv = layer(x, ctx, pre, cch)
      return x, (new_cache, kv if return_kv else None)

    pre = None if prefix is None else (prefix.k, prefix.v)
    cch = None if cache is None else (cache.k, cache.v)
    x, (new_kv, kv) = self.scan_layers(step, x, (pre, cch), scan=scan)
    return self.norm(x), new_kv, kv


class LlamaForCausalLM(nnx.Module):
  """transformers' LlamaForCausalLM: GQA/MQA, tied or untied head, biases, RoPE variants."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None, std: float = 0.02):
    rngs = nnx.Rngs(0) if rngs is None else rngs
    self.config = cfg
    self.model = LlamaModel(cfg, rngs, std)
    self.lm_head = nnx.data(None if cfg.tie_word_embeddings else Linear.random(
        cfg.hidden_size, cfg.vocab_size, bias=False, axes=("embed", "vocab"), cfg=cfg,
        rngs=rngs, std=std))

  def unembed(self, h):
    """Float32 logits of hidden states [..., D] (the tied embedding or lm_head)."""
    head = (self.model.embed_tokens.embedding[...].T if self.lm_head is None
            else self.lm_head.kernel[...])
    return jnp.einsum("...d,dv->...v", h, head.astype(h.dtype), preferred_element_type=jnp.float32)

  def set_config(self, cfg: ModelConfig) -> "LlamaForCausalLM":
    """Replaces the config in every module (e.g. another compute dtype); same shapes only."""
    if dataclasses.replace(cfg, compute_dtype="float32", param_dtype="float32") != \
        dataclasses.replace(self.config, compute_dtype="float32", param_dtype="float32"):
      raise ValueError("set_config may change the dtypes only")
    for _, m in nnx.iter_modules(self):
      if hasattr(m, "config"):
        m.config = cfg
    return self

  @property
  def candidate_projs(self) -> tuple[str, ...]:
    """The projections (of q, k, v, o) that have a candidate copy."""
    attn = self.model.layers.self_attn
    return tuple(p for p in CANDIDATE_PROJS if getattr(attn, candidate_attr(p)) is not None)

  @property
  def has_candidates(self) -> bool:
    return bool(self.candidate_projs)

  def __call__(self, tokens, positions, *, order=None, valid=None, candidate_index=None,
               prefix: Prefix | None = None, cache: KVCache | None = None,
               attn: AttnOptions = AttnOptions(), scan: ScanOptions = ScanOptions(),
               logits: str | None = "all", return_kv: bool = False,
               private=None) -> ForwardOutput:
    """Runs the decoder on tokens [B,T] at RoPE positions [B,T].

    order: [B,T] mask order (default: positions); key j is visible to query i
      when valid[j] and order[j] <= order[i]. valid: [B,T] bool (default all).
    candidate_index: [B] int, the one token per row that uses the candidate
      projections (-1 or out of range: none), or [B, M]: M such tokens per row.
    private: [B,T] bool, tokens whose keys only they themselves see (no other
      token attends to them; FocusLLM's batched exact pass). Not with a cache.
    prefix: extra keys before the tokens (FocusLLM memory).
    cache: KVCache; the tokens' keys are written at cache.index and attention
      runs over the whole cache.
    attn: AttnOptions (blocking, SelfExtend); scan: ScanOptions (layer gather, remat).
    logits: "all", "last" (the last position of each row) or None.
    """
    if candidate_index is not None and not self.has_candidates:
      raise ValueError("candidate_index given but the model has no candidate projections "
                       "(focus_jax.model.add_candidates)")
    ctx = make_context(self.config, positions, order=order, valid=valid,
                       candidate_index=candidate_index, prefix=prefix, cache=cache, attn=attn,
                       private=private)
    x, new_kv, kv = self.model(tokens, ctx, prefix, cache, return_kv, scan)
    new_cache = None
    if cache is not None:  # the cache's slots are the last ones of the key arrays
      tail = lambda a: a[:, a.shape[1] - cache.pos.shape[1]:]
      new_cache = KVCache(new_kv[0], new_kv[1], tail(ctx.k_pos), tail(ctx.k_order),
                          tail(ctx.k_valid), cache.index + tokens.shape[1])
    out = None
    if logits is not None:
      out = self.unembed(x if logits == "all" else x[:, -1:])
    return ForwardOutput(out, x, new_cache, kv)


def add_candidates(model: LlamaForCausalLM, projs=CANDIDATE_PROJS) -> LlamaForCausalLM:
  """Adds candidate projections (CandidateParam) as copies of the chosen q/k/v/o; in place."""
  bad = set(projs) - set(CANDIDATE_PROJS)
  if bad or not projs:
    raise ValueError(f"candidate projections must be a non-empty subset of {CANDIDATE_PROJS}")
  attn = model.model.layers.self_attn
  for p in projs:
    setattr(attn, candidate_attr(p), getattr(attn, f"{p}_proj").copy_as(CandidateParam))
  return model


def remove_candidates(model: LlamaForCausalLM) -> LlamaForCausalLM:
  """Drops every candidate projection; in place."""
  for p in CANDIDATE_PROJS:
    setattr(model.model.layers.self_attn, candidate_attr(p), None)
  return model


def device_put(model, sharding=None):
  """The model with its arrays placed by `jax.device_put` (numpy -> device arrays)."""
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.device_put(state, sharding))


def param_count(tree) -> int:
  """Number of numbers in a module, a State or any pytree of arrays."""
  if isinstance(tree, nnx.Module):
    tree = nnx.state(tree)
  return int(sum(x.size for x in jax.tree.leaves(tree)))
