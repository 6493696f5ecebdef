"""Memory-bounded attention with explicit positions and an order/validity mask.

Every path of the project calls this one function. A key j is visible to a
query i when `k_valid[j] and k_order[j] <= q_order[i]`; RoPE uses the separate
`q_pos` / `k_pos`. This expresses causal attention, left padding, a KV cache
and FocusLLM's memory prefix (order -1: visible to every query) without ever
materialising an [L, L] mask.

Queries and keys are cut into blocks; each query block runs an online softmax
over the key blocks and skips blocks with no visible key, so memory is
O(L * block) and a causal pass does about half the work of a dense one.

Private keys: with `q_seg` / `k_seg` ([B,T] / [B,S] int), a key whose segment
is not 0 is visible only to queries of the same segment (on top of the order
rule): FocusLLM's batched exact pass gives every candidate its own segment,
so each one sees itself and no other token sees it.

SelfExtend: with `selfextend=(G, W)` the logit of (i, j) uses ordinary RoPE
when q_pos - k_pos < W and grouped RoPE (keys at k_pos // G, queries at
q_pos // G + W - W // G) beyond, inside the same softmax.

Kernels: `attention` is the one entry point. It runs `blockwise_attention`
(the pure-JAX reference above, the CPU default) or a kernel of
focus_jax.model.kernels chosen per backend and mask kind (`kernel`, or the
process default `set_default_attention`, e.g. launchers' --attention):
"auto" takes cuDNN / Pallas on GPU and splash on TPU. Kernels get the same
rotated, scaled q/k (`rotated`); a Pallas kernel's gradient is the
reference's (a custom VJP), the fused kernels' their own.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from focus_jax.model import kernels
from focus_jax.model.kernels import fused
from focus_jax.model.rope import apply_rope

NEG_INF = -1e30


def _pad_axis(x, axis, size, value=0):
  pad = size - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _blocks(x, axis, n):
  """[B, n*b, ...] -> [n, B, b, ...] along `axis` (1)."""
  shape = x.shape[:axis] + (n, x.shape[axis] // n) + x.shape[axis + 1:]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def rotated(q, k, q_pos, k_pos, inv_freq, selfextend=None):
  """RoPE'd, scaled queries and RoPE'd keys: ([q], [k]), or SelfExtend's two sets of each."""
  scale = q.shape[-1] ** -0.5
  qs = [apply_rope(q, q_pos, inv_freq) * jnp.asarray(scale, q.dtype)]
  ks = [apply_rope(k, k_pos, inv_freq)]
  if selfextend is not None:
    gs, w = selfextend
    qs.append(apply_rope(q, q_pos // gs + (w - w // gs), inv_freq) * jnp.asarray(scale, q.dtype))
    ks.append(apply_rope(k, k_pos // gs, inv_freq))
  return qs, ks


def blockwise_attention(q, k, v, q_pos, k_pos, q_order, k_order, k_valid, inv_freq, *,
              selfextend=None, block_q=256, block_k=256, dense_max=512 * 1024,
              q_seg=None, k_seg=None):
  """The reference: attention of pre-RoPE q [B,T,H,hd] over pre-RoPE k, v [B,S,KV,hd].

  q_pos, q_order: [B,T] int; k_pos, k_order: [B,S] int; k_valid: [B,S] bool.
  q_seg, k_seg: optional [B,T] / [B,S] int segments (private keys, above); both or none.
  Returns [B,T,H,hd] in q's dtype. Rows with no visible key return zeros; a NaN
  score stays NaN in its row.
  """
  b, t, h, hd = q.shape
  s, kvh = k.shape[1], k.shape[2]
  g = h // kvh
  qs, ks = rotated(q, k, q_pos, k_pos, inv_freq, selfextend)

  if t * s <= dense_max:
    bq, bk = t, s
  else:
    bq, bk = min(block_q, t), min(block_k, s)
  nq, nk = -(-t // bq), -(-s // bk)
  # head-major layouts, so every block product is a plain batched matmul
  def q_blocks(x):  # [B,T,H,hd] -> [nq, B, KV, G, bq, hd]
    x = _pad_axis(x, 1, nq * bq).reshape(b, nq, bq, kvh, g, hd)
    return x.transpose(1, 0, 3, 4, 2, 5)

  def k_blocks(x):  # [B,S,KV,hd] -> [nk, B, KV, bk, hd]
    return _pad_axis(x, 1, nk * bk).reshape(b, nk, bk, kvh, hd).transpose(1, 0, 3, 2, 4)

  qs = [q_blocks(x) for x in qs]
  qp = _blocks(_pad_axis(q_pos, 1, nq * bq), 1, nq)
  qo = _blocks(_pad_axis(q_order, 1, nq * bq, -2**30), 1, nq)
  ks = [k_blocks(x) for x in ks]
  vb = k_blocks(v)
  kp = _blocks(_pad_axis(k_pos, 1, nk * bk), 1, nk)
  ko = _blocks(_pad_axis(k_order, 1, nk * bk), 1, nk)
  kv_ = _blocks(_pad_axis(k_valid, 1, nk * bk, False), 1, nk)
  if (q_seg is None) != (k_seg is None):
    raise ValueError("q_seg and k_seg go together")
  qsg = None if q_seg is None else _blocks(_pad_axis(q_seg, 1, nq * bq), 1, nq)
  ksg = None if k_seg is None else _blocks(_pad_axis(k_seg, 1, nk * bk), 1, nk)

  def kv_step(qblk, carry, kblk):
    q_list, q_p, q_o, q_s = qblk
    m, l, acc = carry
    k_list, v_b, k_p, k_o, k_ok, k_s = kblk
    allowed = k_ok[:, None, :] & (k_o[:, None, :] <= q_o[:, :, None])  # [B,bq,bk]
    if k_s is not None:
      allowed &= (k_s[:, None, :] == 0) | (k_s[:, None, :] == q_s[:, :, None])

    def compute(_):
      def logits(qx, kx):
        if qx.shape[3] == 1:
          # One query per row (decoding): a fused multiply-sum. As a dot, XLA:CPU transposes
          # the freshly rotated keys to [hd, S] first, 3-7x slower over a long cache.
          return (qx[:, :, :, :, None, :] * kx[:, :, None, None]).sum(-1, dtype=jnp.float32)
        return jnp.einsum("bkgqd,bksd->bkgqs", qx, kx, preferred_element_type=jnp.float32)
      if selfextend is None:
        sc = logits(q_list[0], k_list[0])
      else:
        near = (q_p[:, :, None] - k_p[:, None, :]) < selfextend[1]  # [B,bq,bk]
        # A block wholly inside (or wholly beyond) the neighbour window needs one product.
        sc = jax.lax.switch(
            jnp.where(near.all(), 0, jnp.where(near.any(), 2, 1)),
            [lambda: logits(q_list[0], k_list[0]), lambda: logits(q_list[1], k_list[1]),
             lambda: jnp.where(near[:, None, None], logits(q_list[0], k_list[0]),
                               logits(q_list[1], k_list[1]))])
      sc = jnp.where(allowed[:, None, None], sc, NEG_INF)
      m_new = jnp.maximum(m, sc.max(-1))
      p = jnp.exp(sc - m_new[..., None])
      corr = jnp.exp(m - m_new)
      l_new = l * corr + p.sum(-1)
      pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(v_b.dtype), v_b,
                      preferred_element_type=jnp.float32)
      return m_new, l_new, acc * corr[..., None] + pv

    if nk == 1:
      return compute(None), None
    return jax.lax.cond(allowed.any(), compute, lambda _: (m, l, acc), None), None

  def q_step(qblk):
    init = (jnp.full((b, kvh, g, bq), NEG_INF, jnp.float32),
            jnp.zeros((b, kvh, g, bq), jnp.float32),
            jnp.zeros((b, kvh, g, bq, hd), jnp.float32))
    step = jax.checkpoint(functools.partial(kv_step, qblk))
    if nk == 1:
      (m, l, acc), _ = step(init, jax.tree.map(lambda x: x[0], (ks, vb, kp, ko, kv_, ksg)))
    else:
      (m, l, acc), _ = jax.lax.scan(step, init, (ks, vb, kp, ko, kv_, ksg))
    # A row with no visible key keeps m = NEG_INF and returns exact zeros; a NaN score
    # makes m NaN, and the NaN must come out, not turn into a zero row.
    seen = ~(m <= NEG_INF / 2)
    return jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)

  if nq == 1:
    out = q_step(jax.tree.map(lambda x: x[0], (qs, qp, qo, qsg)))[None]
  else:
    out = jax.lax.map(q_step, (qs, qp, qo, qsg))  # [nq, B, KV, G, bq, hd]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, nq * bq, h, hd)[:, :t]
  return out.astype(q.dtype)


_DEFAULT = ["auto"]


def set_default_attention(name: str) -> None:
  """The kernel that `kernel="auto"` calls take (launchers' --attention); "auto": per backend.

  Read when a function is traced: set it before the first jitted call.
  """
  _DEFAULT[0] = kernels.check_name(name)


def default_attention() -> str:
  return _DEFAULT[0]


def _with_reference_grad(fast, reference):
  """`fast` in the forward pass, the reference's VJP in the backward pass."""
  f = jax.custom_vjp(fast)
  f.defvjp(lambda *a: (fast(*a), a), lambda a, g: jax.vjp(reference, *a)[1](g))
  return f


def attention(q, k, v, q_pos, k_pos, q_order, k_order, k_valid, inv_freq, *,
              selfextend=None, block_q=256, block_k=256, dense_max=512 * 1024,
              q_seg=None, k_seg=None, kernel="auto"):
  """Attention of pre-RoPE q [B,T,H,hd] over pre-RoPE k, v [B,S,KV,hd] (the one entry point).

  Arguments and result as `blockwise_attention`; kernel: a
  focus_jax.model.kernels name ("auto": `default_attention()`, which is
  "auto" unless set: per backend; "reference": `blockwise_attention`).
  """
  if (q_seg is None) != (k_seg is None):
    raise ValueError("q_seg and k_seg go together")
  name = default_attention() if kernel == "auto" else kernels.check_name(kernel)
  backend = jax.default_backend()
  primary, fallback = kernels.choose(
      name, backend, dtype=q.dtype, t=q.shape[1], s=k.shape[1], head_dim=q.shape[-1],
      selfextend=selfextend is not None, segments=q_seg is not None)
  reference = functools.partial(blockwise_attention, selfextend=selfextend, block_q=block_q,
                                block_k=block_k, dense_max=dense_max)
  interpret = backend == "cpu"

  def run(which):
    if which == "reference":
      return lambda *a: reference(*a[:9], q_seg=a[9], k_seg=a[10])
    if which == "pallas":
      def fast(q, k, v, q_pos, k_pos, q_order, k_order, k_valid, inv_freq, q_seg, k_seg):
        qs, ks = rotated(q, k, q_pos, k_pos, inv_freq, selfextend)
        return kernels.flash_attention(
            qs, ks, v, q_pos, k_pos, q_order, k_order, k_valid, q_seg, k_seg,
            window=None if selfextend is None else selfextend[1],
            block_q=min(block_q, 128), block_k=min(block_k, 64), interpret=interpret)
      return _with_reference_grad(fast, run("reference"))

    def fused_call(q, k, v, q_pos, k_pos, q_order, k_order, k_valid, inv_freq, q_seg, k_seg):
      (qr,), (kr,) = rotated(q, k, q_pos, k_pos, inv_freq)
      lengths = jnp.sum(k_valid, axis=1, dtype=jnp.int32)
      if which == "cudnn":
        return kernels.cudnn_attention(qr, kr, v, lengths)
      return kernels.splash_attention(qr, kr, v, lengths, interpret=interpret)
    return fused_call

  args = (q, k, v, q_pos, k_pos, q_order, k_order, k_valid, inv_freq, q_seg, k_seg)
  if fallback is None:
    return run(primary)(*args)
  ok, _ = fused.plain_causal(q_order, k_order, k_valid)
  return jax.lax.cond(ok, run(primary), run(fallback), *args)
