"""FocusLLM decoders (the `focus` mode of focus_jax.generation), per FOCUSLLM.md.

Prefill: chunk rows are encoded in batches of `chunk_batch` rows (the same
compiled function for every batch, a progress bar over batches), split over
the mesh's chunk axis; then the local input reads the gathered memory.

Decoders (ModeSetup.focus_decode), each a generation.decode.Decoder:
  "exact"  ExactDecoder, the official algorithm: at every generated token each
           chunk runs [prev, y_t] on its KV cache (its fragment grows with the
           generated text), the memory is rebuilt from the new candidates and
           the local input BOS ++ local ++ y_1..y_t is recomputed from scratch on it.
  "fast"   FastDecoder, an APPROXIMATION: the memory is frozen after prefill and
           the local K/V are cached, so a step costs one token. Chunk caches are
           not kept. It agrees with exact mode on the first token only; see
           docs/RESULTS.md for measured agreement.
Inputs shorter than min_focus_len get the plain decoder on BOS ++ x (BOS
prepended when x[0] != BOS).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from focus_jax.focus import steps
from focus_jax.focus.plan import ChunkPlan, left_pad, make_plan, round_up, row_batch, shard_order
from focus_jax.generation.decode import Decoder, PlainDecoder, check_cache_fits
from focus_jax.model import AttnOptions
from focus_jax.parallel import axis_size, check_tensor, make_mesh, shard_state, sharding

LOCAL_BUCKET = 64   # local inputs are left-padded to a multiple of this (fewer compilations)


def local_input(local) -> tuple[jax.Array, jax.Array]:
  """The local tokens left-padded to a multiple of LOCAL_BUCKET: (tokens [T], valid [T])."""
  tokens, valid = left_pad([local], 1, round_up(len(local), LOCAL_BUCKET))
  return jnp.asarray(tokens[0]), jnp.asarray(valid[0])


class _Clock:
  """Optional laps (blocking on the given array) into a dict: wall seconds under
  `key` and process CPU seconds (all threads) under `key + "_cpu"`."""

  def __init__(self, out):
    self.out = out
    self.start = self.last = (time.perf_counter(), time.process_time())

  def record(self, **values):
    if self.out is not None:
      self.out.update(values)

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
  shards = axis_size(mesh, steps.CHUNK)
  perm = shard_order(plan.n_rows, shards, chunk_batch)
  rows = sharding(mesh, steps.CHUNK)
  tokens, valid, mem_valid, mem_pos = (jax.device_put(a[perm], rows) for a in (
      plan.tokens, plan.valid, plan.mem_valid, plan.mem_pos))
  size = cache_size if keep_cache else 0
  if keep_cache and size < plan.row_len - 1:
    raise ValueError(f"cache_size {size} < row length - 1 ({plan.row_len - 1})")
  graphdef, state = nnx.split(model)
  cache, mem_k, mem_v = steps.alloc_fn(model.config, mesh, plan.n_rows, size, plan.row_len - 1,
                                       keep_cache, cache_dtype)()
  encode = steps.encode_fn(graphdef, mesh, chunk_batch, keep_cache, attn)
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


def focus_decoder(setup, prompt: np.ndarray, max_new: int,
                  timings: dict | None = None) -> Decoder:
  """The decoder of `setup` (a generation.modes.ModeSetup, mode "focus") for `prompt`.

  The model must hold candidate projections (focus_jax.model.add_candidates).
  setup.chunk_batch is rounded up to a multiple of the chunk-axis size (small
  batches bound the prefill memory; on CPU one row per device is as fast per row).
  `timings` gets wall seconds of chunks (encoding), prefill (to the first logits)
  and steps (one per later token), each also in process CPU seconds (`_cpu`),
  n_chunks, n_rows and cache_bytes; or plain=True for a prompt below the memory.
  """
  clock = _Clock(timings)
  cfg = setup.cfg
  mesh = make_mesh(None) if setup.mesh is None else setup.mesh
  check_tensor(cfg, mesh)
  chunk_batch = round_up(setup.chunk_batch, axis_size(mesh, steps.CHUNK))
  plan = make_plan(prompt, cfg, setup.focus, row_multiple=chunk_batch)
  if not plan.focus:
    clock.record(plain=True)
    return PlainDecoder(setup.model, plan.local, max_new)
  if not setup.model.has_candidates:
    raise ValueError("FocusLLM needs candidate projections: the model has none "
                     "(see focus_jax.model.add_candidates)")
  exact = setup.focus_decode == "exact"
  # The kept chunk caches are stored in chunk_cache_dtype (exact decoding), when given.
  stored = setup.chunk_cache_dtype if exact and setup.chunk_cache_dtype else cfg.compute_dtype
  check_cache_fits(cfg, cache_tokens(plan, max_new, exact),
                   f"{plan.n_chunks} chunks ({plan.n_rows} rows, {stored}) + {max_new} new "
                   "tokens", cache_dtype=stored)
  clock.record(n_chunks=plan.n_chunks, n_rows=plan.n_rows)
  return (ExactDecoder if exact else FastDecoder)(setup, plan, mesh, chunk_batch, max_new, clock)


class _FocusDecoder:
  """What both decoders share: the state (replicated, or split over "fsdp" when the mesh
  has it), the plan, the local tokens so far and the chunk encoding."""

  def __init__(self, setup, plan: ChunkPlan, mesh, chunk_batch: int, max_new: int, clock):
    self.graphdef, state = nnx.split(setup.model)
    self.state = shard_state(state, mesh)
    self.setup, self.plan, self.mesh, self.chunk_batch = setup, plan, mesh, chunk_batch
    self.max_new, self.clock, self.attn = max_new, clock, setup.attn
    self.local = [int(t) for t in plan.local]

  def encode(self, keep_cache: bool, cache_size: int = 0):
    """Encodes the chunks: (cache or None, mem_k, mem_v); sets mem_valid and mem_pos."""
    cache, mem_k, mem_v, self.mem_valid, self.mem_pos = encode_chunks(
        nnx.merge(self.graphdef, self.state), self.plan, self.mesh, self.chunk_batch,
        keep_cache=keep_cache, cache_size=cache_size, attn=self.attn,
        progress=self.setup.progress, cache_dtype=self.setup.chunk_cache_dtype)
    self.clock.lap("chunks", mem_k)
    self.clock.record(cache_bytes=0 if cache is None else int(cache.k.nbytes + cache.v.nbytes))
    return cache, mem_k, mem_v


class ExactDecoder(_FocusDecoder):
  """Exact (official) decoding. A step runs the chunk rows in batches of setup.step_rows
  (rounded to a divisor of the row count); 0, or a batch of every row, in one call."""

  def prefill(self) -> jax.Array:
    plan = self.plan
    size = round_up(plan.row_len - 1 + self.max_new - 1, 16)   # cache_tokens' rows
    self.cache, mem_k, mem_v = self.encode(True, size)
    bos = self.setup.focus.bos_sees_memory
    logits = steps.local_fn(self.graphdef, self.mesh, self.attn, bos)(
        self.state, mem_k, mem_v, self.mem_valid, self.mem_pos, *local_input(self.local))
    rows = self.setup.step_rows
    batch = row_batch(plan.n_rows, self.chunk_batch, rows) if rows else plan.n_rows
    batch = 0 if batch >= plan.n_rows else batch   # 0: one call over every row
    # batches of each device's rows that hold real chunks (the rest are all padding)
    self.n_batches = -(-plan.n_chunks // batch) if batch else 0
    self.step_fn = steps.exact_step_fn(self.graphdef, self.mesh, self.attn, batch, bos)
    self.clock.lap("prefill", logits, since_start=True)
    return logits

  def step(self, token: int) -> jax.Array:
    pair = jnp.asarray([self.local[-1], token], jnp.int32)   # [prev, y_t]
    self.local.append(token)
    logits, self.cache = self.step_fn(self.state, self.cache, self.mem_valid, pair, self.mem_pos,
                                      *local_input(self.local), jnp.int32(self.n_batches))
    self.clock.lap("steps", logits)
    return logits


class FastDecoder(_FocusDecoder):
  """Fast decoding: the memory frozen after prefill, the local K/V cached."""

  def prefill(self) -> jax.Array:
    _, mem_k, mem_v = self.encode(False)
    toks, val = local_input(self.local)
    size = round_up(toks.shape[0] + self.max_new, LOCAL_BUCKET)
    bos = self.setup.focus.bos_sees_memory
    logits, self.mem, self.cache, self.pos = steps.fast_prefill_fn(
        self.graphdef, self.mesh, size, self.attn, bos)(
            self.state, mem_k, mem_v, self.mem_valid, self.mem_pos, toks, val)
    self.step_fn = steps.fast_step_fn(self.graphdef, self.mesh, self.attn, bos)
    self.clock.lap("prefill", logits, since_start=True)
    return logits

  def step(self, token: int) -> jax.Array:
    logits, self.cache = self.step_fn(self.state, self.mem, self.mem_valid, self.mem_pos,
                                      self.cache, jnp.int32(token), self.pos)
    self.pos = self.pos + 1
    self.clock.lap("steps", logits)
    return logits
