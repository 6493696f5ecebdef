"""FocusLLM training in one process: exact stop-gradient gradients, learning, NaN stop."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from focus_jax.config import ModelConfig
from focus_jax.data import SampleSpec, TokenWindows, make_tasks, pad_tasks, synthetic_documents
from focus_jax.focus.losses import join_params, split_params, task_losses
from focus_jax.model import add_candidate_params, init_params
from focus_jax.train.loop import NonFiniteLoss, read_metrics, train
from focus_jax.train.optim import make_optimizer, make_schedule
from focus_jax.train.step import init_state

CFG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, eos_token_ids=(2,), bos_token_id=1)


def _tiny_config(**kw):
  c = tiny.get_config()
  c.tensorboard = False
  c.export_model = False
  c.checkpoint_every = 1000
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_stop_gradient_prefix_gradient_equals_full_backprop():
  params = add_candidate_params(init_params(CFG, jax.random.PRNGKey(0), std=0.1))
  noise = lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape)
  params["candidate"] = jax.tree.map(noise, params["candidate"])
  spec = SampleSpec(local_window=40, chunk_sizes=(16,), fragment_max=12, span_min=6,
                    max_len=100, bos_id=1, target_tokens=2)
  src = TokenWindows.from_token_docs(synthetic_documents(3, 100, 97, period=11), 40, 100)
  batch = pad_tasks([make_tasks(src[i], spec, 0, i, 3) for i in range(3)], spec)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  cand, frozen = split_params(params)

  def loss(c, sg):
    return task_losses(join_params(c, frozen), CFG, batch, stop_gradient_prefix=sg).mean()
  l1, g1 = jax.jit(jax.value_and_grad(lambda c: loss(c, True)))(cand)
  l2, g2 = jax.jit(jax.value_and_grad(lambda c: loss(c, False)))(cand)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g2))
  assert scale > 1e-3
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-5 * max(scale, 1.0), rtol=0)


def test_only_candidate_parameters_have_optimiser_state():
  params = add_candidate_params(init_params(CFG, jax.random.PRNGKey(0)))
  cand, frozen = split_params(params)
  tx = make_optimizer(make_schedule(1e-3, 10, 2))
  state = init_state(cand, tx, 0)
  n_cand = sum(x.size for x in jax.tree.leaves(cand))
  adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
          if hasattr(s, "mu")][0]
  assert sum(x.size for x in jax.tree.leaves(adam.mu)) == n_cand
  assert set(frozen) == {"embed", "layers", "final_norm", "lm_head"}
  assert optax.tree.norm(cand) > 0


def test_loss_falls_on_the_synthetic_copy_task(tmp_path):
  summary = train(_tiny_config(steps=60), str(tmp_path))
  losses = [r["loss"] for r in read_metrics(str(tmp_path))]
  assert summary["step"] == 60 and len(losses) == 60
  first, last = np.mean(losses[:10]), np.mean(losses[-10:])
  assert last < first - 0.4, (first, last)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path):
  config = _tiny_config(steps=8, lr=1e30, warmup_steps=0, clip_norm=0.0, checkpoint_every=1,
                        async_checkpoints=False)
  with pytest.raises(NonFiniteLoss, match="last good checkpoint is step") as e:
    train(config, str(tmp_path))
  rows = read_metrics(str(tmp_path))
  bad = int(str(e.value).split(" at step ")[1].split(";")[0])
  assert len(rows) == bad - 1 and all(np.isfinite(r["loss"]) for r in rows)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == bad - 1
