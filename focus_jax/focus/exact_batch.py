"""Exact FocusLLM teacher forcing in one batched pass: K target logits at once.

Exact decoding (inference.py, "exact") with the targets y_0..y_{K-1} forced
predicts y_j from a memory whose chunks were extended by the forced tokens
u_0..u_j, u_0 = the prompt's last token, u_i = y_{i-1}: at step j every chunk
row holds its prefix (the row without its candidate), u_0..u_{j-1} as
ordinary tokens and u_j as the candidate; the local input is
BOS ++ local ++ y_0..y_{j-1}. That is K chunk updates and K local passes.

Here every chunk row runs ONCE as

    prefix (C - 1) ++ u_0..u_{K-1} ordinary ++ u_0..u_{K-1} candidates

where candidate j sits at the position of ordinary u_j, attends to the
prefix, to the ordinary u_0..u_{j-1} (order = its position - 1) and to
itself, and is seen by no other token (`private`, its own attention
segment); it alone uses the candidate projections (`candidate_index`
[n, K]). Ordinary tokens never see a candidate, so they are exactly the
tokens exact decoding appends to the chunk caches, and candidate j's
per-layer K/V are exactly memory entry j of the row. The K local inputs run
as one batch (row j on memory j), in groups of rows when large.

`target_logits` is the plain (jittable, differentiable) function of one
sample's arrays, for training; `exact_logits` is the evaluation path: chunk
rows in batches over the mesh's chunk axis, then the local rows.
"""
from __future__ import annotations

import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from flax import nnx

from focus_jax import parallel
from focus_jax.config import FocusConfig
from focus_jax.generation.decode import check_cache_fits, finite_row
from focus_jax.focus import core
from focus_jax.focus import steps as S_
from focus_jax.focus.plan import make_plan, round_up, shard_order
from focus_jax.model import AttnOptions, ScanOptions
from focus_jax.model.llama import update_slice_in_dim
from focus_jax.parallel import axis_size, make_mesh, shard, shard_state, sharding, spec

CHUNK_TOKENS = 16384   # chunk-pass tokens per call (rows x (C - 1 + 2K)) before the mesh
LOCAL_TOKENS = 32768   # local-pass tokens per call (rows x T)
LOCAL_BUCKET = 64


def forced_tokens(prompt_last: int, targets) -> np.ndarray:
  """u_0..u_{K-1}: the prompt's last token, then every target but the last."""
  t = np.asarray(targets, np.int32)
  return np.concatenate([[int(prompt_last)], t[:-1]]).astype(np.int32)


def chunk_memories(model, tokens, valid, row_valid, forced, attn: AttnOptions = AttnOptions(),
                   scan: ScanOptions = ScanOptions()):
  """Memory entries of K exact steps in one forward of every chunk row.

  tokens, valid: [n, C] plan rows (left-padded, last column the candidate);
  row_valid: [n] bool (real chunks); forced: [K] int (forced_tokens).
  Returns (k, v) [L, n, K, KV, hd]: entry j of each row, the pre-RoPE K/V of
  candidate u_j, equal to what exact decoding's step j computes.
  """
  n, c = tokens.shape
  k_ = forced.shape[0]
  pre, pre_val = tokens[:, :-1], valid[:, :-1]
  pre_pos = core.row_positions(pre_val)
  start = jnp.sum(pre_val, axis=1, dtype=jnp.int32)[:, None]        # [n, 1]
  ext_pos = start + jnp.arange(k_, dtype=jnp.int32)[None]           # [n, K]
  ext_val = jnp.broadcast_to(jnp.asarray(row_valid, bool)[:, None], (n, k_))
  ext_tok = jnp.broadcast_to(jnp.asarray(forced, jnp.int32)[None], (n, k_))
  toks = jnp.concatenate([pre, ext_tok, ext_tok], 1)
  pos = jnp.concatenate([pre_pos, ext_pos, ext_pos], 1)
  order = jnp.concatenate([pre_pos, ext_pos, ext_pos - 1], 1)
  val = jnp.concatenate([pre_val, ext_val, ext_val], 1)
  private = jnp.concatenate([jnp.zeros((n, c - 1 + k_), bool), jnp.ones((n, k_), bool)], 1)
  cand = jnp.broadcast_to(c - 1 + k_ + jnp.arange(k_, dtype=jnp.int32)[None], (n, k_))
  k, v = model(toks, pos, order=order, valid=val, candidate_index=cand, private=private,
               logits=None, return_kv=True, attn=attn, scan=scan).kv
  return k[:, :, c - 1 + k_:], v[:, :, c - 1 + k_:]


