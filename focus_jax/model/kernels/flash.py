"""A Pallas flash-attention kernel for the project's general mask.

One program per (batch row, query head, query block) runs an online softmax
over the key blocks, skipping blocks with no visible key, with the same
visibility rule as the reference (focus_jax.model.attention):

  key j is visible to query i when k_valid[j] and k_order[j] <= q_order[i]
  (and, with segments, k_seg[j] == 0 or k_seg[j] == q_seg[i]).

Its inputs are already rotated and scaled (one set of q / k, or SelfExtend's
two: neighbour RoPE where q_pos - k_pos < window, grouped RoPE beyond), so
the kernel is RoPE-agnostic. Softmax statistics and accumulation are float32
whatever the input dtype. Only generic Pallas operations are used: the same
kernel lowers through Triton on GPU and runs with `interpret=True` on CPU
(how the test suite checks it against the reference).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

NEG_INF = -1e30   # the reference's masked logit and initial running maximum
MIN_BLOCK = 16    # Triton's smallest matmul tile


def _block(n: int, cap: int) -> int:
  """A power-of-two block of at most `cap` (and at least MIN_BLOCK) covering n if it can."""
  size = MIN_BLOCK
  while size < n and size < cap:
    size *= 2
  return size


def _pad(x, size, value=0):
  pad = size - x.shape[1]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _dot(a, b, b_contract, precision):
  """a [m, k] . b ([n, k] with b_contract=1, [k, n] with 0) -> [m, n] float32."""
  return jax.lax.dot_general(a, b, (((1,), (b_contract,)), ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)


def _kernel(*refs, n_sets, n_kblocks, block_k, window, segments, precision):
  q_refs, k_refs = refs[:n_sets], refs[n_sets:2 * n_sets]
  v_ref, qp_ref, qo_ref, kp_ref, ko_ref, kv_ref = refs[2 * n_sets:2 * n_sets + 6]
  rest = refs[2 * n_sets + 6:]
  qs_ref = ks_ref = None
  if segments:
    qs_ref, ks_ref, rest = rest[0], rest[1], rest[2:]
  (o_ref,) = rest
  qb = [r[...] for r in q_refs]
  q_o, q_p = qo_ref[...], qp_ref[...]
  q_s = None if qs_ref is None else qs_ref[...]
  bq, hd = qb[0].shape

  def body(j, carry):
    m, l, acc = carry
    sl = pl.ds(j * block_k, block_k)
    allowed = (kv_ref[sl] != 0)[None, :] & (ko_ref[sl][None, :] <= q_o[:, None])
    if segments:
      k_s = ks_ref[sl]
      allowed &= (k_s[None, :] == 0) | (k_s[None, :] == q_s[:, None])

    def compute(_):
      logits = lambda i: _dot(qb[i], k_refs[i][sl, :], 1, precision)
      sc = logits(0)
      if window is not None:
        near = (q_p[:, None] - kp_ref[sl][None, :]) < window
        sc = jnp.where(near, sc, logits(1))
      sc = jnp.where(allowed, sc, NEG_INF)
      m_new = jnp.maximum(m, sc.max(-1))
      p = jnp.exp(sc - m_new[:, None])
      corr = jnp.exp(m - m_new)
      v = v_ref[sl, :]
      pv = _dot(p.astype(v.dtype), v, 0, precision)
      return m_new, l * corr + p.sum(-1), acc * corr[:, None] + pv

    any_key = jnp.max(allowed.astype(jnp.int32)) > 0   # (no boolean reductions in Triton)
    return jax.lax.cond(any_key, compute, lambda _: (m, l, acc), None)

  init = (jnp.full((bq,), NEG_INF, jnp.float32), jnp.zeros((bq,), jnp.float32),
          jnp.zeros((bq, hd), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, n_kblocks, body, init)
  # As the reference: a row with no visible key returns zeros, a NaN stays NaN.
  seen = ~(m <= NEG_INF / 2)
  out = jnp.where(seen[:, None], acc / jnp.where(seen, l, 1.0)[:, None], 0.0)
  o_ref[...] = out.astype(o_ref.dtype)


def flash_attention(qs, ks, v, q_pos, k_pos, q_order, k_order, k_valid, q_seg=None,
                    k_seg=None, *, window=None, block_q=128, block_k=64, interpret=False):
  """Attention of rotated, scaled queries over rotated keys (see the module docstring).

  qs: 1 or 2 arrays [B,T,H,hd] (2: SelfExtend's neighbour and grouped sets, with
  `window`); ks: as many [B,S,KV,hd]; v: [B,S,KV,hd]; q_pos, q_order [B,T];
  k_pos, k_order, k_valid [B,S]; q_seg, k_seg: optional [B,T] / [B,S].
  Returns [B,T,H,hd] in the queries' dtype.
  """
  n_sets = len(qs)
  if n_sets != len(ks) or n_sets != (1 if window is None else 2):
    raise ValueError("one q/k set, or two with a SelfExtend window")
  b, t, h, hd = qs[0].shape
  s, kvh = ks[0].shape[1], ks[0].shape[2]
  g = h // kvh
  bq, bk = _block(t, block_q), _block(s, block_k)
  tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
  i32 = lambda x: x.astype(jnp.int32)
  qs = [_pad(x, tp) for x in qs]
  ks = [_pad(x, sp) for x in ks]
  v = _pad(v, sp)
  q_vecs = [_pad(i32(q_pos), tp), _pad(i32(q_order), tp, -2**30)]
  k_vecs = [_pad(i32(k_pos), sp), _pad(i32(k_order), sp), _pad(i32(k_valid), sp)]
  segments = q_seg is not None
  seg_vecs = [_pad(i32(q_seg), tp), _pad(i32(k_seg), sp)] if segments else []

  q_spec = pl.BlockSpec((None, bq, None, hd), lambda bi, hi, qi: (bi, qi, hi, 0))
  k_spec = pl.BlockSpec((None, sp, None, hd), lambda bi, hi, qi: (bi, 0, hi // g, 0))
  qv_spec = pl.BlockSpec((None, bq), lambda bi, hi, qi: (bi, qi))
  kv_spec = pl.BlockSpec((None, sp), lambda bi, hi, qi: (bi, 0))
  in_specs = ([q_spec] * n_sets + [k_spec] * (n_sets + 1) + [qv_spec] * 2 + [kv_spec] * 3
              + ([qv_spec, kv_spec] if segments else []))
  precision = jax.lax.Precision.HIGHEST if qs[0].dtype == jnp.float32 else None
  kernel = functools.partial(_kernel, n_sets=n_sets, n_kblocks=sp // bk, block_k=bk,
                             window=window, segments=segments, precision=precision)
  out = pl.pallas_call(
      kernel, grid=(b, h, tp // bq), in_specs=in_specs, out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct((b, tp, h, hd), qs[0].dtype), interpret=interpret,
      name="focus_flash_attention",
  )(*qs, *ks, v, *q_vecs[:1], q_vecs[1], *k_vecs, *seg_vecs)
  return out[:, :t]
