"""The batched exact pass (focus_jax.focus.exact_batch) equals K steps of exact decoding.

Reference: exact decoding (generation.modes.generate) with the targets forced as the
generated tokens (one chunk update and one local recomputation per target).
Layouts: several K, chunk sizes with a last chunk shorter than S, fragment
lengths capped by S or Wl, padding rows (bucketed row counts), several chunk
rows per call and local rows in groups; the training function under jit and
grad; and (in a subprocess with 8 host devices) chunk rows split over a mesh.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from focus_reference import TINY, tiny_model
from focus_jax.config import FocusConfig
from focus_jax.focus import exact_batch as E
from focus_jax.generation.modes import ModeSetup, generate
from focus_jax.model import CandidateParam, init_cache

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOL = 1e-4


class _Forced:
  def __init__(self, tokens):
    self.tokens = [int(t) for t in tokens]

  def pick(self, logits, step):
    return self.tokens[step]


def _sample(length, seed):
  ids = np.random.default_rng(seed).integers(6, TINY.vocab_size, length).astype(np.int32)
  ids[0] = TINY.bos_token_id
  return ids


def _reference(model, prompt, targets, fc, decode="exact"):
  return generate(ModeSetup("focus", model, focus=fc, focus_decode=decode), prompt, len(targets),
                  _Forced(targets), stop_at_eos=False).logits


@pytest.fixture(scope="module")
def model():
  return tiny_model()


# (window length, K, S, Wl, F): memories of 66, 79, 19, 30 tokens (last chunks of 2, 15, 1
# and 30 < S tokens; the last case a single chunk); fragments of 8, 10 (F capped by Wl), 9
# (capped by S) and 5 tokens; K = 1, 5, 9, 16 (16 > Wl - F: the fragment grows past Wl).
CASES = [(95, 5, 16, 24, 8), (98, 9, 16, 10, 12), (40, 1, 9, 20, 12), (66, 16, 32, 20, 5)]
CHECK_FAST = (95, 5, 16, 24, 8)


@pytest.mark.parametrize("length,k,s,wl,f", CASES)
def test_batched_equals_exact_decoding(model, length, k, s, wl, f):
  fc = FocusConfig(chunk_size=s, local_window=wl, fragment_len=f, min_focus_len=20)
  ids = _sample(length, seed=length + k)
  prompt, targets = ids[:-k], ids[-k:]
  ref = _reference(model, prompt, targets, fc)
  got = E.exact_logits(model, prompt, targets, focus=fc)
  assert got.shape == ref.shape == (k, TINY.vocab_size)
  np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
  if (length, k, s, wl, f) == CHECK_FAST:   # the memory does change with the forced tokens: the frozen one is far off
    fast = _reference(model, prompt, targets, fc, decode="fast")
    np.testing.assert_allclose(fast[0], ref[0], atol=TOL, rtol=0)
    assert np.abs(fast[1:] - ref[1:]).max() > 100 * TOL


SMALL = FocusConfig(chunk_size=8, local_window=12, fragment_len=6, min_focus_len=20)


@pytest.fixture(scope="module")
def small_case(model):
  """A window of 80 tokens, K = 7 (8 chunks of 8) and its reference logits."""
  ids = _sample(80, seed=3)
  prompt, targets = ids[:-7], ids[-7:]
  return prompt, targets, _reference(model, prompt, targets, SMALL)


def test_chunk_and_local_batches(model, small_case, monkeypatch):
  """Chunk rows in several calls of 3 rows (a padding row in the last one) and local
  rows in groups of 3 (a padded last group) give the same logits."""
  monkeypatch.setattr(E, "CHUNK_TOKENS", 1)   # rows per call: chunk_batch alone
  prompt, targets, ref = small_case
  timings = {}
  got = E.exact_logits(model, prompt, targets, focus=SMALL, chunk_batch=3, local_batch=3,
                       timings=timings)
  assert timings["chunk_batch"] == 3 and timings["local_batch"] == 3
  assert (timings["n_chunks"], timings["n_rows"]) == (8, 9)   # (80 - 7 - 12) / 8 -> 8 chunks
  np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


def test_too_short_is_refused(model):
  fc = FocusConfig(chunk_size=8, local_window=12, fragment_len=6, min_focus_len=100)
  ids = _sample(40, seed=4)
  with pytest.raises(ValueError, match="no FocusLLM memory"):
    E.exact_logits(model, ids[:-3], ids[-3:], focus=fc)


def test_nan_and_oversized_are_refused(model, small_case):
  """NaN logits stop the pass as they stop exact decoding; a pass too large for the
  machine is refused before anything is allocated."""
  from focus_jax.generation.decode import NonFiniteLogits
  prompt, targets, _ = small_case
  broken = nnx.clone(model)
  k = broken.model.layers.self_attn.candidate_k_proj.kernel   # NaN memory keys
  k[...] = k[...] * np.nan
  with pytest.raises(NonFiniteLogits, match="at generation step 0"):
    E.exact_logits(broken, prompt, targets, focus=SMALL)
  with pytest.raises(ValueError, match=r"exact pass over 8 chunks .* would need"):
    E.exact_logits(model, prompt, np.full(10_000_000, 7, np.int32), focus=SMALL)


def test_training_function_value_and_gradient(model, small_case):
  """target_logprobs: jitted value = log-softmax of the reference rows; its gradient in
  the candidate parameters matches a central difference along a random direction."""
  prompt, targets, ref = small_case
  k = len(targets)
  ref_lp = np.asarray(jax.nn.log_softmax(jnp.asarray(ref)))[np.arange(k), targets]
  arrays = E.sample_arrays(prompt, targets, model.config, SMALL)
  graphdef, cand, rest = nnx.split(model, CandidateParam, ...)

  @jax.jit
  @jax.value_and_grad
  def loss_grad(cand):
    m = nnx.merge(graphdef, cand, rest)
    return -E.target_logprobs(m, targets=targets, **arrays).sum()

  value, grad = loss_grad(cand)
  np.testing.assert_allclose(float(value), -ref_lp.sum(), atol=1e-4, rtol=0)
  leaves, tree = jax.tree.flatten(cand)
  keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
  d = jax.tree.unflatten(tree, [jax.random.normal(kk, x.shape) for kk, x in zip(keys, leaves)])
  along = sum(float(jnp.vdot(g, x)) for g, x in zip(jax.tree.leaves(grad), jax.tree.leaves(d)))
  eps = 1e-3
  shifted = lambda s: float(loss_grad(jax.tree.map(lambda c, x: c + s * eps * x, cand, d))[0])
  fd = (shifted(1) - shifted(-1)) / (2 * eps)
  assert abs(along) > 1e-2
  assert fd == pytest.approx(along, rel=2e-2)


def test_several_candidates_and_private_tokens(model):
  """candidate_index [B, 1] is candidate_index [B]; a private token changes no other
  token's output; private tokens cannot go to a KV cache."""
  toks = jnp.asarray(_sample(12, seed=6))[None].repeat(2, 0)
  pos = jnp.arange(12)[None].repeat(2, 0)
  graphdef, state = nnx.split(model)
  call = jax.jit(lambda t, p, **kw: nnx.merge(graphdef, state)(t, p, **kw).logits)
  one = call(toks, pos, candidate_index=jnp.asarray([11, 5]))
  two = call(toks, pos, candidate_index=jnp.asarray([[11], [5]]))
  np.testing.assert_allclose(two, one, atol=1e-6, rtol=0)
  priv = jnp.zeros((2, 12), bool).at[:, 4].set(True)
  p, plain = call(toks, pos, private=priv), call(toks, pos)
  keep = np.arange(12) != 4
  # the others see the sequence without token 4 at all (positions kept); before it that is
  # the plain run, after it not
  drop = call(toks[:, keep], pos[:, keep])
  np.testing.assert_allclose(p[:, keep], drop, atol=1e-5, rtol=0)
  np.testing.assert_allclose(p[:, :4], plain[:, :4], atol=1e-6, rtol=0)
  assert np.abs(np.asarray(p[:, 5:]) - np.asarray(plain[:, 5:])).max() > 1e-3
  with pytest.raises(ValueError, match="private"):
    model(toks, pos, private=priv, cache=init_cache(model.config, 2, 16))


def test_sharded_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, HERE]))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert "sharded exact batch matches" in proc.stdout


def main():
  from focus_jax.parallel import make_mesh
  assert jax.device_count() == 8, jax.devices()
  model = tiny_model()
  fc = FocusConfig(chunk_size=8, local_window=12, fragment_len=6, min_focus_len=20)
  ids = _sample(90, seed=7)   # 11 chunks: not a multiple of the device count
  prompt, targets = ids[:-6], ids[-6:]
  ref = _reference(model, prompt, targets, fc)
  for mesh in ("chunk:8", "data:2,chunk:4"):
    got = E.exact_logits(model, prompt, targets, focus=fc, mesh=make_mesh(mesh))
    err = float(np.abs(got - ref).max())
    assert err < TOL, (mesh, err)
    print(mesh, err)
  print("sharded exact batch matches")


if __name__ == "__main__":
  main()
