"""FocusLLM chunk layout with static shapes (FOCUSLLM.md, "the first call").

For a prompt x[0:L] with chunk size S, local window Wl and fragment length
F = min(fragment_len, S, Wl):
  local  = x[L-Wl : L]             -> local input BOS ++ local (BOS only when local[0] != BOS)
  memory text M = x[0 : L-Wl]      -> n = ceil(len(M) / S) chunks, the last one may be shorter
  fragment q = x[L-F : L]          -> BOS ++ q when q[0] != BOS
  chunk row i = M[i*S : (i+1)*S] ++ q, whose last token (always x[L-1]) is the candidate.

All rows live in ONE array [n_rows, C] with C = S + F + 1 (room for the BOS),
LEFT-padded and marked by `valid`, so every row ends in its candidate and
positions restart at 0 at each row's first valid token. The row count is
bucketed (`row_count`, a multiple of the chunk batch) so that the number
of compilations grows with log(L), not L; padding rows are fully invalid and
their candidates are masked out of the memory (`mem_valid`). Training rows
(data.samples) are built by the same `chunk_rows`, `left_pad` and `row_len`.

Inputs shorter than `min_focus_len` (or with nothing left for the memory)
run the plain model: `plan.focus` is False and `plan.local` is the whole
prompt with BOS prepended when x[0] != BOS.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from focus_jax.config import FocusConfig, ModelConfig


def bucket_count(k: int) -> int:
  """Smallest m * 2**e >= k with m < 8: at most 4 sizes per octave, <= 25% padding."""
  if k < 1:
    raise ValueError(f"bucket_count needs k >= 1, got {k}")
  e = max(0, k.bit_length() - 3)
  return -(-k >> e) << e


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def row_count(n: int, multiple: int) -> int:
  """Rows for n chunks: `multiple * bucket_count(ceil(n / multiple))`."""
  return multiple * bucket_count(-(-n // multiple))


def row_len(chunk_size: int, fragment_len: int) -> int:
  """C = S + F + 1: a chunk, the fragment (F <= S) and room for its BOS."""
  return chunk_size + min(fragment_len, chunk_size) + 1


def with_bos(seq: np.ndarray, bos: int | None) -> np.ndarray:
  """BOS ++ seq, unless seq already starts with BOS (or bos is None)."""
  if bos is None or (seq.size and seq[0] == bos):
    return seq
  return np.concatenate([np.asarray([bos], seq.dtype), seq])


def chunk_rows(memory: np.ndarray, span: np.ndarray, chunk_size: int, fragment_len: int,
               bos: int | None) -> tuple[list[np.ndarray], np.ndarray]:
  """Rows memory[i*S:(i+1)*S] ++ q and q = (BOS ++) span[-F:], F = min(fragment_len, S, len(span)).

  The span is what the candidates continue: the local window, or a training task's span."""
  q = with_bos(span[len(span) - min(fragment_len, chunk_size, len(span)):], bos)
  return [np.concatenate([memory[i:i + chunk_size], q])
          for i in range(0, len(memory), chunk_size)], q


