"""FocusLLM exact decoding with a compact (bfloat16 or int8) chunk cache and row-batched steps.

The bfloat16 cache is checked against an independent computation: the float32
path whose cache is rounded to bfloat16 after every write (equal within 1e-6:
the compact path must compute in float32 on exactly those values), and against
the plain float32 path within a bound from bfloat16's rounding. The row-batched
exact step is checked against the one-call step and the plain loop reference
of focus_reference.py, and its compiled temporaries against the row count. The int8
cache (one scale per vector) is checked the same way: against the float32 path on a cache
quantised in numpy, and against float32 within a bound from its rounding.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx
from focus_reference import TINY, reference_focus, tiny_model

from focus_jax.config import FocusConfig
from focus_jax.focus import steps as P_
from focus_jax.focus.inference import encode_chunks, local_input
from focus_jax.focus.plan import make_plan, round_up, row_batch
from focus_jax.generation.modes import ModeSetup, generate
from focus_jax.model.llama import init_cache
from focus_jax.parallel import make_mesh

S, WL, F, T = 16, 24, 8, 40
FC = FocusConfig(chunk_size=S, local_window=WL, fragment_len=F, min_focus_len=T)
STEPS = 4
N_CHUNKS = 9   # 10 rows after bucketing: the last one is all padding


@pytest.fixture(scope="module")
def model():
  return tiny_model()


@pytest.fixture(scope="module")
def x():
  rng = np.random.default_rng(11)
  return rng.integers(TINY.bos_token_id + 1, TINY.vocab_size, WL + N_CHUNKS * S).astype(np.int32)


@pytest.fixture(scope="module")
def run(model, x):
  """generate(ModeSetup("focus", model, focus=FC, **kw), x, STEPS) -> (Generation, timings),
  memoised per kw."""
  @functools.lru_cache(maxsize=None)
  def go(**kw):
    tm = {}
    return generate(ModeSetup("focus", model, focus=FC, **kw), x, STEPS, stop_at_eos=False,
                    timings=tm), tm
  return lambda **kw: go(**kw)


def test_row_batch():
  assert [row_batch(10, 1, r) for r in (1, 2, 3, 4, 5, 9, 10, 512)] == [1, 2, 2, 2, 5, 5, 10, 10]
  assert row_batch(3584, 1, 512) == 512 and row_batch(24, 4, 10) == 8 and row_batch(8, 4, 1) == 4
  with pytest.raises(ValueError):
    row_batch(10, 4, 8)


def test_float32_cache_is_the_default_path(run):
  base, tm = run()
  f32, tm32 = run(chunk_cache_dtype="float32")
  np.testing.assert_array_equal(f32.logits, base.logits)
  assert tm["cache_bytes"] == tm32["cache_bytes"] > 0


def test_bfloat16_cache_equals_float32_on_the_rounded_cache(model, x, run):
  """Independent path: float32 buffers, rounded to bfloat16 before every step reads them."""
  gen, tm = run(chunk_cache_dtype="bfloat16")
  assert tm["cache_bytes"] * 2 == run()[1]["cache_bytes"]
  rnd = lambda c: c._replace(k=c.k.astype(jnp.bfloat16).astype(jnp.float32),
                             v=c.v.astype(jnp.bfloat16).astype(jnp.float32))
  mesh = make_mesh(None)
  plan = make_plan(x, TINY, FC, row_multiple=1)
  size = round_up(plan.row_len - 1 + STEPS - 1, 16)
  cache, mem_k, mem_v, mem_valid, mem_pos = encode_chunks(model, plan, mesh, 1, keep_cache=True,
                                                          cache_size=size)
  assert cache.k.dtype == jnp.float32
  graphdef, state = nnx.split(model)
  local = [int(t) for t in plan.local]
  toks, val = local_input(local)
  rows = [P_.local_fn(graphdef, mesh)(state, mem_k, mem_v, mem_valid, mem_pos, toks, val)]
  step = P_.exact_step_fn(graphdef, mesh)
  prev = local[-1]
  for tok in gen.tokens[:-1].tolist():
    local.append(tok)
    toks, val = local_input(local)
    logits, cache = step(state, rnd(cache), mem_valid, jnp.asarray([prev, tok], jnp.int32),
                         mem_pos, toks, val)
    rows.append(logits)
    prev = tok
  np.testing.assert_allclose(gen.logits, np.stack(rows), atol=1e-6, rtol=0)


def test_bfloat16_cache_close_to_float32(run):
  """bfloat16 keeps 8 significant bits: each cached K/V entry moves by at most 2^-9 of
  itself. Attention scores and outputs are smooth (a convex mix of V; scores linear in K),
  so the logits move by a small multiple of that relative error: bound 2^-8 * max|logit|."""
  f32, _ = run()
  bf16, _ = run(chunk_cache_dtype="bfloat16")
  diff = np.abs(bf16.logits - f32.logits)
  assert 0 < diff.max() <= 2 ** -8 * np.abs(f32.logits).max()
  assert diff[0].max() == 0   # the first logits read only the memory, computed in float32


def test_row_batched_step_matches_one_call(model, x, run):
  """One row per batch: 10 batches, the last (all padding) skipped."""
  one, _ = run()   # 10 rows < STEP_ROWS: one call
  got, _ = run(step_rows=1)
  np.testing.assert_allclose(got.logits, one.logits, atol=1e-6, rtol=0)
  ref = reference_focus(model, x, S, WL, F, got.tokens[:-1])
  np.testing.assert_allclose(got.logits, ref, atol=1e-5, rtol=0)


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


@functools.lru_cache(maxsize=None)
def _step_memory(model, n_rows, size, step_rows):
  graphdef, state = nnx.split(model)
  fn = P_.exact_step_fn(graphdef, make_mesh(None), step_rows=step_rows)
  cache = jax.eval_shape(lambda: init_cache(TINY, n_rows, size))
  args = (state, cache, jnp.ones(n_rows, bool), jnp.zeros(2, jnp.int32),
          jnp.zeros(n_rows, jnp.int32), jnp.zeros(64, jnp.int32), jnp.ones(64, bool),
          jnp.int32(0))
  return fn.lower(*_abstract(args)).compile().memory_analysis()


def test_row_batched_step_temporaries_do_not_grow_with_rows(model):
  """Compiled temporaries of one exact step at 16 and 128 rows of 96 cache slots: one call
  copies every row's cache (upcast, rotated); row batches hold only the memory entries
  (the step's outputs, 1/96 of the cache) beyond a constant."""
  size, n0, n1 = 96, 16, 128
  row_cache = 2 * TINY.num_layers * size * TINY.num_kv_heads * TINY.head_dim * 4   # bytes/row
  row_mem = 2 * TINY.num_layers * TINY.num_kv_heads * TINY.head_dim * 4
  grow = lambda r: (_step_memory(model, n1, size, r).temp_size_in_bytes
                    - _step_memory(model, n0, size, r).temp_size_in_bytes) / (n1 - n0)
  assert grow(0) >= row_cache                  # the one-call step: a cache copy and more
  assert grow(4) <= 8 * row_mem < row_cache / 10
  # the cache itself is updated in place (donated), not copied
  assert _step_memory(model, n1, size, 4).alias_size_in_bytes >= n1 * row_cache


def test_encoding_temporaries_do_not_grow_with_rows(model):
  """encode_fn reads one batch of rows per call: its temporaries are the same for 16 and
  128 rows (the caches and memory buffers are donated and updated in place)."""
  graphdef, state = nnx.split(model)
  mesh = make_mesh(None)
  c = S + F + 1

  def temp(n):
    fn = P_.encode_fn(graphdef, mesh, 2, True)
    cache = jax.eval_shape(lambda: init_cache(TINY, n, 32, "bfloat16"))
    mem = jnp.zeros((TINY.num_layers, n, TINY.num_kv_heads, TINY.head_dim))
    args = (state, jnp.zeros((n, c), jnp.int32), jnp.ones((n, c), bool), cache, mem, mem,
            jnp.int32(0))
    return fn.lower(*_abstract(args)).compile().memory_analysis()

  a, b = temp(16), temp(128)
  assert a.temp_size_in_bytes == b.temp_size_in_bytes > 0
  assert b.alias_size_in_bytes >= 128 * 2 * TINY.num_layers * 32 * TINY.num_kv_heads * TINY.head_dim * 2


def test_bad_cache_dtype(model, x):
  with pytest.raises(ValueError, match="cache_dtype"):
    generate(ModeSetup("focus", model, focus=FC, chunk_cache_dtype="float16"), x, 2)
  with pytest.raises(ValueError, match="step_rows"):
    generate(ModeSetup("focus", model, focus=FC, step_rows=-1), x, 2)


def test_generate_cli_chunk_cache_dtype(model, x, run, tmp_path):
  """launch.generate --chunk_cache_dtype=bfloat16 gives the in-process bfloat16 logits."""
  import os
  import subprocess
  import sys
  from focus_jax.checkpoint.orbax import save_checkpoint
  save_checkpoint(tmp_path / "ckpt", model)
  np.save(tmp_path / "ids.npy", x.astype(np.int64))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run(
      [sys.executable, "-m", "launch.generate", f"--checkpoint={tmp_path / 'ckpt'}",
       f"--input_ids={tmp_path / 'ids.npy'}", "--mode=focus", f"--chunk_size={S}",
       f"--local_window={WL}", f"--fragment_len={F}", f"--min_focus_len={T}",
       f"--max_new_tokens={STEPS}", f"--logits_out={tmp_path / 'out.npz'}", "--ignore_eos",
       "--chunk_cache_dtype=bfloat16"],
      cwd=root, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  got = np.load(tmp_path / "out.npz")["logits"]
  want, _ = run(chunk_cache_dtype="bfloat16")
  np.testing.assert_allclose(got, want.logits, atol=1e-6, rtol=0)
  assert np.abs(got - run()[0].logits).max() > 0   # not the float32 cache


def test_memory_check_counts_the_cache_at_its_storage_dtype(model, x, run, monkeypatch):
  """The refusal before allocation sizes the kept chunk caches in chunk_cache_dtype: with
  room for 3/4 of the float32 caches, float32 is refused and bfloat16 (half) decodes."""
  import focus_jax.memory
  _, tm = run()
  limit = int(0.75 * tm["cache_bytes"])
  monkeypatch.setattr(focus_jax.memory, "available_bytes", lambda: (limit, "test memory"))
  with pytest.raises(ValueError, match=r"rows, float32\) .* would need .* test memory"):
    generate(ModeSetup("focus", model, focus=FC, chunk_cache_dtype="float32"), x, STEPS,
             stop_at_eos=False)
  tm16 = {}
  generate(ModeSetup("focus", model, focus=FC, chunk_cache_dtype="bfloat16"), x, STEPS,
           stop_at_eos=False, timings=tm16)
  assert tm16["cache_bytes"] * 2 == tm["cache_bytes"] <= limit * 4 / 3 + 1
  # int8 (head_dim + 4 bytes per vector: 20 of 64 here): fits in 0.4 of float32, bfloat16 not
  monkeypatch.setattr(focus_jax.memory, "available_bytes",
                      lambda: (int(0.4 * tm["cache_bytes"]), "test memory"))
  with pytest.raises(ValueError, match=r"rows, bfloat16\) .* would need .* test memory"):
    generate(ModeSetup("focus", model, focus=FC, chunk_cache_dtype="bfloat16"), x, STEPS,
             stop_at_eos=False)
  tm8 = {}
  generate(ModeSetup("focus", model, focus=FC, chunk_cache_dtype="int8"), x, STEPS,
           stop_at_eos=False, timings=tm8)
  assert tm8["cache_bytes"] == tm["cache_bytes"] * (TINY.head_dim + 4) // (4 * TINY.head_dim)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_update_slice_equals_dynamic_update_slice(dtype):
  """update_slice (the cache write of every path) against jax.lax.dynamic_update_slice:
  the same values, float32 updates cast to the buffer's dtype, the same derivatives."""
  from focus_jax.model.llama import update_slice, update_slice_in_dim
  buf = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 3)).astype(dtype)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 5, 3))
  want = jax.lax.dynamic_update_slice(buf, x.astype(dtype), (0, 3, 0, 0))
  got = jax.jit(update_slice)(buf, x, (0, jnp.int32(3), 0, 0))
  assert got.dtype == buf.dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  np.testing.assert_array_equal(np.asarray(update_slice_in_dim(buf, x, 3, 1), np.float32),
                                np.asarray(want, np.float32))
  w = jax.random.normal(jax.random.PRNGKey(2), buf.shape)
  loss = lambda f: lambda b, u: jnp.sum(w * f(b, u).astype(jnp.float32) ** 2)
  ours = jax.grad(loss(lambda b, u: update_slice_in_dim(b, u, 3, 1)), argnums=(0, 1))(buf, x)
  ref = jax.grad(loss(lambda b, u: jax.lax.dynamic_update_slice_in_dim(b, u.astype(dtype), 3, 1)),
                 argnums=(0, 1))(buf, x)
  for a, b in zip(ours, ref):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_bfloat16_cache_writes_are_in_place(model):
  """The compiled chunk encoding and exact step write one batch of rows into a bfloat16
  cache without converting the whole cache: XLA:CPU rewrites a bfloat16
  dynamic_update_slice as convert(update(convert(cache))), which made every call read
  and write every row (encoding time grew with the square of the input length)."""
  import re
  graphdef, state = nnx.split(model)
  mesh, n, size, c = make_mesh(None), 128, 32, S + F + 1
  cache = jax.eval_shape(lambda: init_cache(TINY, n, size, "bfloat16"))
  mem = jnp.zeros((TINY.num_layers, n, TINY.num_kv_heads, TINY.head_dim))
  full = ",".join(map(str, cache.k.shape))
  whole = re.compile(rf"= bf16\[{full}\]\S* (convert|copy)\(")
  encode = P_.encode_fn(graphdef, mesh, 2, True).lower(*_abstract(
      (state, jnp.zeros((n, c), jnp.int32), jnp.ones((n, c), bool), cache, mem, mem,
       jnp.int32(0)))).compile().as_text()
  step = P_.exact_step_fn(graphdef, mesh, step_rows=4).lower(*_abstract(
      (state, cache, jnp.ones((n,), bool), jnp.zeros((2,), jnp.int32), jnp.arange(n),
       jnp.zeros((WL,), jnp.int32), jnp.ones((WL,), bool), jnp.int32(n // 4)))).compile().as_text()
  assert f"bf16[{full}]" in encode and f"bf16[{full}]" in step
  assert not whole.findall(encode) and not whole.findall(step)


# The int8 cache (--chunk_cache_dtype=int8) -------------------------------------------------
def _int8_round_trip(a):
  """Independent numpy quantisation of the last axis: round(a / s) * s, s = max|a| / 127
  (1 for a zero vector), clipped to [-127, 127]: what an int8 cache gives back."""
  a = np.asarray(a, np.float32)
  amax = np.abs(a).max(axis=-1, keepdims=True)
  s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
  return (np.clip(np.round(a / s), -127, 127) * s).astype(np.float32)


def test_int8_quantize_round_trip():
  from focus_jax.model.llama import cache_entry_bytes, cache_values, quantize_int8
  x = (jax.random.normal(jax.random.PRNGKey(3), (4, 3, 5, 8))
       * jnp.array([1e-3, 1, 30, 0])[:, None, None, None])
  packed = quantize_int8(x)
  assert packed.dtype == jnp.int8 and packed.shape == (4, 3, 5, 8 + 4)
  back = np.asarray(cache_values(packed, jnp.float32))
  # the same integers; the scale within an ulp (XLA may divide by 127 as a reciprocal multiply)
  np.testing.assert_allclose(back, _int8_round_trip(x), rtol=2 ** -22, atol=0)
  assert (back[3] == 0).all() and np.isfinite(back).all()           # all-zero vectors
  err = np.abs(back - np.asarray(x))
  assert (err <= np.abs(np.asarray(x)).max(-1, keepdims=True) / 254 * (1 + 1e-6)).all()
  assert [cache_entry_bytes(64, d) for d in ("float32", "bfloat16", "int8")] == [256, 128, 68]


def test_int8_cache_equals_float32_on_the_quantized_cache(model, x, run):
  """Independent path: float32 buffers whose every cached vector is quantised and restored
  in numpy before each step reads it; the int8 cache must compute on exactly those values."""
  gen, tm = run(chunk_cache_dtype="int8")
  f32_bytes = run()[1]["cache_bytes"]
  assert tm["cache_bytes"] == f32_bytes * (TINY.head_dim + 4) // (4 * TINY.head_dim)
  rnd = lambda c: c._replace(k=jnp.asarray(_int8_round_trip(c.k)), v=jnp.asarray(_int8_round_trip(c.v)))
  mesh = make_mesh(None)
  plan = make_plan(x, TINY, FC, row_multiple=1)
  size = round_up(plan.row_len - 1 + STEPS - 1, 16)
  cache, mem_k, mem_v, mem_valid, mem_pos = encode_chunks(model, plan, mesh, 1, keep_cache=True,
                                                          cache_size=size)
  graphdef, state = nnx.split(model)
  local = [int(t) for t in plan.local]
  toks, val = local_input(local)
  rows = [P_.local_fn(graphdef, mesh)(state, mem_k, mem_v, mem_valid, mem_pos, toks, val)]
  step = P_.exact_step_fn(graphdef, mesh)
  prev = local[-1]
  for tok in gen.tokens[:-1].tolist():
    local.append(tok)
    toks, val = local_input(local)
    logits, cache = step(state, rnd(cache), mem_valid, jnp.asarray([prev, tok], jnp.int32),
                         mem_pos, toks, val)
    rows.append(logits)
    prev = tok
  np.testing.assert_allclose(gen.logits, np.stack(rows), atol=1e-5, rtol=0)


def test_int8_cache_close_to_float32(run):
  """int8 with a scale per vector moves each cached entry by at most 1/254 of its vector's
  largest entry: about twice bfloat16's 2^-9 relative step on the largest entries, so the
  logits bound is twice bfloat16's (2^-7 * max|logit|); the first logits are exact."""
  f32, _ = run()
  q8, _ = run(chunk_cache_dtype="int8")
  diff = np.abs(q8.logits - f32.logits)
  assert 0 < diff.max() <= 2 ** -7 * np.abs(f32.logits).max()
  assert diff[0].max() == 0
  bf16, _ = run(chunk_cache_dtype="bfloat16")
  print("max |logit diff| int8", diff.max(), "bfloat16", np.abs(bf16.logits - f32.logits).max())


def test_int8_cache_writes_are_in_place(model):
  """As for bfloat16: the compiled encoding and exact step never convert or copy the whole
  int8 cache."""
  import re
  graphdef, state = nnx.split(model)
  mesh, n, size, c = make_mesh(None), 128, 32, S + F + 1
  cache = jax.eval_shape(lambda: init_cache(TINY, n, size, "int8"))
  assert cache.k.shape[-1] == TINY.head_dim + 4
  mem = jnp.zeros((TINY.num_layers, n, TINY.num_kv_heads, TINY.head_dim))
  full = ",".join(map(str, cache.k.shape))
  whole = re.compile(rf"= s8\[{full}\]\S* (convert|copy)\(|= f32\[{full[:full.rindex(',')]},\d+\]")
  encode = P_.encode_fn(graphdef, mesh, 2, True).lower(*_abstract(
      (state, jnp.zeros((n, c), jnp.int32), jnp.ones((n, c), bool), cache, mem, mem,
       jnp.int32(0)))).compile().as_text()
  step = P_.exact_step_fn(graphdef, mesh, step_rows=4).lower(*_abstract(
      (state, cache, jnp.ones((n,), bool), jnp.zeros((2,), jnp.int32), jnp.arange(n),
       jnp.zeros((WL,), jnp.int32), jnp.ones((WL,), bool), jnp.int32(n // 4)))).compile().as_text()
  assert f"s8[{full}]" in encode and f"s8[{full}]" in step
  assert not whole.findall(encode) and not whole.findall(step)
