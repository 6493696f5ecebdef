"""The memory carries information only after training (tiny model, key-value retrieval).

Documents (data.sources.key_value_documents): pairs k_1 v_1 ... k_n v_n, then the
same pairs in another order. Wherever the local span ends on a key, its value
is nowhere in the local window: only the memory (the chunk rows, one pair per
chunk) holds it. A frozen random tiny model with untrained candidates cannot
use its memory (the held-out loss with the memory is not below the loss
without it); after a short training of the candidate projections it is, by a
margin, on held-out documents never seen in training.
"""
import numpy as np
import pytest

from configs import tiny_kv
from focus_jax.data.sources import key_value_documents
from focus_jax.train.evaluate import evaluate
from focus_jax.train.loop import train

PAIRS, VOCAB = tiny_kv.PAIRS, tiny_kv.VOCAB
STEPS = 200
MARGIN = 1.0  # nats (measured: untrained 0.32, trained 1.72 after 200 steps)


def _config():
  c = tiny_kv.get_config()
  c.steps = STEPS
  c.async_checkpoints, c.tensorboard, c.export_model = False, False, False
  return c


def test_key_value_documents():
  docs = key_value_documents(3, PAIRS, VOCAB, seed=0)
  for d in docs:
    first, second = d[:2 * PAIRS].reshape(-1, 2), d[2 * PAIRS:].reshape(-1, 2)
    keys = first[:, 0]
    assert len(set(keys.tolist())) == PAIRS and keys.max() < 3 + (VOCAB - 3) // 2
    assert first[:, 1].min() >= 3 + (VOCAB - 3) // 2 and first[:, 1].max() < VOCAB
    # the second half is the same pairs in another order
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, second.tolist()))
  held = key_value_documents(3, PAIRS, VOCAB, seed=1000)
  assert not np.array_equal(held[0], docs[0])
  with pytest.raises(ValueError, match="distinct keys"):
    key_value_documents(1, 20, VOCAB)


def test_memory_helps_only_after_training(tmp_path):
  c = _config()
  before = evaluate(c, str(tmp_path), 16, step=0)
  train(c, str(tmp_path))
  after = evaluate(c, str(tmp_path), 16)
  assert after["step"] == STEPS
  # Same held-out tasks, same plain-model baseline before and after.
  assert after["loss_no_memory"] == pytest.approx(before["loss_no_memory"], abs=1e-5)
  # Untrained candidates: the memory does not help.
  assert not before["loss"] < before["loss_no_memory"] - MARGIN, before
  # Trained candidates: the memory lowers the held-out loss.
  assert after["loss"] < after["loss_no_memory"] - MARGIN, after
