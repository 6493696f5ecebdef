"""The Grain pipeline: token windows -> FocusLLM tasks -> padded per-host step batches.

  windows (shuffled each epoch, repeated forever)
    -> map_with_index: tasks of global sample i (random choices from (seed, i))
    -> this host's slice [process_index::process_count]
    -> batch of one optimiser step for this host, padded to static shapes,
       reshaped to [accum, per_host_batch, tasks, ...].

Global step s covers global samples [s*G, (s+1)*G) (G = samples per step), on
any number of hosts, so the data order does not depend on the host count.
The iterator is a grain DatasetIterator: `get_state()` / `set_state()` (or
grain.checkpoint.CheckpointSave / CheckpointRestore with Orbax) resume it.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np

from focus_jax.data.samples import SampleSpec, make_tasks, pad_tasks


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """How samples are grouped: per optimiser step, per host, per micro-batch."""
  global_batch: int = 8       # samples per micro-batch over all hosts
  accum: int = 1              # micro-batches per optimiser step
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.global_batch % self.process_count:
      raise ValueError(f"global_batch ({self.global_batch}) must be a multiple of the "
                       f"process count ({self.process_count})")
    if self.accum < 1 or not 0 <= self.process_index < self.process_count:
      raise ValueError("accum must be >= 1 and 0 <= process_index < process_count")

  @property
  def per_host_batch(self) -> int:
    return self.global_batch // self.process_count

  @property
  def samples_per_step(self) -> int:
    return self.global_batch * self.accum


def step_dataset(source, spec: SampleSpec, batch: BatchSpec, seed: int,
                 facts=None) -> grain.MapDataset:
  """A MapDataset whose element s is this host's batch of optimiser step s.

  facts: data.retrieval.FactInserter for spec.retrieval_frac > 0."""
  g = batch.samples_per_step

  def tasks(index, x):
    return make_tasks(x, spec, seed, index, g, facts)

  def collate(samples):
    arrays = pad_tasks(samples, spec)
    a, b = batch.accum, batch.per_host_batch
    return {k: v.reshape((a, b) + v.shape[1:]) for k, v in arrays.items()}

  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  ds = ds.map_with_index(tasks)
  ds = ds[batch.process_index::batch.process_count]
  # drop_remainder: the stream is endless, and grain computes the length of an
  # endless dataset batched without it in floating point (overflow for size 1).
  return ds.batch(batch.accum * batch.per_host_batch, drop_remainder=True, batch_fn=collate)


def step_iterator(source, spec: SampleSpec, batch: BatchSpec, seed: int, *,
                  prefetch: int = 2, threads: int = 1, facts=None):
  """A checkpointable iterator over step batches (grain DatasetIterator)."""
  ds = step_dataset(source, spec, batch, seed, facts)
  opts = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(opts))


def describe(batch_arrays: dict) -> str:
  """One line with the shapes of a step batch (for logs)."""
  return ", ".join(f"{k}{list(np.shape(v))}" for k, v in sorted(batch_arrays.items()))
