"""Documents -> token windows: text files, directories, jsonl, or synthetic.

`read_documents` yields document strings from local paths (a .txt-like file is
one document, a directory contributes its files recursively in sorted order, a
.jsonl file one document per line from `jsonl_field`). `TokenWindows`
tokenises them once (a callable str -> list[int]), keeps one flat int32 array
plus a table of windows: every document is cut into consecutive windows of
`max_len` tokens and windows shorter than `min_len` are dropped. The arrays
can be cached on disk (`cache_dir`), keyed by the inputs and the tokenizer
name, and are memory-mapped on reuse. It is a grain RandomAccessDataSource
(`len`, `__getitem__`).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

TEXT_SUFFIXES = (".txt", ".text", ".md")


def _files(path: str) -> list[str]:
  if os.path.isdir(path):
    out = []
    for root, dirs, names in os.walk(path):
      dirs.sort()
      out += [os.path.join(root, n) for n in sorted(names)
              if n.endswith(TEXT_SUFFIXES + (".jsonl",))]
    return out
  if os.path.isfile(path):
    return [path]
  raise FileNotFoundError(f"data path {path!r} is neither a file nor a directory")


def read_documents(paths: Sequence[str], jsonl_field: str = "text") -> Iterator[str]:
  """Yields document texts from files, directories and jsonl files, in a fixed order."""
  for path in paths:
    for f in _files(path):
      if f.endswith(".jsonl"):
        with open(f, "rb") as fh:
          for ln, raw in enumerate(fh, 1):
            try:
              line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
              raise ValueError(f"{f}:{ln}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
              continue
            try:
              rec = json.loads(line)
            except ValueError as e:
              raise ValueError(f"{f}:{ln}: not valid JSON ({e})") from None
            if not isinstance(rec, dict):
              raise ValueError(f"{f}:{ln}: expected a JSON object, got {type(rec).__name__}")
            if jsonl_field not in rec:
              raise ValueError(f"{f}:{ln} has no field {jsonl_field!r} (fields: {sorted(rec)})")
            if not isinstance(rec[jsonl_field], str):
              raise ValueError(f"{f}:{ln}: field {jsonl_field!r} must be a string, got "
                               f"{type(rec[jsonl_field]).__name__}")
            yield rec[jsonl_field]
      else:
        with open(f, encoding="utf-8", errors="replace") as fh:
          yield fh.read()


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
    docs = [np.asarray(tokenizer(t), np.int32) for t in read_documents(paths, jsonl_field)]
    lens = np.asarray([len(d) for d in docs], np.int64)
    tokens = np.concatenate(docs) if docs else np.zeros((0,), np.int32)
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
    for f in _files(path):
      st = os.stat(f)
      h.update(f"{os.path.abspath(f)}:{st.st_size}:{int(st.st_mtime)}".encode())
  return h.hexdigest()[:16]


class ByteTokenizer:
  """UTF-8 bytes shifted by 3 (0 pad, 1 BOS, 2 EOS): vocab 259, for tests and tiny runs."""
  vocab_size, bos_id, eos_id = 259, 1, 2

  def __init__(self, add_bos: bool = True):
    self.add_bos = add_bos

  def __call__(self, text: str) -> list[int]:
    ids = [b + 3 for b in text.encode("utf-8")]
    return [self.bos_id] + ids if self.add_bos else ids

  def decode(self, ids) -> str:
    return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")


def hf_tokenizer(tokenizer_dir: str, add_special_tokens: bool = True):
  """A str -> ids callable from an HF tokenizer directory, and its name for caching."""
  from focus_jax.checkpoint.tokenizer import load_tokenizer
  tok = load_tokenizer(tokenizer_dir)

  def encode(text: str) -> list[int]:
    return tok(text, add_special_tokens=add_special_tokens)["input_ids"]
  return encode, f"{type(tok).__name__}:{tok.name_or_path}:{len(tok)}:{add_special_tokens}"