def local_rows(local: Sequence[int], targets, rows=None, length: int | None = None):
  """Host side: for each j of `rows` (default 0..K-1), local ++ targets[:j], LEFT-padded
  to `length` (default: the longest rounded up to LOCAL_BUCKET). Returns (tokens, valid)."""
  local = [int(t) for t in local]
  targets = [int(t) for t in targets]
  rows = range(len(targets)) if rows is None else [int(j) for j in rows]
  t = length or round_up(len(local) + max(rows), LOCAL_BUCKET)
  toks = np.zeros((len(rows), t), np.int32)
  val = np.zeros((len(rows), t), bool)
  for i, j in enumerate(rows):
    row = local + targets[:j]
    toks[i, t - len(row):] = row
    val[i, t - len(row):] = True
  return toks, val


def local_groups(local_len: int, k_: int, local_batch: int = 0):
  """[(rows, T)]: the K local rows in calls of equal padded length T (row j has
  local_len + j tokens, rounded up to LOCAL_BUCKET) and at most `local_batch` rows
  (0: LOCAL_TOKENS // T); a short last call repeats its last row."""
  out = []
  lengths = [round_up(local_len + j, LOCAL_BUCKET) for j in range(k_)]
  j = 0
  while j < k_:
    t = lengths[j]
    same = [i for i in range(j, k_) if lengths[i] == t]
    g = local_batch or max(1, LOCAL_TOKENS // t)
    for s in range(0, len(same), g):
      part = same[s:s + g]
      out.append((part + [part[-1]] * (g - len(part)) if len(same) > g else part, t))
    j = same[-1] + 1
  return out


def local_logits(model, mem_k, mem_v, mem_valid, mem_pos, tokens, valid,
                 attn: AttnOptions = AttnOptions(), bos_sees_memory: bool = True):
  """Last-token logits [R, V] of local rows [R, T], row r on memory entries r.

  mem_k, mem_v: [L, n, R, KV, hd] (chunk_memories' layout); mem_valid,
  mem_pos: [n] (shared by every row).
  """
  r = tokens.shape[0]
  mk, mv = (jnp.swapaxes(x, 1, 2) for x in (mem_k, mem_v))          # [L, R, n, KV, hd]
  mval = jnp.broadcast_to(jnp.asarray(mem_valid, bool)[None], (r,) + mem_valid.shape)
  mpos = jnp.broadcast_to(jnp.asarray(mem_pos, jnp.int32)[None], (r,) + mem_pos.shape)
  return core.local_forward(model, mk, mv, mval, tokens, valid, mem_pos=mpos, logits="last",
                            attn=attn, bos_sees_memory=bos_sees_memory)


def target_logits(model, tokens, valid, row_valid, mem_pos, forced, local_tokens, local_valid,
                  attn: AttnOptions = AttnOptions(), bos_sees_memory: bool = True):
  """The K exact logits [K, V] of one sample, all as arrays (jittable, differentiable).

  tokens, valid, row_valid, mem_pos: a ChunkPlan's rows (plan.tokens, plan.valid,
  plan.mem_valid, plan.mem_pos); forced: forced_tokens(prompt[-1], targets);
  local_tokens, local_valid: local_rows(plan.local, targets).
  """
  k, v = chunk_memories(model, tokens, valid, row_valid, forced, attn)
  return local_logits(model, k, v, row_valid, mem_pos, local_tokens, local_valid, attn,
                      bos_sees_memory)


def target_logprobs(model, tokens, valid, row_valid, mem_pos, forced, local_tokens, local_valid,
                    targets, attn: AttnOptions = AttnOptions(), bos_sees_memory: bool = True):
  """float32 [K]: log p(targets[j] | prompt ++ targets[:j]) under exact FocusLLM (for training)."""
  logits = target_logits(model, tokens, valid, row_valid, mem_pos, forced, local_tokens,
                         local_valid, attn, bos_sees_memory)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, jnp.asarray(targets, jnp.int32)[:, None], axis=1)[:, 0]


