"""Rotary position embeddings in Hugging Face's split-half layout.

`inv_frequencies` reproduces transformers' `default`, `linear`, `dynamic` and
`llama3` initialisers; `apply_rope` is pure and takes explicit positions, so
one function serves ordinary, restarted (FocusLLM chunks) and grouped
(SelfExtend) positions.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from focus_jax.config import ModelConfig


def _base_inv_freq(theta: float, dim: int) -> np.ndarray:
  return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))


def inv_frequencies(cfg: ModelConfig, seq_len=None):
  """Inverse frequencies [head_dim // 2] (float32).

  `seq_len` (may be traced) only matters for `dynamic`: like transformers on a
  fresh model, the base grows when seq_len exceeds max_position_embeddings.
  `linear` scaling is folded into the frequencies (positions / factor).
  """
  r, dim = cfg.rope, cfg.head_dim
  if r.rope_type == "default":
    return jnp.asarray(_base_inv_freq(r.theta, dim))
  if r.rope_type == "linear":
    return jnp.asarray(_base_inv_freq(r.theta, dim) / np.float32(r.factor))
  if r.rope_type == "dynamic":
    max_pos = cfg.max_position_embeddings
    sl = jnp.maximum(jnp.asarray(max_pos if seq_len is None else seq_len, jnp.float32), max_pos)
    base = r.theta * ((r.factor * sl / max_pos) - (r.factor - 1)) ** (dim / (dim - 2))
    expo = jnp.asarray(np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim)
    return 1.0 / (base ** expo)
  if r.rope_type == "llama3":
    inv = _base_inv_freq(r.theta, dim)
    low_wl = r.original_max_position_embeddings / r.low_freq_factor
    high_wl = r.original_max_position_embeddings / r.high_freq_factor
    wavelen = 2 * math.pi / inv
    inv_l = np.where(wavelen > low_wl, inv / r.factor, inv)
    smooth = (r.original_max_position_embeddings / wavelen - r.low_freq_factor) / (
        r.high_freq_factor - r.low_freq_factor)
    smoothed = (1 - smooth) * inv_l / r.factor + smooth * inv_l
    is_medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return jnp.asarray(np.where(is_medium, smoothed, inv_l).astype(np.float32))
  raise ValueError(f"unsupported rope type {r.rope_type!r}")


def apply_rope(x, positions, inv_freq):
  """Rotates x [..., T, heads, head_dim] by integer positions [..., T]."""
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., T, hd/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[..., None, :]  # [..., T, 1, hd]
  cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin
