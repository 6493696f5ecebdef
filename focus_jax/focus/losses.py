"""FocusLLM training losses (continuation and repetition share one computation).

A task (see focus_jax.data.samples) has left-padded chunk rows whose last
token is the candidate, a left-padded local input and K target tokens. Its loss:
  memory[i] = per-layer pre-RoPE K/V of row i's candidate (candidate projections),
  local     = the plain model on the local input with the memory in front
              (memory positions 0..n-1, order -1; local positions n, n+1, ...),
  loss      = mean cross-entropy of the last K local positions on the targets.

Only the CandidateParam variables train. No token before a candidate uses the
candidate projections, so with `stop_gradient_prefix` the rows run in two
parts: every token but the candidate without gradient (its K/V become a
prefix), then the candidate alone with gradient. The gradient is exactly the
one of full back-propagation (`stop_gradient_prefix=False`), at a fraction of
the cost: the backward pass covers only the candidates and the local input.
With `fused` both parts run in one layer scan (core.fused_candidates), so the
rows' prefix K/V is never whole in memory; `fused_groups` picks what its
backward pass keeps (see there).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from flax import nnx

from focus_jax.focus.core import (chunk_prefix, chunk_step, fused_candidates, memory_prefix,
                                  row_positions)
from focus_jax.data.samples import LOSS_NAMES
from focus_jax.model import CandidateParam, ScanOptions


def split_model(model):
  """(graphdef, trainable candidate State, frozen State): `nnx.split` by variable type.

  CandidateParam is split off first: the `...` filter would also match it.
  `nnx.merge(graphdef, candidate, frozen)` rebuilds the model.
  """
  if not model.has_candidates:
    raise KeyError("the model has no candidate projections; call "
                   "focus_jax.model.add_candidates(model) first")
  return nnx.split(model, CandidateParam, ...)


def candidate_memory(model, tokens, valid, *, stop_gradient_prefix: bool = True,
                     fused: bool = False, fused_groups: int = 0,
                     scan: ScanOptions = ScanOptions()):
  """Per-layer pre-RoPE K/V of each row's candidate (its last token).

  tokens, valid: [R, C] LEFT-padded rows (focus.plan layout). Fully invalid
  rows give meaningless entries that must be masked.
  With stop_gradient_prefix: core.chunk_prefix (no gradient) + core.chunk_step
  of the candidate alone (fused: both in one layer scan, core.fused_candidates
  with groups=fused_groups); otherwise one forward over the whole rows.
  Returns (k, v), each [L, R, KV, hd].
  """
  r, c = tokens.shape
  if not stop_gradient_prefix:
    k, v = model(tokens, row_positions(valid), valid=valid,
                 candidate_index=jnp.full((r,), c - 1, jnp.int32), logits=None,
                 return_kv=True, scan=scan).kv
    return k[:, :, -1], v[:, :, -1]
  if fused:
    return fused_candidates(model, tokens, valid, groups=fused_groups, scan=scan)
  cache = jax.lax.stop_gradient(chunk_prefix(model, tokens, valid, c - 1, scan=scan))
  k, v, _ = chunk_step(model, cache, tokens[:, -1:], valid[:, -1:], scan=scan)
  return k, v


def local_losses(model, mem_k, mem_v, n_memory, local_tokens, local_valid, targets, *,
                 bos_sees_memory: bool = True, scan: ScanOptions = ScanOptions()):
  """Cross-entropy per task of the local input attending to the memory.

  core.local_forward's layout, with logits only at the last K positions.
  bos_sees_memory=False (not the official layout): the first local token (BOS)
  does not attend to the memory (entries get mask order n + 1); positions unchanged.
  mem_k, mem_v: [L, N, R, KV, hd] (rows >= n_memory are padding); n_memory [N];
  local_tokens, local_valid: [N, Lq] left-padded; targets [N, K].
  Returns [N] float32: mean over the K targets.
  """
  rows = mem_k.shape[2]
  kk = targets.shape[1]
  prefix, n_valid = memory_prefix(mem_k, mem_v, jnp.arange(rows)[None, :] < n_memory[:, None],
                                  bos_sees_memory=bos_sees_memory)
  out = model(local_tokens, row_positions(local_valid, n_valid), valid=local_valid,
              prefix=prefix, logits=None, scan=scan)
  logits = model.unembed(out.hidden[:, -kk:])
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return nll.mean(axis=1)


def task_losses(model, batch: dict, *, stop_gradient_prefix: bool = True,
                route: Callable | None = None, bos_sees_memory: bool = True,
                fused: bool = False, fused_groups: int = 0, scan: ScanOptions = ScanOptions()):
  """Per-task losses of one micro-batch.

  batch: chunk_tokens [N,T,R,C], chunk_valid, local_tokens [N,T,Lq],
  local_valid, targets [N,T,K], n_memory [N,T], kind [N,T] (data.pad_tasks).
  route: optional `(mem_k, mem_v, local) -> (mem_k, mem_v, local)` applied
  between the chunks and the local inputs, where mem_k, mem_v are
  [L, N*T, R, KV, hd] and `local` holds the per-task arrays flattened to N*T
  (n_memory, local_tokens, local_valid, targets, kind); under shard_map it
  collects the memory rows of the other chunk devices and may keep a share
  of the tasks.
  bos_sees_memory: see local_losses; fused, fused_groups: see candidate_memory; scan:
  the layer scan's options (model.ScanOptions).
  Returns (ce [M] float32, kind [M]) for the M tasks kept (N*T without route).
  """
  n, t, r, c = batch["chunk_tokens"].shape
  mk, mv = candidate_memory(model, batch["chunk_tokens"].reshape(n * t * r, c),
                            batch["chunk_valid"].reshape(n * t * r, c),
                            stop_gradient_prefix=stop_gradient_prefix, fused=fused,
                            fused_groups=fused_groups, scan=scan)
  mk = mk.reshape(mk.shape[0], n * t, r, *mk.shape[2:])
  mv = mv.reshape(mv.shape[0], n * t, r, *mv.shape[2:])
  local = {k: batch[k].reshape((n * t,) + batch[k].shape[2:])
           for k in ("n_memory", "local_tokens", "local_valid", "targets", "kind")}
  if route is not None:
    mk, mv, local = route(mk, mv, local)
  ce = local_losses(model, mk, mv, local["n_memory"], local["local_tokens"],
                    local["local_valid"], local["targets"], bos_sees_memory=bos_sees_memory,
                    scan=scan)
  return ce, local["kind"]


def loss_sums(ce, kind) -> dict:
  """Sums and counts of the per-task losses, overall and per loss kind (0, 1)."""
  out = {"loss_sum": ce.sum(), "count": jnp.asarray(ce.size, jnp.float32)}
  for i, name in enumerate(LOSS_NAMES):
    sel = kind == i
    out[f"{name}_sum"] = jnp.where(sel, ce, 0.0).sum()
    out[f"{name}_count"] = sel.sum().astype(jnp.float32)
  return out
