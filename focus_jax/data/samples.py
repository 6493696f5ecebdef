"""FocusLLM training samples: the two losses' tasks built from one token window.

A task is one (memory, span, target) triple (FOCUSLLM.md, Training):
  k = L // Wl full windows; span length m; target(s) right after the span.
  continuation: start = (k-1)*Wl + o, o in [1, Wl-m-1), memory = x[0:start].
  repetition:   start = c*Wl + o, c in [0, k), o in [0, Wl-m), memory = x.
  chunk i input = memory[i*S:(i+1)*S] ++ (BOS) ++ last F span tokens,
    F = min(fragment_max, S, m); its last token is the candidate (the rows
    of inference: focus.plan.chunk_rows, left_pad, row_len(S, fragment_max)).
  local = (BOS) ++ x[start : start+m+K-1]; targets = x[start+m : start+m+K].
K (`target_tokens`) is 1 in the official setup; with K > 1 the positions after
the span also predict their next token from the same memory. BOS is
prepended only when the sequence does not already start with it.

Every random choice comes from `np.random.default_rng([seed, tag, index])`,
so a sample is a pure function of (seed, global sample index). The chunk size
S is drawn per optimiser step (index // samples_per_step), so that all samples
of one step share one static shape.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from focus_jax.focus import plan

CONTINUATION, REPETITION = 0, 1
LOSS_NAMES = ("continuation", "repetition")
_TAG_SAMPLE, _TAG_CHUNK, _TAG_RETRIEVAL = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  """How samples are drawn and laid out (sizes in tokens)."""
  local_window: int = 3072                       # Wl
  chunk_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)  # S choices
  fragment_max: int = 512                        # official hard-coded 512
  span_min: int = 30
  target_tokens: int = 1                         # K
  loss_mix: str = "both"                         # "both" or "random"
  max_len: int = 8192                            # longest window (static shapes)
  bos_id: int | None = 1
  row_buckets: str = "fixed"                     # "fixed" (one shape per S) or "bucket"
  row_multiple: int = 1                          # rows padded to a multiple (chunk devices)
  retrieval_frac: float = 0.0                    # share of samples made fact-retrieval documents

  def __post_init__(self):
    if self.loss_mix not in ("both", "random"):
      raise ValueError(f"loss_mix must be 'both' or 'random', got {self.loss_mix!r}")
    if self.row_buckets not in ("fixed", "bucket"):
      raise ValueError(f"row_buckets must be 'fixed' or 'bucket', got {self.row_buckets!r}")
    if not self.chunk_sizes or min(self.chunk_sizes) < 1:
      raise ValueError(f"chunk_sizes must be positive, got {self.chunk_sizes}")
    if not 0.0 <= self.retrieval_frac <= 1.0:
      raise ValueError(f"retrieval_frac must be in [0, 1], got {self.retrieval_frac}")
    if self.retrieval_frac > 0 and self.target_tokens > 1:
      raise ValueError(f"retrieval_frac > 0 needs target_tokens = 1, got {self.target_tokens}: "
                       "a fact document ends at its answer, so it has fewer than K targets")
    if self.target_tokens < 1 or self.fragment_max < 1 or self.row_multiple < 1:
      raise ValueError("target_tokens, fragment_max and row_multiple must be >= 1")
    if self.span_min < 1 or self.span_max < self.span_min:
      raise ValueError(f"local_window={self.local_window} leaves no span length in "
                       f"[{self.span_min}, Wl-K-2] (K={self.target_tokens})")
    if self.max_len < self.local_window:
      raise ValueError(f"max_len ({self.max_len}) must be >= local_window ({self.local_window})")

  @property
  def span_max(self) -> int:
    """Largest m leaving a non-empty continuation offset range [1, Wl-m-K)."""
    return self.local_window - self.target_tokens - 2

  @property
  def tasks_per_sample(self) -> int:
    return 2 if self.loss_mix == "both" else 1

  def row_len(self, s: int) -> int:
    return plan.row_len(s, self.fragment_max)

  def max_rows(self, s: int) -> int:
    return -(-self.max_len // s)

  @property
  def local_len(self) -> int:
    return self.span_max + self.target_tokens  # BOS + m + K - 1 at most


def chunk_size_for_step(spec: SampleSpec, seed: int, step: int) -> int:
  rng = np.random.default_rng([seed, _TAG_CHUNK, step])
  return int(spec.chunk_sizes[rng.integers(len(spec.chunk_sizes))])


def draw_task(x: np.ndarray, kind: int, spec: SampleSpec, rng: np.random.Generator) -> dict:
  """Draws span length and start for one loss on window x; returns the task's positions."""
  wl, kk = spec.local_window, spec.target_tokens
  n_win = len(x) // wl
  if n_win < 1:
    raise ValueError(f"window of {len(x)} tokens is shorter than local_window={wl}")
  m = int(rng.integers(spec.span_min, spec.span_max + 1))
  if kind == CONTINUATION:
    start = (n_win - 1) * wl + int(rng.integers(1, wl - m - kk))
    mem_end = start
  elif kind == REPETITION:
    start = int(rng.integers(0, n_win)) * wl + int(rng.integers(0, wl - m - kk + 1))
    mem_end = len(x)
  else:
    raise ValueError(f"unknown loss kind {kind}")
  assert start + m + kk <= len(x)
  return dict(kind=kind, start=start, m=m, mem_end=mem_end)


def build_task(x: np.ndarray, task: dict, s: int, spec: SampleSpec) -> dict:
  """Token lists of one task: chunk rows, local input and targets (unpadded)."""
  start, m, kk = task["start"], task["m"], spec.target_tokens
  rows, _ = plan.chunk_rows(x[:task["mem_end"]], x[start:start + m], s, spec.fragment_max,
                            spec.bos_id)
  local = plan.with_bos(x[start:start + m + kk - 1], spec.bos_id)
  return dict(kind=task["kind"], chunk_size=s, rows=rows, local=local,
              targets=x[start + m:start + m + kk])


def retrieval_task(doc: np.ndarray, target: int, spec: SampleSpec,
                   rng: np.random.Generator) -> dict:
  """The continuation task whose target is doc[target] (a fact's digit, data.retrieval)."""
  m = int(rng.integers(spec.span_min, min(spec.span_max, target) + 1))
  start = target - m
  return dict(kind=CONTINUATION, start=start, m=m, mem_end=start)


def make_tasks(x: np.ndarray, spec: SampleSpec, seed: int, index: int,
               samples_per_step: int, facts=None) -> list[dict]:
  """All tasks of global sample `index` (one per loss, or one random loss).

  facts: a data.retrieval.FactInserter; with spec.retrieval_frac > 0 that
  share of samples becomes a retrieval document whose continuation task
  targets a fact's digit (the other samples are unchanged: the choice and the
  document come from their own random stream).
  """
  x = np.asarray(x, np.int32)
  if len(x) > spec.max_len:
    raise ValueError(f"window of {len(x)} tokens exceeds max_len={spec.max_len}")
  rng = np.random.default_rng([seed, _TAG_SAMPLE, index])
  s = chunk_size_for_step(spec, seed, index // samples_per_step)
  kinds = [CONTINUATION, REPETITION] if spec.loss_mix == "both" else [int(rng.integers(2))]
  made = None
  if spec.retrieval_frac > 0:
    if facts is None:
      raise ValueError("retrieval_frac > 0 needs a FactInserter (facts=)")
    rrng = np.random.default_rng([seed, _TAG_RETRIEVAL, index])
    if rrng.random() < spec.retrieval_frac:
      made = facts(x, rrng, spec.local_window)
  if made is None:
    return [build_task(x, draw_task(x, k, spec, rng), s, spec) for k in kinds]
  x, target = made
  tasks = []
  for k in kinds:
    draw = draw_task(x, k, spec, rng)   # same draws as without facts: other samples unchanged
    tasks.append(build_task(x, retrieval_task(x, target, spec, rrng) if k == CONTINUATION
                            else draw, s, spec))
  return tasks


def _bucket_rows(n: int, s: int, spec: SampleSpec) -> int:
  """Row count of the layout: the most any sample can need, or focus.plan's buckets."""
  cap = plan.round_up(spec.max_rows(s), spec.row_multiple)
  return cap if spec.row_buckets == "fixed" else min(cap, plan.row_count(n, spec.row_multiple))


def pad_tasks(samples: Sequence[Sequence[dict]], spec: SampleSpec) -> dict:
  """Stacks the tasks of several samples into static, padded arrays.

  Shapes (N samples, T tasks, R rows, C row length, Lq local length, K):
    chunk_tokens [N,T,R,C] int32, chunk_valid [N,T,R,C]: rows LEFT-padded so
      that every row ends in its candidate (the layout of focus.plan; rows past
      n_memory are all padding), local_tokens [N,T,Lq] (left-padded),
    local_valid [N,T,Lq], targets [N,T,K], n_memory [N,T] (rows in use),
    kind [N,T] (CONTINUATION or REPETITION).
  """
  tasks = [t for smp in samples for t in smp]
  n, nt = len(samples), len(samples[0])
  s = _infer_chunk_size(tasks)
  r = _bucket_rows(max(len(t["rows"]) for t in tasks), s, spec)
  chunk_tokens, chunk_valid = map(np.stack, zip(*[plan.left_pad(t["rows"], r, spec.row_len(s))
                                                  for t in tasks]))
  local_tokens, local_valid = plan.left_pad([t["local"] for t in tasks], len(tasks), spec.local_len)
  out = dict(chunk_tokens=chunk_tokens, chunk_valid=chunk_valid, local_tokens=local_tokens,
             local_valid=local_valid,
             targets=np.asarray([t["targets"] for t in tasks], np.int32),
             n_memory=np.array([len(t["rows"]) for t in tasks], np.int32),
             kind=np.array([t["kind"] for t in tasks], np.int32))
  return {k: v.reshape((n, nt) + v.shape[1:]) for k, v in out.items()}


def _infer_chunk_size(tasks) -> int:
  sizes = {t["chunk_size"] for t in tasks if "chunk_size" in t}
  if len(sizes) != 1:
    raise ValueError(f"all tasks of one batch need one chunk size, got {sorted(sizes)}")
  return sizes.pop()
