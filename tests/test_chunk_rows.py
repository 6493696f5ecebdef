"""One chunk-row layout for training and inference: the inference planner (focus.plan.make_plan)
and the training sample/pad path (data.samples.build_task + pad_tasks) give the same token
arrays for the same text, and both equal a plain loop written here."""
import numpy as np
import pytest

from focus_jax.config import FocusConfig, ModelConfig
from focus_jax.data.samples import CONTINUATION, REPETITION, SampleSpec, build_task, draw_task, pad_tasks
from focus_jax.focus.plan import left_pad, make_plan

TINY = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, bos_token_id=5, eos_token_ids=())
BOS = TINY.bos_token_id
FRAG = 12


def reference_rows(memory, span, s, bos, n_rows, c):
  """Row i = memory[i*s:(i+1)*s] ++ (BOS) ++ last min(FRAG, s, len(span)) span tokens,
  right-aligned in [n_rows, c] zeros; returns tokens, valid and the number of chunks."""
  f = min(FRAG, s, len(span))
  frag = [int(t) for t in span[len(span) - f:]]
  if bos is not None and frag[0] != bos:
    frag = [bos] + frag
  tokens = [[0] * c for _ in range(n_rows)]
  valid = [[False] * c for _ in range(n_rows)]
  i = 0
  for start in range(0, len(memory), s):
    row = [int(t) for t in memory[start:start + s]] + frag
    for j, tok in enumerate(row):
      tokens[i][c - len(row) + j] = tok
      valid[i][c - len(row) + j] = True
    i += 1
  return np.array(tokens, np.int32), np.array(valid, bool), i


def reference_row_count(n, mult):
  """mult * (the smallest v >= ceil(n / mult) with at most its top 3 binary digits set)."""
  v = -(-n // mult)
  while v >= 8 and (v >> (v.bit_length() - 3)) << (v.bit_length() - 3) != v:
    v += 1
  return mult * v


def _spec(s, mult, bos=BOS, buckets="bucket"):
  return SampleSpec(local_window=40, chunk_sizes=(s,), fragment_max=FRAG, span_min=FRAG,
                    max_len=130, bos_id=bos, row_buckets=buckets, row_multiple=mult)


@pytest.mark.parametrize("s", [4, 8, 16])
@pytest.mark.parametrize("mult", [1, 4])
def test_training_rows_are_the_inference_rows(s, mult):
  """A continuation task's rows are FocusLLM's rows for x[:start+m] with local window m."""
  spec = _spec(s, mult)
  c = s + min(FRAG, s) + 1
  for seed in range(12):
    rng = np.random.default_rng(seed)
    x = rng.integers(BOS + 1, TINY.vocab_size, int(rng.integers(40, 131))).astype(np.int32)
    t = draw_task(x, CONTINUATION, spec, rng)
    start, end = t["start"], t["start"] + t["m"]
    if seed % 3 == 1:       # the fragment already starts with BOS: no second one
      x[end - min(FRAG, s)] = BOS
    if seed % 3 == 2:       # BOS inside the memory and at the local input's start
      x[start // 2] = x[start] = BOS
    batch = pad_tasks([[build_task(x, t, s, spec)]], spec)
    focus = FocusConfig(chunk_size=s, local_window=t["m"], fragment_len=FRAG, min_focus_len=0)
    plan = make_plan(x[:end], TINY, focus, row_multiple=mult)
    n = -(-start // s)
    want_tok, want_valid, n_ref = reference_rows(x[:start], x[start:end], s, BOS,
                                                 reference_row_count(n, mult), c)
    assert n_ref == n == plan.n_chunks == batch["n_memory"][0, 0]
    np.testing.assert_array_equal(plan.tokens, want_tok)
    np.testing.assert_array_equal(plan.valid, want_valid)
    np.testing.assert_array_equal(batch["chunk_tokens"][0, 0], want_tok)
    np.testing.assert_array_equal(batch["chunk_valid"][0, 0], want_valid)
    np.testing.assert_array_equal(batch["chunk_tokens"][0, 0], plan.tokens)
    # the local input too: (BOS) ++ the span, left-padded in training
    local = batch["local_tokens"][0, 0][batch["local_valid"][0, 0]]
    want_local = x[start:end].tolist() if x[start] == BOS else [BOS] + x[start:end].tolist()
    assert local.tolist() == plan.local.tolist() == want_local


@pytest.mark.parametrize("bos", [BOS, None])
def test_training_rows_match_the_loop_for_both_losses(bos):
  """Fixed row counts, repetition (memory = the whole window) and no BOS at all."""
  s, mult = 8, 4
  spec = _spec(s, mult, bos=bos, buckets="fixed")
  c = s + min(FRAG, s) + 1
  rows = -(-(-(-130 // s)) // mult) * mult       # ceil(max_len / s) rounded up to mult
  for seed in range(8):
    rng = np.random.default_rng(seed)
    x = rng.integers(BOS + 1, TINY.vocab_size, int(rng.integers(40, 131))).astype(np.int32)
    tasks = [draw_task(x, k, spec, rng) for k in (CONTINUATION, REPETITION)]
    batch = pad_tasks([[build_task(x, t, s, spec) for t in tasks]], spec)
    assert batch["chunk_tokens"].shape == (1, 2, rows, c)
    for j, t in enumerate(tasks):
      tok, val, n = reference_rows(x[:t["mem_end"]], x[t["start"]:t["start"] + t["m"]], s, bos,
                                   rows, c)
      assert batch["n_memory"][0, j] == n == -(-t["mem_end"] // s)
      np.testing.assert_array_equal(batch["chunk_tokens"][0, j], tok)
      np.testing.assert_array_equal(batch["chunk_valid"][0, j], val)


def test_left_pad_refuses_what_does_not_fit():
  tok, val = left_pad([np.array([5, 6], np.int32), np.array([7], np.int32)], 3, 4)
  assert tok.tolist() == [[0, 0, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]]
  assert val.tolist() == [[False, False, True, True], [False, False, False, True], [False] * 4]
  with pytest.raises(ValueError, match="3 rows exceed the layout's 2 rows"):
    left_pad([np.zeros(1, np.int32)] * 3, 2, 4)
  with pytest.raises(ValueError, match="a row of 5 tokens exceeds the layout length 4"):
    left_pad([np.zeros(5, np.int32)], 2, 4)
