"""Documents -> token windows: text files, directories, jsonl (focus_jax.text), or synthetic.

`TokenWindows` tokenises the documents of focus_jax.text.read_documents once
(a callable str -> list[int]), keeps one flat int32 array plus a table of
windows: every document is cut into consecutive windows of `max_len` tokens
and windows shorter than `min_len` are dropped. The arrays can be cached on
disk (`cache_dir`), keyed by the inputs and the tokenizer name, and are
memory-mapped on reuse. It is a grain RandomAccessDataSource (`len`,
`__getitem__`).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterable, Sequence

import numpy as np

from focus_jax.text import document_files, read_documents


def synthetic_documents(n_docs: int, length: int, vocab: int, seed: int = 0,
                        period: int = 24, low: int = 3) -> list[np.ndarray]:
  """Copy-task documents: a random block of `period` tokens repeated, Zipf-like ids.

  The next token is determined by the block, which the memory holds; ids start
  at `low` to keep special ids (BOS, EOS) out of the text.
  """
  rng = np.random.default_rng([seed, 77])
  ranks = np.arange(1, vocab - low + 1)
  p = 1.0 / ranks
  p /= p.sum()
  docs = []
  for _ in range(n_docs):
    block = rng.choice(vocab - low, size=period, p=p) + low
    docs.append(np.resize(block, length).astype(np.int32))
  return docs


def key_value_documents(n_docs: int, pairs: int, vocab: int, seed: int = 0,
                        low: int = 3) -> list[np.ndarray]:
  """Retrieval documents: `pairs` key-value pairs k_1 v_1 k_2 v_2 ..., laid out twice.

  Keys are distinct ids from the lower half of [low, vocab), values random ids
  from the upper half, so a value follows only its key. The second copy
  repeats the pairs in a new random order: there, after a key, the value is
  known only from the first copy (the memory), never from nearby text.
  """
  if pairs > (vocab - low) // 2:
    raise ValueError(f"{pairs} distinct keys need vocab >= {low + 2 * pairs}, got {vocab}")
  rng = np.random.default_rng([seed, 78])
  mid = low + (vocab - low) // 2
  docs = []
  for _ in range(n_docs):
    keys = rng.choice(np.arange(low, mid), size=pairs, replace=False)
    vals = rng.integers(mid, vocab, size=pairs)
    perm = rng.permutation(pairs)
    first = np.stack([keys, vals], 1).ravel()
    second = np.stack([keys[perm], vals[perm]], 1).ravel()
    docs.append(np.concatenate([first, second]).astype(np.int32))
  return docs


def window_table(doc_lengths: Sequence[int], min_len: int, max_len: int) -> np.ndarray:
  """[N, 2] (offset, length) of windows cut from documents laid end to end."""
  rows, off = [], 0
  for n in doc_lengths:
    for a in range(0, n, max_len):
      w = min(max_len, n - a)
      if w >= min_len:
        rows.append((off + a, w))
    off += n
  return np.asarray(rows, np.int64).reshape(-1, 2)


class TokenWindows:
  """Token windows of [min_len, max_len] tokens; a grain random-access source."""

  def __init__(self, tokens: np.ndarray, table: np.ndarray):
    self.tokens, self.table = tokens, table
    if len(table) == 0:
      raise ValueError("no document window is long enough; lower min_len or add data")

  def __len__(self) -> int:
    return len(self.table)

  def __getitem__(self, i: int) -> np.ndarray:
    off, n = self.table[i]
    return np.asarray(self.tokens[off:off + n], np.int32)

  def __repr__(self) -> str:
    return f"TokenWindows({len(self)} windows, {len(self.tokens)} tokens)"

  @classmethod
  def from_token_docs(cls, docs: Iterable[Sequence[int]], min_len: int, max_len: int):
    docs = [np.asarray(d, np.int32) for d in docs]
    tokens = np.concatenate(docs) if docs else np.zeros((0,), np.int32)
    return cls(tokens, window_table([len(d) for d in docs], min_len, max_len))

  @classmethod
  def from_paths(cls, paths: Sequence[str], tokenizer: Callable[[str], Sequence[int]],
                 min_len: int, max_len: int, *, jsonl_field: str = "text",
                 cache_dir: str | None = None, tokenizer_name: str = ""):
    """Tokenises the documents under `paths` (cached in cache_dir when given)."""
    key = _cache_key(paths, jsonl_field, tokenizer_name)
    if cache_dir:
      tok_f = os.path.join(cache_dir, f"tokens-{key}.npy")
      len_f = os.path.join(cache_dir, f"doclens-{key}.npy")
      if os.path.exists(tok_f) and os.path.exists(len_f):
        tokens = np.load(tok_f, mmap_mode="r")
        return cls(tokens, window_table(np.load(len_f).tolist(), min_len, max_len))
    docs = [np.asarray(tokenizer(t), np.int32) for _, t in read_documents(paths, jsonl_field)]
    lens = np.asarray([len(d) for d in docs], np.int64)
    tokens = np.concatenate(docs)  # read_documents refuses an empty set
    if cache_dir:
      os.makedirs(cache_dir, exist_ok=True)
      for f, arr in ((tok_f, tokens), (len_f, lens)):
        tmp = f"{f}.tmp{os.getpid()}.npy"
        np.save(tmp, arr)
        os.replace(tmp, f)  # atomic: concurrent writers produce the same bytes
    return cls(tokens, window_table(lens.tolist(), min_len, max_len))


def _cache_key(paths, jsonl_field, tokenizer_name) -> str:
  h = hashlib.sha256(json.dumps([jsonl_field, tokenizer_name]).encode())
  for path in paths:
    for f in document_files(path):
      st = os.stat(f)
      h.update(f"{os.path.abspath(f)}:{st.st_size}:{int(st.st_mtime)}".encode())
  return h.hexdigest()[:16]
