"""FocusLLM training data: sources, sample construction (FOCUSLLM.md), Grain pipeline."""
import json

import numpy as np
import pytest

from focus_jax.data import (CONTINUATION, REPETITION, BatchSpec, SampleSpec,
                            TokenWindows, make_tasks, pad_tasks, step_dataset, step_iterator,
                            synthetic_documents)
from focus_jax.data.samples import build_task, draw_task
from focus_jax.text import ByteTokenizer

BOS = 1
SPEC = SampleSpec(local_window=40, chunk_sizes=(8, 16), fragment_max=12, span_min=6,
                  max_len=130, bos_id=BOS)


def _window(n, seed=0):
  return np.random.default_rng(seed).integers(3, 200, size=n).astype(np.int32)


@pytest.mark.parametrize("kind", [CONTINUATION, REPETITION])
@pytest.mark.parametrize("target_tokens", [1, 3])
def test_task_matches_the_paper_recipe(kind, target_tokens):
  spec = SampleSpec(**{**SPEC.__dict__, "target_tokens": target_tokens})
  wl, kk = spec.local_window, target_tokens
  for seed in range(40):
    x = _window(int(np.random.default_rng(seed).integers(wl, 131)), seed)
    k = len(x) // wl
    rng = np.random.default_rng(seed)
    t = draw_task(x, kind, spec, rng)
    start, m = t["start"], t["m"]
    assert spec.span_min <= m <= wl - kk - 2
    if kind == CONTINUATION:
      o = start - (k - 1) * wl
      assert 1 <= o < wl - m - kk and t["mem_end"] == start
    else:
      o = start % wl
      assert start // wl < k and 0 <= o <= wl - m - kk and t["mem_end"] == len(x)
    s = 8
    task = build_task(x, t, s, spec)
    f = min(spec.fragment_max, s, m)
    frag = np.concatenate([[BOS], x[start + m - f:start + m]])
    mem = x[:t["mem_end"]]
    assert len(task["rows"]) == -(-len(mem) // s)
    for i, row in enumerate(task["rows"]):
      np.testing.assert_array_equal(row, np.concatenate([mem[i * s:(i + 1) * s], frag]))
    np.testing.assert_array_equal(task["local"], np.concatenate([[BOS], x[start:start + m + kk - 1]]))
    np.testing.assert_array_equal(task["targets"], x[start + m:start + m + kk])


def test_samples_are_a_function_of_seed_and_index():
  x = _window(130)
  a = make_tasks(x, SPEC, seed=3, index=17, samples_per_step=4)
  b = make_tasks(x, SPEC, seed=3, index=17, samples_per_step=4)
  c = make_tasks(x, SPEC, seed=3, index=18, samples_per_step=4)
  assert [t["local"].tolist() for t in a] == [t["local"].tolist() for t in b]
  assert [t["local"].tolist() for t in a] != [t["local"].tolist() for t in c]
  assert [t["kind"] for t in a] == [CONTINUATION, REPETITION]
  # one chunk size per optimiser step
  sizes = {make_tasks(x, SPEC, 3, i, 4)[0]["chunk_size"] for i in range(16, 20)}
  assert len(sizes) == 1
  rnd = SampleSpec(**{**SPEC.__dict__, "loss_mix": "random"})
  kinds = {make_tasks(x, rnd, 3, i, 4)[0]["kind"] for i in range(40)}
  assert kinds == {CONTINUATION, REPETITION}


def test_padding_is_left_aligned_and_static():
  xs = [_window(130, 1), _window(45, 2)]
  arr = pad_tasks([make_tasks(x, SPEC, 0, i, 2) for i, x in enumerate(xs)], SPEC)
  s = make_tasks(xs[0], SPEC, 0, 0, 2)[0]["chunk_size"]
  n, t, r, c = arr["chunk_tokens"].shape
  assert (n, t, r, c) == (2, 2, SPEC.max_rows(s), SPEC.row_len(s))
  assert arr["local_tokens"].shape == (2, 2, SPEC.local_len)
  for i in range(2):
    for j in range(2):
      nm = arr["n_memory"][i, j]
      assert arr["chunk_valid"][i, j, :nm, -1].all() and not arr["chunk_valid"][i, j, nm:].any()
      v = arr["chunk_valid"][i, j, :nm]
      assert (np.diff(v.astype(int), axis=1) >= 0).all()  # left padding
      assert arr["local_valid"][i, j, -1] and arr["local_tokens"][i, j][arr["local_valid"][i, j]][0] == BOS


def test_sources_text_dirs_jsonl_and_length_filter(tmp_path):
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "a.txt").write_text("x" * 50)
  (tmp_path / "d" / "b.txt").write_text("y" * 10)        # too short: dropped
  with open(tmp_path / "c.jsonl", "w") as f:
    f.write(json.dumps({"body": "z" * 45}) + "\n" + json.dumps({"body": "w" * 5}) + "\n")
  tok = ByteTokenizer()
  enc = lambda s: tok.encode(s, add_special_tokens=False)
  src = TokenWindows.from_paths([str(tmp_path / "d"), str(tmp_path / "c.jsonl")], enc,
                                min_len=20, max_len=30, jsonl_field="body",
                                cache_dir=str(tmp_path / "cache"), tokenizer_name="byte")
  # a.txt -> windows 30 + 20; c.jsonl line 1 -> 30 (the 15 left over is dropped)
  assert [len(src[i]) for i in range(len(src))] == [30, 20, 30]
  assert tok.decode(src[2]) == "z" * 30
  again = TokenWindows.from_paths([str(tmp_path / "d"), str(tmp_path / "c.jsonl")], None,
                                  min_len=20, max_len=30, jsonl_field="body",
                                  cache_dir=str(tmp_path / "cache"), tokenizer_name="byte")
  assert [src[i].tolist() for i in range(3)] == [again[i].tolist() for i in range(3)]
  with pytest.raises(ValueError, match=r"c.jsonl:1 has no field .text."):
    TokenWindows.from_paths([str(tmp_path / "c.jsonl")], enc, 20, 30)


def _source():
  return TokenWindows.from_token_docs(synthetic_documents(12, 300, 50), 40, 130)


def test_host_shards_cover_the_global_step_and_iterator_resumes():
  src = _source()
  one = step_dataset(src, SPEC, BatchSpec(global_batch=4, accum=2), seed=5)
  two = [step_dataset(src, SPEC, BatchSpec(global_batch=4, accum=2, process_index=h,
                                           process_count=2), seed=5) for h in range(2)]
  for step in (0, 3):
    full = one[step]["targets"].reshape(8, -1)
    parts = np.concatenate([d[step]["targets"].reshape(4, -1) for d in two])
    assert sorted(map(tuple, full.tolist())) == sorted(map(tuple, parts.tolist()))
  it = step_iterator(src, SPEC, BatchSpec(global_batch=2), seed=5)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = next(it)
  it2 = step_iterator(src, SPEC, BatchSpec(global_batch=2), seed=5)
  it2.set_state(state)
  got = next(it2)
  for k in want:
    np.testing.assert_array_equal(want[k], got[k])
