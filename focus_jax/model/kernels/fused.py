"""Vendor flash kernels for the plain causal mask: cuDNN (GPU) and splash attention (TPU).

Both take rotated, scaled q [B,T,H,hd] and rotated k, v [B,S,KV,hd] whose
first T keys are the queries' own tokens, and `lengths` [B]: keys
[0, lengths) are valid, the rest padding (`plain_causal` says when the
project's order/validity mask is exactly this). Key j is then visible to
query i when j <= i and j < lengths, as in the reference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def plain_causal(q_order, k_order, k_valid):
  """[] bool: the mask is causal over the first T keys with valid keys a prefix of each row.

  That is: k_order[:, :T] == q_order, q_order strictly increasing, k_valid[b]
  True exactly on [0, lengths[b]) with 1 <= lengths[b] <= T.
  Returns (ok, lengths [B] int32).
  """
  t, s = q_order.shape[1], k_order.shape[1]
  lengths = jnp.sum(k_valid, axis=1, dtype=jnp.int32)
  if s < t:
    return jnp.asarray(False), lengths
  same = jnp.all(k_order[:, :t] == q_order)
  rising = jnp.all(q_order[:, 1:] > q_order[:, :-1])
  prefix = jnp.all(k_valid == (jnp.arange(s)[None, :] < lengths[:, None]))
  sized = jnp.all((lengths >= 1) & (lengths <= t))
  return same & rising & prefix & sized, lengths


def cudnn_attention(q, k, v, lengths, *, implementation="cudnn"):
  """jax.nn.dot_product_attention over the first T keys, causal, keys [0, lengths) valid.

  implementation="xla" runs the same call through XLA (how CPU tests check it).
  """
  t = q.shape[1]
  out = jax.nn.dot_product_attention(
      q, k[:, :t].astype(q.dtype), v[:, :t].astype(q.dtype), scale=1.0, is_causal=True,
      query_seq_lengths=jnp.full((q.shape[0],), t, jnp.int32),
      key_value_seq_lengths=lengths.astype(jnp.int32), implementation=implementation)
  return out.astype(q.dtype)


def _splash_block(n: int) -> int:
  for size in (512, 256, 128):
    if n % size == 0:
      return size
  return 128


def _splash_kernel(heads: int, length: int, block: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as sk, splash_attention_mask as sm)
  mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  return sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes,
                            interpret=interpret)


def splash_attention(q, k, v, lengths, *, interpret=False):
  """Splash attention (a causal mask class, padding as segment ids) over the first T keys."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  b, t, h, hd = q.shape
  g = h // k.shape[2]
  tp = -(-t // 128) * 128
  pad = lambda x: jnp.pad(x[:, :t], ((0, 0), (0, tp - t), (0, 0), (0, 0)))
  heads_major = lambda x: jnp.repeat(pad(x), g, axis=2).transpose(0, 2, 1, 3)  # [B,H,tp,hd]
  qh = pad(q).transpose(0, 2, 1, 3)
  kh, vh = heads_major(k.astype(q.dtype)), heads_major(v.astype(q.dtype))
  kernel = _splash_kernel(h, tp, _splash_block(tp), interpret)
  q_ids = jnp.ones((b, tp), jnp.int32)
  kv_ids = (jnp.arange(tp)[None, :] < lengths[:, None]).astype(jnp.int32)
  out = jax.vmap(lambda qq, kk, vv, qi, ki: kernel(qq, kk, vv, segment_ids=sk.SegmentIds(qi, ki)))(
      qh, kh, vh, q_ids, kv_ids)
  return out.transpose(0, 2, 1, 3)[:, :t].astype(q.dtype)


__all__ = ["CUDNN_DTYPES", "cudnn_attention", "plain_causal", "splash_attention"]