def sample_arrays(prompt: Sequence[int], targets: Sequence[int], cfg, focus: FocusConfig,
                  row_multiple: int = 1) -> dict:
  """Host side: the arrays `target_logits` takes for one sample (None if the prompt is
  too short for the memory: the plain model then scores it)."""
  plan = make_plan(np.asarray(prompt), cfg, focus, row_multiple=row_multiple)
  if not plan.focus:
    return None
  lt, lv = local_rows(plan.local, targets)
  return dict(tokens=plan.tokens, valid=plan.valid, row_valid=plan.mem_valid,
              mem_pos=plan.mem_pos, forced=forced_tokens(prompt[-1], targets),
              local_tokens=lt, local_valid=lv)


@functools.lru_cache(maxsize=None)
def _alloc_fn(cfg, mesh, n_rows: int, k_: int):
  shape = (cfg.num_layers, n_rows, k_, cfg.num_kv_heads, cfg.head_dim)
  mem = sharding(mesh, None, S_.CHUNK)
  return jax.jit(lambda: (jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype)),
                 out_shardings=(mem, mem))


@functools.lru_cache(maxsize=None)
def _chunk_fn(graphdef, mesh, batch: int, attn: AttnOptions):
  """(state, tokens, valid, row_valid, forced, mem_k, mem_v, j) -> (mem_k, mem_v): batch j of
  rows (b = batch / shards per device, as steps.encode_fn) written in place."""
  shards = axis_size(mesh, S_.CHUNK)
  if batch % shards:
    raise ValueError(f"chunk batch {batch} must be a multiple of the chunk axis size {shards}")
  b = batch // shards

  def body(specs, state, tokens, valid, row_valid, forced, mem_k, mem_v, j):
    model, scan = parallel.merge_shards(graphdef, (state,), specs)
    sl = lambda x: jax.lax.dynamic_slice_in_dim(x, j * b, b, 0)
    k, v = chunk_memories(model, sl(tokens), sl(valid), sl(row_valid), forced, attn, scan)
    put = lambda buf, x: update_slice_in_dim(buf, x, j * b, 1)
    return put(mem_k, k), put(mem_v, v)

  rows, mem = spec(mesh, S_.CHUNK), spec(mesh, None, S_.CHUNK)

  def run(state, *args):
    sspec, specs = S_._state_specs(state, mesh)
    fn = shard(functools.partial(body, specs), mesh,
               in_specs=(sspec, rows, rows, rows, P(), mem, mem, P()), out_specs=(mem, mem))
    return fn(state, *args)
  return jax.jit(run, donate_argnums=(5, 6))


@functools.lru_cache(maxsize=None)
def _local_fn(graphdef, mesh, attn: AttnOptions, bos_sees_memory: bool = True):
  """(state, mem_k, mem_v, mem_valid, mem_pos, tokens [G, T], valid, rows [G]) -> logits
  [G, V] of the local rows `rows` (memory gathered over the chunk axis by `_gather_fn`)."""
  def fn(state, mem_k, mem_v, mem_valid, mem_pos, tokens, valid, rows):
    pick = lambda x: jnp.take(x, rows, axis=2)
    return local_logits(nnx.merge(graphdef, state), pick(mem_k), pick(mem_v), mem_valid,
                        mem_pos, tokens, valid, attn, bos_sees_memory)
  return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _gather_fn(mesh):
  return jax.jit(lambda k, v, val, pos: S_.gather_rows(mesh, k, v) + S_.gather_rows(
      mesh, val, pos, axis=0))


