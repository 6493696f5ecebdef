"""FocusConfig.bos_sees_memory=False (not the official layout): the local BOS, the attention
sink, does not attend to the memory, in every inference path (exact and fast decoding, the
batched exact pass) and in training's local loss, so candidates trained that way
(TrainConfig.bos_sees_memory=False) are evaluated the way they were trained.

Reference: tests/focus_reference.py builds the BOS's K/V from a run of the BOS alone at its
position and adds them to the prefix that the other local tokens read (no mask order)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_reference import TINY, local_logits, reference_focus, tiny_model
from focus_jax.config import FocusConfig
from focus_jax.focus import exact_batch as E
from focus_jax.focus.losses import local_losses
from focus_jax.generation.modes import ModeSetup, generate

S, WL, F, T = 16, 24, 8, 40
FC = FocusConfig(chunk_size=S, local_window=WL, fragment_len=F, min_focus_len=T,
                 bos_sees_memory=False)
BOS = TINY.bos_token_id


@pytest.fixture(scope="module")
def model():
  return tiny_model()


def prompt(length, seed):
  return np.random.default_rng(seed).integers(BOS + 1, TINY.vocab_size, size=length).astype(
      np.int32)


class _Forced:
  def __init__(self, tokens):
    self.tokens = [int(t) for t in tokens]

  def pick(self, logits, step):
    return self.tokens[step]


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_decoding_matches_reference(model, decode):
  x = prompt(90, seed=11)
  gen = generate(ModeSetup("focus", model, focus=FC, focus_decode=decode, chunk_batch=2), x, 4)
  fast = decode == "fast"
  ref = reference_focus(model, x, S, WL, F, gen.tokens[:-1], frozen_memory=fast,
                        bos_sees_memory=False)
  np.testing.assert_allclose(gen.logits, ref, atol=1e-5, rtol=0)
  official = reference_focus(model, x, S, WL, F, gen.tokens[:-1], frozen_memory=fast)
  assert np.abs(official - ref).max() > 1e-2   # the setting does change what is computed


def test_batched_exact_pass_equals_exact_decoding(model):
  ids = prompt(95, seed=3)
  k = 5
  head, targets = ids[:-k], ids[-k:]
  ref = generate(ModeSetup("focus", model, focus=FC), head, k, _Forced(targets),
                 stop_at_eos=False).logits
  got = E.exact_logits(model, head, targets, focus=FC)
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
  official = E.exact_logits(model, head, targets, focus=dataclasses.replace(
      FC, bos_sees_memory=True))
  assert np.abs(official - got).max() > 1e-2


def test_training_loss_matches_reference(model):
  """local_losses(bos_sees_memory=False): one task, 3 memory entries and a padding row, a
  left-padded local input; the mean NLL of its last K targets from the reference's logits."""
  cfg = TINY
  rng = np.random.default_rng(0)
  rows, n, k = 4, 3, 2
  shape = (cfg.num_layers, 1, rows, cfg.num_kv_heads, cfg.head_dim)
  mem_k = jnp.asarray(rng.normal(size=shape), jnp.float32)
  mem_v = jnp.asarray(rng.normal(size=shape), jnp.float32)
  real = [BOS] + prompt(9, seed=5).tolist()
  pad = 3
  tokens = jnp.asarray([[0] * pad + real], jnp.int32)
  valid = jnp.asarray([[False] * pad + [True] * len(real)])
  targets = jnp.asarray([prompt(k, seed=6)], jnp.int32)
  for bos_sees in (False, True):
    got = local_losses(model, mem_k, mem_v, jnp.asarray([n]), tokens, valid, targets,
                       bos_sees_memory=bos_sees)
    mem = [(mem_k[:, 0, r], mem_v[:, 0, r]) for r in range(n)]
    nll = []
    for j in range(k):
      lg = local_logits(model, mem, real[:len(real) - k + j + 1], bos_sees_memory=bos_sees)
      nll.append(-jax.nn.log_softmax(jnp.asarray(lg))[int(targets[0, j])])
    np.testing.assert_allclose(float(got[0]), float(np.mean(nll)), atol=1e-5, rtol=0)


def test_setting_is_stored_and_checked():
  from configs import tiny
  from focus_jax.train import setup
  from focus_jax.train.run_config import TrainConfig
  d = FC.to_dict()
  assert d["bos_sees_memory"] is False and FocusConfig.from_dict(d) == FC
  assert FocusConfig.from_dict({}).bos_sees_memory is True            # the official layout
  with pytest.raises(ValueError, match="bos_sees_memory must be true or false"):
    FocusConfig.from_dict({"bos_sees_memory": "no"})
  c = tiny.get_config()
  assert setup.focus_config(TrainConfig.from_config(c)).bos_sees_memory is True
  c.bos_sees_memory = False     # what the trainer writes to the model's focus_config.json
  assert setup.focus_config(TrainConfig.from_config(c)).bos_sees_memory is False
