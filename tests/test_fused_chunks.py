"""The fused chunk scan (prefix and candidate in one layer scan) is exact: same candidate
K/V, per-task losses and candidate gradients (per loss kind) as chunk_prefix + chunk_step
and as full back-propagation, on configs/tiny.py's model (GQA) with left-padded rows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from flax import nnx
from focus_reference import perturb_candidates

from focus_jax.data import TokenWindows, make_tasks, pad_tasks, synthetic_documents
from focus_jax.focus.losses import candidate_memory, split_model, task_losses
from focus_jax.train import setup
from focus_jax.train.run_config import TrainConfig

GROUPS = (0, 1, 2)   # keep every layer's prefix K/V; one checkpointed group; one per layer


@pytest.fixture(scope="module")
def case():
  config = TrainConfig.from_config(tiny.get_config())
  module, _ = setup.load_model(config)
  cfg = module.config
  assert cfg.num_kv_heads < cfg.num_heads   # GQA
  module = perturb_candidates(module, 1)
  spec = setup.sample_spec(config, cfg, 1)
  src = TokenWindows.from_token_docs(
      synthetic_documents(3, 200, 64, seed=0, period=24), config.min_len, config.max_len)
  batch = pad_tasks([make_tasks(src[i], spec, 0, i, 3) for i in range(3)], spec)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  valid = np.asarray(batch["chunk_valid"])
  used = valid.any(-1)
  assert (used & ~valid[..., 0]).any()                 # left-padded rows
  assert valid[..., -1][used].all()                    # every row ends in its candidate
  assert set(np.asarray(batch["kind"]).ravel()) == {0, 1}   # both losses
  return module, batch


def _memory(module, batch, **kw):
  n, t, r, c = batch["chunk_tokens"].shape
  rows = lambda x: x.reshape(n * t * r, c)
  return jax.jit(lambda: candidate_memory(module, rows(batch["chunk_tokens"]),
                                          rows(batch["chunk_valid"]), **kw))()


def _loss_and_grads(module, batch, **kw):
  """Per-task losses and, per loss kind, the gradient of its summed loss."""
  graphdef, cand, frozen = split_model(module)

  def loss(c, kind):
    ce, kinds = task_losses(nnx.merge(graphdef, c, frozen), batch, **kw)
    return jnp.where(kinds == kind, ce, 0.0).sum(), ce
  grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  out = {}
  for kind in (0, 1):
    (_, ce), out[kind] = grad(cand, jnp.int32(kind))
  return ce, out


@pytest.mark.parametrize("groups", GROUPS)
def test_fused_candidates_equal_prefix_then_step(case, groups):
  module, batch = case
  want = _memory(module, batch)
  got = _memory(module, batch, fused=True, fused_groups=groups)
  used = np.asarray(batch["chunk_valid"]).reshape(-1, batch["chunk_valid"].shape[-1]).any(-1)
  for a, b in zip(got, want):
    assert a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a)[:, used], np.asarray(b)[:, used], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def reference(case):
  """Both unfused paths: prefix then candidate step; full back-propagation."""
  module, batch = case
  return [_loss_and_grads(module, batch, stop_gradient_prefix=sg) for sg in (True, False)]


@pytest.mark.parametrize("groups", GROUPS)
def test_fused_losses_and_gradients_equal_both_unfused_paths(case, reference, groups):
  module, batch = case
  ce, grads = _loss_and_grads(module, batch, fused=True, fused_groups=groups)
  for ce_ref, grads_ref in reference:
    np.testing.assert_allclose(ce, ce_ref, atol=1e-5, rtol=0)
    for kind in (0, 1):
      leaves, ref = jax.tree.leaves(grads[kind]), jax.tree.leaves(grads_ref[kind])
      scale = max(float(jnp.abs(x).max()) for x in ref)
      assert scale > 1e-3, (kind, scale)    # the candidates get a real gradient
      for a, b in zip(leaves, ref):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(scale, 1.0), rtol=0)


def test_groups_must_divide_the_layers(case):
  module, batch = case
  with pytest.raises(ValueError, match="must divide"):
    _memory(module, batch, fused=True, fused_groups=3)
