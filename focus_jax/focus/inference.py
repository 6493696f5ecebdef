"""FocusLLM generation (the `focus` mode of launch.generate), per FOCUSLLM.md.

Prefill: chunk rows are encoded in batches of `chunk_batch` rows (the same
compiled function for every batch, a progress bar over batches), split over
the mesh's chunk axis; then the local input reads the gathered memory.

Decoding (`decode`):
  "exact"  the official algorithm: at every generated token each chunk runs
           [prev, y_t] on its KV cache (its fragment grows with the generated
           text), the memory is rebuilt from the new candidates and the local
           input BOS ++ local ++ y_1..y_t is recomputed from scratch on it.
  "fast"   an APPROXIMATION: the memory is frozen after prefill and the local
           K/V are cached, so a step costs one token. Chunk caches are not
           kept. It agrees with exact mode on the first token only; see
           docs/RESULTS.md for measured agreement.
Inputs shorter than min_focus_len run the plain model (BOS prepended when
x[0] != BOS) with plain cached greedy decoding.
"""
from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from focus_jax.config import FocusConfig
from focus_jax.decoding import Generation, check_cache_fits, finite_row, generate_plain
from focus_jax.focus import steps as P_
from focus_jax.focus.plan import ChunkPlan, make_plan, round_up, row_batch, shard_order
from focus_jax.model import AttnOptions
from focus_jax.parallel import axis_size, check_tensor, make_mesh, shard_state, sharding
from focus_jax.sampling import Sampler

DECODE_MODES = ("exact", "fast")
LOCAL_BUCKET = 64   # local inputs are left-padded to a multiple of this (fewer compilations)
# Chunk rows per batch of an exact decoding step: the step's temporaries (the batch's
# cache rows, each layer's upcast and rotated) are O(this), not O(rows); below it, one
# call as before. SmolLM2 at S=128: 64 rows of 208 slots are 0.3 GB of bfloat16 K/V.
STEP_ROWS = 64
CACHE_DTYPES = ("float32", "bfloat16")


def _left_pad(seq: Sequence[int], length: int):
  toks = np.zeros(length, np.int32)
  valid = np.zeros(length, bool)
  toks[length - len(seq):] = seq
  valid[length - len(seq):] = True
  return jnp.asarray(toks), jnp.asarray(valid)


class _Clock:
  """Optional laps (blocking on the given array) into a dict: wall seconds under
  `key` and process CPU seconds (all threads) under `key + "_cpu"`."""

  def __init__(self, out):
    self.out = out
    self.start = self.last = (time.perf_counter(), time.process_time())

  def record(self, key, value):
    if self.out is not None:
      self.out[key] = value

  def lap(self, key, array, since_start=False):
    if self.out is None:
      return
    jax.block_until_ready(array)
    now = (time.perf_counter(), time.process_time())
    ref = self.start if since_start else self.last
    self.last = now
    for name, dt in ((key, now[0] - ref[0]), (key + "_cpu", now[1] - ref[1])):
      if key == "steps":
        self.out.setdefault(name, []).append(dt)
      else:
        self.out[name] = dt


