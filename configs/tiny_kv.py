"""A random tiny LLaMA on key-value retrieval documents (tests/test_memory_learns.py).

Documents k_1 v_1 .. k_8 v_8 then the same pairs reordered (data.sources.
key_value_documents); one pair per chunk row (S = 2). Where a local span ends
on a key, its value is only in the memory. Held-out: other documents.
"""
import ml_collections

from configs import tiny

PAIRS, VOCAB = 8, 35


def get_config():
  c = tiny.get_config()
  c.data, c.eval_data = "synthetic_kv", "synthetic_kv:eval"
  c.synthetic_kv = ml_collections.ConfigDict(dict(n_docs=256, pairs=PAIRS, vocab=VOCAB))
  c.min_len = c.max_len = 4 * PAIRS
  c.local_window = 2 * PAIRS
  c.chunk_sizes = (2,)
  c.span_min = 4
  c.steps, c.batch_size, c.lr, c.warmup_steps = 200, 16, 3e-2, 5
  c.checkpoint_every = 1000
  return c
