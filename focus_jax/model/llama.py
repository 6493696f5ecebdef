"""The LLaMA decoder as one pure function over a parameter pytree.

Layout (weights [in, out], layers stacked on a leading axis, scanned):
  embed [V,D]; layers.{attn_norm, q, k, v, o, mlp_norm, gate, up, down, *_bias};
  final_norm [D]; lm_head [D,V] (absent when embeddings are tied);
  candidate.{q, k, v, o, *_bias}: FocusLLM's candidate projections (optional).

`forward` takes explicit positions (for RoPE), an order/validity mask (see
attention.py), an optional prefix of extra keys/values (FocusLLM memory), an
optional KV cache and the index of one candidate token per row. Keys and
values are kept before RoPE everywhere, so a cache or a memory can be placed
at any positions later.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.config import CANDIDATE_PROJS, ModelConfig
from focus_jax.model.attention import attention
from focus_jax.model.rope import inv_frequencies


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


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=None) -> KVCache:
  dtype = dtype or cfg.dtype
  shape = (cfg.num_layers, batch, size, cfg.num_kv_heads, cfg.head_dim)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                 jnp.zeros((batch, size), jnp.int32), jnp.zeros((batch, size), jnp.int32),
                 jnp.zeros((batch, size), bool), jnp.zeros((), jnp.int32))


def _shapes(cfg: ModelConfig) -> dict:
  d, hq, hk, i, n = (cfg.hidden_size, cfg.num_heads * cfg.head_dim,
                     cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size, cfg.num_layers)
  layers = {"attn_norm": (n, d), "q": (n, d, hq), "k": (n, d, hk), "v": (n, d, hk),
            "o": (n, hq, d), "mlp_norm": (n, d), "gate": (n, d, i), "up": (n, d, i),
            "down": (n, i, d)}
  if cfg.attention_bias:
    layers.update(q_bias=(n, hq), k_bias=(n, hk), v_bias=(n, hk), o_bias=(n, d))
  if cfg.mlp_bias:
    layers.update(gate_bias=(n, i), up_bias=(n, i), down_bias=(n, d))
  out = {"embed": (cfg.vocab_size, d), "layers": layers, "final_norm": (d,)}
  if not cfg.tie_word_embeddings:
    out["lm_head"] = (d, cfg.vocab_size)
  return out


def init_params(cfg: ModelConfig, key, std: float = 0.02) -> dict:
  """Random parameters (normal weights, unit norms, zero biases)."""
  shapes = _shapes(cfg)
  flat, tree = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(key, len(flat))
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree.flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
  leaves = []
  for k, shape, path in zip(keys, flat, paths):
    if "norm" in path:
      leaves.append(jnp.ones(shape, cfg.pdtype))
    elif "bias" in path:
      leaves.append(jnp.zeros(shape, cfg.pdtype))
    else:
      leaves.append((std * jax.random.normal(k, shape)).astype(cfg.pdtype))
  return jax.tree.unflatten(tree, leaves)


def add_candidate_params(params: dict, projs=CANDIDATE_PROJS) -> dict:
  """Returns params with `candidate` initialised as copies of the chosen projections."""
  layers = params["layers"]
  cand = {}
  for p in projs:
    cand[p] = jnp.array(layers[p], copy=True)
    if f"{p}_bias" in layers:
      cand[f"{p}_bias"] = jnp.array(layers[f"{p}_bias"], copy=True)
  return {**params, "candidate": cand}


def rms_norm(x, weight, eps):
  xf = x.astype(jnp.float32)
  xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return weight.astype(x.dtype) * xf.astype(x.dtype)


def _linear(x, w, b=None):
  y = jnp.einsum("...i,io->...o", x, w.astype(x.dtype))
  return y if b is None else y + b.astype(x.dtype)


def _proj(x, lp, cp, name, cand_onehot, cand_x):
  """Projection `name`; the candidate token (one per row) uses the candidate weights."""
  y = _linear(x, lp[name], lp.get(f"{name}_bias"))
  if cp is None or name not in cp:
    return y
  yc = _linear(cand_x, cp[name], cp.get(f"{name}_bias"))  # [B,1,out]
  return jnp.where(cand_onehot[..., None], yc, y)


def forward(params: dict, cfg: ModelConfig, tokens, positions, *, order=None, valid=None,
            candidate_index=None, prefix: Prefix | None = None, cache: KVCache | None = None,
            selfextend=None, logits: str | None = "all", return_kv: bool = False,
            stop_gradient_base: bool = False, block_q: int = 256, block_k: int = 256,
            dense_max: int = 512 * 1024):
  """Runs the decoder on tokens [B,T] at RoPE positions [B,T].

  order: [B,T] mask order (default: positions); valid: [B,T] bool (default all).
  candidate_index: [B] int, the one token per row that uses `params["candidate"]`
    (-1 or out of range: none). prefix: extra keys before the tokens.
  cache: KVCache; the tokens' keys are written at cache.index and attention runs
    over the whole cache. selfextend: (group_size, neighbor_window) or None.
  logits: "all", "last" (the last position of each row) or None.
  block_q, block_k, dense_max: attention blocking (dense when T * S <= dense_max).
  Returns dict(logits, hidden, cache (updated or None), kv=(k, v) [L,B,T,KV,hd]).
  """
  b, t = tokens.shape
  dt = cfg.dtype
  order = positions if order is None else order
  valid = jnp.ones((b, t), bool) if valid is None else valid
  cand = params.get("candidate") if candidate_index is not None else None
  if cand is not None:
    cand_onehot = jnp.arange(t)[None, :] == jnp.asarray(candidate_index)[:, None]  # [B,T]
    cand_idx = jnp.clip(jnp.asarray(candidate_index), 0, t - 1)
  else:
    cand_onehot = cand_idx = None

  max_pos = jnp.max(positions)
  if prefix is not None:
    max_pos = jnp.maximum(max_pos, jnp.max(prefix.pos))
  if cache is not None:
    max_pos = jnp.maximum(max_pos, jnp.max(jnp.where(cache.valid, cache.pos, 0)))
  inv_freq = inv_frequencies(cfg, max_pos + 1)

  if cache is not None:
    idx = cache.index
    c_pos = jax.lax.dynamic_update_slice(cache.pos, positions.astype(jnp.int32), (0, idx))
    c_ord = jax.lax.dynamic_update_slice(cache.order, order.astype(jnp.int32), (0, idx))
    c_val = jax.lax.dynamic_update_slice(cache.valid, valid, (0, idx))
    k_pos, k_ord, k_val = c_pos, c_ord, c_val
  else:
    k_pos, k_ord, k_val = positions, order, valid
  if prefix is not None:
    k_pos = jnp.concatenate([prefix.pos, k_pos], 1)
    k_ord = jnp.concatenate([prefix.order, k_ord], 1)
    k_val = jnp.concatenate([prefix.valid, k_val], 1)

  layers = params["layers"]
  base = jax.lax.stop_gradient(layers) if stop_gradient_base else layers
  x = jnp.take(params["embed"], tokens, axis=0).astype(dt)
  if stop_gradient_base:
    x = jax.lax.stop_gradient(x)
  hq, hk, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

  def layer(x, xs):
    lp, cp, pre, cch = xs
    h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
    hc = None if cp is None else jnp.take_along_axis(h, cand_idx[:, None, None], axis=1)
    q = _proj(h, lp, cp, "q", cand_onehot, hc).reshape(b, t, hq, hd)
    k = _proj(h, lp, cp, "k", cand_onehot, hc).reshape(b, t, hk, hd)
    v = _proj(h, lp, cp, "v", cand_onehot, hc).reshape(b, t, hk, hd)
    new_cache = None
    if cch is not None:
      ck = jax.lax.dynamic_update_slice(cch[0], k.astype(cch[0].dtype), (0, cache.index, 0, 0))
      cv = jax.lax.dynamic_update_slice(cch[1], v.astype(cch[1].dtype), (0, cache.index, 0, 0))
      keys, vals, new_cache = ck, cv, (ck, cv)
    else:
      keys, vals = k, v
    if pre is not None:
      keys = jnp.concatenate([pre[0].astype(keys.dtype), keys], 1)
      vals = jnp.concatenate([pre[1].astype(vals.dtype), vals], 1)
    a = attention(q, keys.astype(dt), vals.astype(dt), positions, k_pos, order, k_ord, k_val,
                  inv_freq, selfextend=selfextend, block_q=block_q, block_k=block_k,
                  dense_max=dense_max)
    a = a.reshape(b, t, hq * hd)
    ac = None if cp is None else jnp.take_along_axis(a, cand_idx[:, None, None], axis=1)
    x = x + _proj(a, lp, cp, "o", cand_onehot, ac)
    h = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps)
    gate = _linear(h, lp["gate"], lp.get("gate_bias"))
    up = _linear(h, lp["up"], lp.get("up_bias"))
    x = x + _linear(jax.nn.silu(gate) * up, lp["down"], lp.get("down_bias"))
    return x, (new_cache, (k, v) if return_kv else None)

  pre = None if prefix is None else (prefix.k, prefix.v)
  cch = None if cache is None else (cache.k, cache.v)
  x, (new_kv, kv) = jax.lax.scan(layer, x, (base, cand, pre, cch))
  x = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
  out = {"hidden": x, "kv": kv, "cache": None, "logits": None}
  if cache is not None:
    out["cache"] = KVCache(new_kv[0], new_kv[1], c_pos, c_ord, c_val, cache.index + t)
  if logits is not None:
    hsel = x if logits == "all" else x[:, -1:]
    head = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    out["logits"] = jnp.einsum("btd,dv->btv", hsel, head.astype(dt),
                               preferred_element_type=jnp.float32)
  return out


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