def left_pad(rows, n_rows: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """[n_rows, length] int32 tokens (0-padded) and bool valid, row i right-aligned."""
  if len(rows) > n_rows:
    raise ValueError(f"{len(rows)} rows exceed the layout's {n_rows} rows")
  if max(map(len, rows), default=0) > length:
    raise ValueError(f"a row of {max(map(len, rows))} tokens exceeds the layout length {length}")
  tokens, valid = np.zeros((n_rows, length), np.int32), np.zeros((n_rows, length), bool)
  for i, row in enumerate(rows):
    tokens[i, length - len(row):], valid[i, length - len(row):] = row, True
  return tokens, valid


def row_batch(n_rows: int, multiple: int, at_most: int) -> int:
  """The largest multiple of `multiple` that divides n_rows and is <= max(at_most, multiple).

  n_rows must be a multiple of `multiple` (a plan laid out with row_multiple);
  the rows then split into equal batches of the result.
  """
  if multiple < 1 or n_rows % multiple:
    raise ValueError(f"n_rows ({n_rows}) must be a positive multiple of {multiple}")
  k, cap = n_rows // multiple, max(at_most, multiple) // multiple
  return multiple * max(d for d in range(1, min(k, cap) + 1) if k % d == 0)


@dataclasses.dataclass(frozen=True, eq=False)
class ChunkPlan:
  """The static layout of one FocusLLM prefill (all numpy, host side)."""
  length: int              # L
  focus: bool              # False: the plain model runs on `local`
  chunk_size: int          # S
  fragment_len: int        # F (without the BOS)
  n_chunks: int            # n
  tokens: np.ndarray       # [n_rows, C] int32, left-padded with 0
  valid: np.ndarray        # [n_rows, C] bool
  fragment: np.ndarray     # q (with its BOS when prepended)
  local: np.ndarray        # local input (BOS ++ local), or the plain-model input

  @property
  def n_rows(self) -> int:
    return self.tokens.shape[0]

  @property
  def row_len(self) -> int:
    return self.tokens.shape[1]

  @property
  def mem_valid(self) -> np.ndarray:
    """[n_rows] bool: rows that are real chunks (their candidate is a memory entry)."""
    return np.arange(self.n_rows) < self.n_chunks

  @property
  def mem_pos(self) -> np.ndarray:
    """[n_rows] int32 RoPE position of each row's memory entry (its chunk index)."""
    return np.where(self.mem_valid, np.arange(self.n_rows), 0).astype(np.int32)


def make_plan(ids, cfg: ModelConfig, fcfg: FocusConfig, row_multiple: int = 1) -> ChunkPlan:
  """Lays out prompt `ids` (1-D ints) for FocusLLM.

  row_multiple: the row count is `row_count(n, row_multiple)` (pass the chunk
  batch, itself a multiple of the mesh's chunk-axis size).
  """
  x = np.asarray(ids)
  if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.integer):
    raise ValueError(f"ids must be a non-empty 1-D integer array, got {x.dtype} {x.shape}")
  if x.min() < 0 or x.max() >= cfg.vocab_size:
    raise ValueError(f"ids must lie in [0, {cfg.vocab_size})")
  if cfg.bos_token_id is None:
    raise ValueError("FocusLLM needs the model's bos_token_id (ModelConfig.bos_token_id is None)")
  if row_multiple < 1:
    raise ValueError(f"row_multiple must be >= 1, got {row_multiple}")
  x = x.astype(np.int32)
  bos = int(cfg.bos_token_id)
  big_l, s, wl = x.size, fcfg.chunk_size, fcfg.local_window
  empty = np.zeros((0, 0), np.int32)
  if big_l < fcfg.min_focus_len or big_l <= wl:
    return ChunkPlan(big_l, False, s, 0, 0, empty, empty.astype(bool), x[:0], with_bos(x, bos))

  m = big_l - wl
  f = min(fcfg.fragment_len, s, wl)
  rows, q = chunk_rows(x[:m], x[m:], s, f, bos)
  tokens, valid = left_pad(rows, row_count(len(rows), row_multiple), row_len(s, f))
  return ChunkPlan(big_l, True, s, f, len(rows), tokens, valid, q, with_bos(x[m:], bos))


def shard_order(n_rows: int, shards: int, batch: int) -> np.ndarray:
  """Row permutation for block-cyclic chunk batches over `shards` devices.

  `shard` maps contiguous blocks of n_rows / shards rows to devices, and each
  device runs its block in slices of batch / shards rows. With
  `rows = plan_rows[perm]`, the j-th batch covers chunks [j*batch, (j+1)*batch)
  on all devices together, so trailing all-padding batches can be skipped.
  """
  if batch % shards or n_rows % batch:
    raise ValueError(f"need batch ({batch}) % shards ({shards}) == 0 and "
                     f"n_rows ({n_rows}) % batch == 0")
  per_dev, per_batch = n_rows // shards, batch // shards
  p = np.arange(n_rows)
  dev, r = p // per_dev, p % per_dev
  j, i = r // per_batch, r % per_batch
  return (j * batch + dev * per_batch + i).astype(np.int64)
