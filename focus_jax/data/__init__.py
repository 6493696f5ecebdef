"""Training data: document sources, FocusLLM sample construction, the Grain pipeline."""
from focus_jax.data.pipeline import BatchSpec, step_dataset, step_iterator
from focus_jax.data.samples import (CONTINUATION, LOSS_NAMES, REPETITION, SampleSpec,
                                    chunk_size_for_step, make_tasks, pad_tasks)
from focus_jax.data.sources import TokenWindows, synthetic_documents

__all__ = ["BatchSpec", "step_dataset", "step_iterator", "CONTINUATION", "REPETITION",
           "LOSS_NAMES", "SampleSpec", "chunk_size_for_step", "make_tasks", "pad_tasks",
           "TokenWindows", "synthetic_documents"]