def exact_logits(model, prompt: Sequence[int], targets: Sequence[int], *,
                 focus: FocusConfig = FocusConfig(), mesh=None, chunk_batch: int = 1,
                 local_batch: int = 0, attn: AttnOptions = AttnOptions(),
                 timings: dict | None = None) -> np.ndarray:
  """float32 [K, V]: row j = the logits exact FocusLLM decoding gives after prompt ++
  targets[:j] (exact decoding with the targets forced), in one pass.

  chunk_batch: at least this many chunk rows per call (more, up to CHUNK_TOKENS
  tokens per device, when the rows are short); rounded to the chunk axis.
  local_batch: local rows per call (0: as many as fit LOCAL_TOKENS tokens); calls
  group rows of the same padded length (local_groups).
  Raises ValueError when the prompt is too short for the memory (the plain
  model scores those; see generation.modes.token_logprobs) or, before allocating,
  when the pass cannot fit in memory; generation.decode.NonFiniteLogits (as exact
  decoding) when a row holds NaN or inf.
  """
  prompt = np.asarray(prompt, np.int32)
  targets = np.asarray(targets, np.int32)
  if prompt.ndim != 1 or prompt.size == 0 or targets.ndim != 1 or targets.size == 0:
    raise ValueError("prompt and targets must be non-empty 1-D id sequences")
  if chunk_batch < 1 or local_batch < 0:
    raise ValueError(f"chunk_batch must be >= 1 and local_batch >= 0, got {chunk_batch}, "
                     f"{local_batch}")
  if not model.has_candidates:
    raise ValueError("FocusLLM needs candidate projections: the model has none "
                     "(see focus_jax.model.add_candidates)")
  t0 = time.perf_counter()
  cfg = model.config
  mesh = make_mesh(None) if mesh is None else mesh
  parallel.check_tensor(cfg, mesh)
  shards = axis_size(mesh, S_.CHUNK)
  k_ = targets.size
  first = make_plan(prompt, cfg, focus)
  if not first.focus:
    raise ValueError(f"a prompt of {prompt.size} tokens has no FocusLLM memory "
                     f"(min_focus_len {focus.min_focus_len}, local window {focus.local_window})")
  per_call = max(chunk_batch, max(1, CHUNK_TOKENS // (first.row_len - 1 + 2 * k_)) * shards)
  calls = -(-first.n_chunks // per_call)   # as few calls as that allows, evenly filled
  batch = round_up(max(chunk_batch, -(-first.n_chunks // calls)), shards)
  plan = make_plan(prompt, cfg, focus, row_multiple=batch)
  row_tokens = plan.row_len - 1 + 2 * k_
  # the K memories of every row, taken once more per local call, and one call's activations
  check_cache_fits(cfg, 2 * plan.n_rows * k_,
                   f"the exact pass over {plan.n_chunks} chunks ({plan.n_rows} rows) x {k_} "
                   "targets", prefill_tokens=max(batch * row_tokens, LOCAL_TOKENS),
                   hint="lower the number of scored tokens or the input length")
  graphdef, state = nnx.split(model)
  state = shard_state(state, mesh)
  perm = shard_order(plan.n_rows, shards, batch)
  rows = sharding(mesh, S_.CHUNK)
  put = lambda x: jax.device_put(x[perm], rows)
  tokens, valid, row_valid, mem_pos = map(put, (plan.tokens, plan.valid, plan.mem_valid,
                                                plan.mem_pos))
  forced = jnp.asarray(forced_tokens(prompt[-1], targets))
  mem_k, mem_v = _alloc_fn(cfg, mesh, plan.n_rows, k_)()
  chunk = _chunk_fn(graphdef, mesh, batch, attn)
  for j in range(-(-plan.n_chunks // batch)):   # trailing all-padding batches are skipped
    mem_k, mem_v = chunk(state, tokens, valid, row_valid, forced, mem_k, mem_v, jnp.int32(j))
  mem_k, mem_v, row_valid, mem_pos = _gather_fn(mesh)(mem_k, mem_v, row_valid, mem_pos)
  if timings is not None:
    jax.block_until_ready(mem_k)
    timings.update(chunks=time.perf_counter() - t0, n_chunks=plan.n_chunks,
                   n_rows=plan.n_rows, chunk_batch=batch)
  local = _local_fn(graphdef, mesh, attn, focus.bos_sees_memory)
  out = np.zeros((k_, cfg.vocab_size), np.float32)
  groups = local_groups(len(plan.local), k_, local_batch)
  for rows_j, t in groups:
    lt, lv = local_rows(plan.local, targets, rows_j, t)
    logits = local(state, mem_k, mem_v, row_valid, mem_pos, jnp.asarray(lt), jnp.asarray(lv),
                   jnp.asarray(rows_j, jnp.int32))
    out[rows_j] = np.asarray(logits, np.float32)
  for j in range(k_):   # NaN or inf: refused as exact decoding refuses it, at its step
    finite_row(out[j], j)
  if timings is not None:
    timings.update(total=time.perf_counter() - t0, local_calls=len(groups),
                   local_batch=max(len(r) for r, _ in groups))
  return out