def encode_chunks(model, plan: ChunkPlan, mesh, chunk_batch: int, *, keep_cache: bool,
                  cache_size: int = 0, attn: AttnOptions = AttnOptions(), progress=False,
                  cache_dtype: str | None = None):
  """Encodes every chunk row of `plan` (laid out for `mesh` and `chunk_batch`).

  Returns (cache or None, mem_k, mem_v, mem_valid, mem_pos): mem arrays
  [L, n_rows, KV, hd] split over the chunk axis in shard order (rows permuted
  by plan.shard_order; mem_pos holds each row's chunk index). cache_size is
  the per-row cache length when keep_cache (>= row_len - 1); cache_dtype its
  K/V storage (default the compute dtype; see steps.alloc_fn).
  """
  shards = axis_size(mesh, P_.CHUNK)
  perm = shard_order(plan.n_rows, shards, chunk_batch)
  rows = sharding(mesh, P_.CHUNK)
  tokens = jax.device_put(plan.tokens[perm], rows)
  valid = jax.device_put(plan.valid[perm], rows)
  mem_valid = jax.device_put(plan.mem_valid[perm], rows)
  mem_pos = jax.device_put(plan.mem_pos[perm], rows)
  size = cache_size if keep_cache else 0
  if keep_cache and size < plan.row_len - 1:
    raise ValueError(f"cache_size {size} < row length - 1 ({plan.row_len - 1})")
  graphdef, state = nnx.split(model)
  cache, mem_k, mem_v = P_.alloc_fn(model.config, mesh, plan.n_rows, size, plan.row_len - 1,
                                    keep_cache, cache_dtype)()
  encode = P_.encode_fn(graphdef, mesh, chunk_batch, keep_cache, attn)
  batches = range(-(-plan.n_chunks // chunk_batch))   # trailing all-padding batches are skipped
  if progress:
    from tqdm import tqdm
    batches = tqdm(batches, desc=f"chunks ({plan.n_chunks} x {plan.row_len} tokens)",
                   unit="batch")
  for j in batches:
    cache, mem_k, mem_v = encode(state, tokens, valid, cache, mem_k, mem_v, jnp.int32(j))
    if progress:
      mem_k.block_until_ready()   # the bar follows the computation, not the dispatch
  return cache, mem_k, mem_v, mem_valid, mem_pos


def cache_tokens(plan: ChunkPlan, max_new_tokens: int, exact: bool) -> int:
  """KV positions (over all rows) that generation allocates for `plan`: exact keeps every
  chunk row's cache, growing by the new tokens; fast keeps the memory and a local cache."""
  if not plan.focus:
    return len(plan.local) + max_new_tokens
  if exact:
    return plan.n_rows * round_up(plan.row_len - 1 + max_new_tokens - 1, 16)
  return plan.n_rows + round_up(len(plan.local) + max_new_tokens, LOCAL_BUCKET)


def generate_focus(model, prompt: Sequence[int], max_new_tokens: int,
                   sampler: Sampler = Sampler(), *, focus: FocusConfig = FocusConfig(),
                   decode: str = "exact", mesh=None, chunk_batch: int = 1,
                   progress: bool = False, stop_at_eos: bool = True, eos_ids=None,
                   attn: AttnOptions = AttnOptions(), timings: dict | None = None,
                   cache_dtype: str | None = None, step_rows: int = STEP_ROWS) -> Generation:
  """Generates up to max_new_tokens after `prompt` (ids used as given) with FocusLLM.

  model must hold candidate projections (focus_jax.model.add_candidates). mesh: a
  jax Mesh (default: one device); chunk_batch: chunk rows encoded per call,
  rounded up to a multiple of the chunk-axis size. Small batches bound the
  prefill memory and waste nothing on padding rows (trailing all-padding
  batches are skipped); on CPU one row per device is as fast per row as more.
  Returns a Generation: tokens [steps] and float32 logits [steps, vocab],
  row 0 predicting the token after the prompt. `timings`, when given, is
  filled with wall seconds: chunks (encoding), prefill (to the first logits),
  steps (one per later token), the same with a `_cpu` suffix in process CPU
  seconds, the plan's n_chunks / n_rows and the chunk cache's bytes.
  cache_dtype: storage of the exact decoder's chunk K/V cache, "float32" or
  "bfloat16" (half the bytes, computation still in the compute dtype: each
  step upcasts the rows it reads); default the compute dtype. step_rows: chunk
  rows per batch of an exact step (rounded to a divisor of the row count; see
  STEP_ROWS); 0 runs every row in one call.
  """
  prompt = np.asarray(prompt)
  if prompt.ndim != 1 or prompt.size == 0:
    raise ValueError(f"prompt must be a non-empty 1-D id sequence, got shape {prompt.shape}")
  if max_new_tokens < 1:
    raise ValueError("max_new_tokens must be >= 1")
  if decode not in DECODE_MODES:
    raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
  if chunk_batch < 1:
    raise ValueError(f"chunk_batch must be >= 1, got {chunk_batch}")
  if cache_dtype is not None and cache_dtype not in CACHE_DTYPES:
    raise ValueError(f"cache_dtype must be one of {CACHE_DTYPES}, got {cache_dtype!r}")
  if step_rows < 0:
    raise ValueError(f"step_rows must be >= 0, got {step_rows}")
  clock = _Clock(timings)
  cfg = model.config
  mesh = make_mesh(None) if mesh is None else mesh
  check_tensor(cfg, mesh)
  chunk_batch = round_up(chunk_batch, axis_size(mesh, P_.CHUNK))
  plan = make_plan(prompt, cfg, focus, row_multiple=chunk_batch)
  if not plan.focus:
    clock.record("plain", True)
    return generate_plain(model, plan.local, max_new_tokens, sampler,
                          stop_at_eos=stop_at_eos, eos_ids=eos_ids)
  if not model.has_candidates:
    raise ValueError("FocusLLM needs candidate projections: the model has none "
                     "(see focus_jax.model.add_candidates)")
  eos = set(cfg.eos_token_ids if eos_ids is None else eos_ids)
  graphdef, state = nnx.split(model)
  state = shard_state(state, mesh)   # replicated, or split over "fsdp" when the mesh has it
  model = nnx.merge(graphdef, state)
  exact = decode == "exact"
  cache_size = round_up(plan.row_len - 1 + max_new_tokens - 1, 16) if exact else 0
  check_cache_fits(cfg, cache_tokens(plan, max_new_tokens, exact),
                   f"{plan.n_chunks} chunks ({plan.n_rows} rows) + {max_new_tokens} new tokens")
  clock.record("n_chunks", plan.n_chunks)
  clock.record("n_rows", plan.n_rows)
  cache, mem_k, mem_v, mem_valid, mem_pos = encode_chunks(
      model, plan, mesh, chunk_batch, keep_cache=exact, cache_size=cache_size, attn=attn,
      progress=progress, cache_dtype=cache_dtype)
  clock.lap("chunks", mem_k)
  clock.record("cache_bytes", 0 if cache is None else int(cache.k.nbytes + cache.v.nbytes))
  local = [int(t) for t in plan.local]
  toks, val = _left_pad(local, round_up(len(local), LOCAL_BUCKET))
  if exact:
    logits = P_.local_fn(graphdef, mesh, attn)(state, mem_k, mem_v, mem_valid, mem_pos, toks, val)
    batch = row_batch(plan.n_rows, chunk_batch, step_rows) if step_rows else plan.n_rows
    batch = 0 if batch >= plan.n_rows else batch   # 0: one call over every row
    # batches of each device's rows that hold real chunks (the rest are all padding)
    n_batches = -(-(-(-plan.n_chunks // chunk_batch)) // (batch // chunk_batch)) if batch else 0
    step_fn = P_.exact_step_fn(graphdef, mesh, attn, batch)
  else:
    size = round_up(toks.shape[0] + max_new_tokens, LOCAL_BUCKET)
    logits, mem, lcache, pos = P_.fast_prefill_fn(graphdef, mesh, size, attn)(
        state, mem_k, mem_v, mem_valid, mem_pos, toks, val)
    step_fn = P_.fast_step_fn(graphdef, mesh, attn)
  clock.lap("prefill", logits, since_start=True)
  prev = int(plan.local[-1])
  tokens, rows = [], []
  for step in range(max_new_tokens):
    if step:
      clock.lap("steps", logits)
    row = finite_row(logits, step)
    tok = sampler.pick(row, step)
    tokens.append(tok)
    rows.append(row)
    if (stop_at_eos and tok in eos) or step == max_new_tokens - 1:
      break
    if exact:
      local.append(tok)
      toks, val = _left_pad(local, round_up(len(local), LOCAL_BUCKET))
      logits, cache = step_fn(state, cache, mem_valid, jnp.asarray([prev, tok], jnp.int32),
                              mem_pos, toks, val, jnp.int32(n_batches))
      prev = tok
    else:
      logits, lcache = step_fn(state, mem, mem_valid, mem_pos, lcache, jnp.int32(tok), pos)
      pos = pos + 1
  return Generation(np.asarray(tokens, np.int32), np.stack(rows))
