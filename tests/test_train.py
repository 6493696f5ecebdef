"""FocusLLM training in one process: exact stop-gradient gradients, learning, NaN stop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from focus_jax.config import ModelConfig
from focus_jax.data import SampleSpec, TokenWindows, make_tasks, pad_tasks, synthetic_documents
from flax import nnx
from focus_reference import perturb_candidates

from focus_jax.focus.losses import split_model, task_losses
from focus_jax.model import CandidateParam, LlamaForCausalLM, add_candidates
from focus_jax.train.loop import NonFiniteLoss, train
from focus_jax.train.metrics import read_metrics
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
  model = perturb_candidates(add_candidates(LlamaForCausalLM(CFG, nnx.Rngs(0), std=0.1)), 1)
  spec = SampleSpec(local_window=40, chunk_sizes=(16,), fragment_max=12, span_min=6,
                    max_len=100, bos_id=1, target_tokens=2)
  src = TokenWindows.from_token_docs(synthetic_documents(3, 100, 97, period=11), 40, 100)
  batch = pad_tasks([make_tasks(src[i], spec, 0, i, 3) for i in range(3)], spec)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  graphdef, cand, frozen = split_model(model)

  def loss(c, sg):
    ce, _ = task_losses(nnx.merge(graphdef, c, frozen), batch, stop_gradient_prefix=sg)
    return ce.mean()
  l1, g1 = jax.jit(jax.value_and_grad(lambda c: loss(c, True)))(cand)
  l2, g2 = jax.jit(jax.value_and_grad(lambda c: loss(c, False)))(cand)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g2))
  assert scale > 1e-3
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-5 * max(scale, 1.0), rtol=0)


def test_continuation_loss_equals_inference_logits():
  """A continuation task is FocusLLM inference on x[:start+m] with Wl = m: same number."""
  from focus_jax.config import FocusConfig
  from focus_jax.data.samples import CONTINUATION, build_task, draw_task
  from focus_jax.generation.modes import ModeSetup, generate
  model = perturb_candidates(add_candidates(LlamaForCausalLM(CFG, nnx.Rngs(0), std=0.1)), 1)
  spec = SampleSpec(local_window=40, chunk_sizes=(16,), fragment_max=12, span_min=6,
                    max_len=100, bos_id=1)
  x = np.random.default_rng(0).integers(3, 97, 100).astype(np.int32)
  t = draw_task(x, CONTINUATION, spec, np.random.default_rng(3))
  batch = pad_tasks([[build_task(x, t, 16, spec)]], spec)
  ce, _ = task_losses(model, {k: jnp.asarray(v) for k, v in batch.items()})
  end = t["start"] + t["m"]
  focus = FocusConfig(chunk_size=16, local_window=t["m"], fragment_len=12, min_focus_len=0)
  gen = generate(ModeSetup("focus", model, focus=focus), x[:end], 1, stop_at_eos=False)
  want = -jax.nn.log_softmax(jnp.asarray(gen.logits[0]))[x[end]]
  np.testing.assert_allclose(ce[0], want, rtol=1e-5)


def test_candidate_state_holds_exactly_the_candidate_projections():
  model = LlamaForCausalLM(CFG.replace(attention_bias=True), nnx.Rngs(0))
  assert not jax.tree.leaves(nnx.state(model, CandidateParam))
  add_candidates(model, ("q", "v"))
  cand = nnx.to_pure_dict(nnx.state(model, CandidateParam))
  attn = cand["model"]["layers"]["self_attn"]
  assert sorted(attn) == ["candidate_q_proj", "candidate_v_proj"] and set(cand) == {"model"}
  assert attn["candidate_q_proj"]["kernel"].shape == (2, 32, 32)   # [layers, in, out]
  assert attn["candidate_v_proj"]["bias"].shape == (2, 16)
  orig = nnx.to_pure_dict(nnx.state(model, nnx.Param))["model"]["layers"]["self_attn"]
  np.testing.assert_array_equal(attn["candidate_q_proj"]["kernel"], orig["q_proj"]["kernel"])
  # the `...` rest after the subclass filter holds no candidate
  _, c, rest = split_model(model)
  assert len(jax.tree.leaves(c)) == 4
  assert not any("candidate" in jax.tree_util.keystr(p)
                 for p, _ in jax.tree_util.tree_flatten_with_path(rest)[0])


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
  """60 steps on copy-task documents whose period (96) exceeds every local window (at most
  61 span tokens): the token to predict is never in the local window, only in the memory."""
  workdir = tmp_path_factory.mktemp("copy_run")
  config = _tiny_config(steps=60, synthetic=dict(n_docs=256, length=256, vocab=64, period=96))
  summary = train(config, str(workdir))
  return config, workdir, summary


def test_only_candidate_parameters_have_optimiser_state(copy_run):
  """The TrainState a real run saves: parameters and AdamW moments of the candidate
  projections only, no base parameter (sizes counted from the config here)."""
  import orbax.checkpoint as ocp
  config, workdir, _ = copy_run
  t = config.tiny
  per_layer = {"q": t["hidden_size"] * t["num_heads"] * t["head_dim"],
               "k": t["hidden_size"] * t["num_kv_heads"] * t["head_dim"],
               "v": t["hidden_size"] * t["num_kv_heads"] * t["head_dim"],
               "o": t["num_heads"] * t["head_dim"] * t["hidden_size"]}
  n_cand = t["num_layers"] * sum(per_layer.values())
  n_base = t["vocab_size"] * t["hidden_size"]  # the embedding alone
  meta = ocp.StandardCheckpointer().metadata(workdir / "checkpoints" / "60" / "state")
  leaves = jax.tree_util.tree_leaves_with_path(meta.item_metadata.tree,
                                               is_leaf=lambda x: hasattr(x, "shape"))
  arrays = [(jax.tree_util.keystr(p), int(np.prod(x.shape))) for p, x in leaves
            if hasattr(x, "shape") and len(x.shape) > 0]
  assert {p.split("]")[0] for p, _ in arrays} == {"['params'", "['opt_state'"}
  modules = {p.split("['self_attn']")[-1].split("]")[0] for p, _ in arrays}
  assert modules == {"['candidate_q_proj'", "['candidate_k_proj'", "['candidate_v_proj'",
                     "['candidate_o_proj'"}, modules
  assert all("['self_attn']" in p for p, _ in arrays)  # no embed/mlp/norm/q_proj anywhere
  total = sum(n for _, n in arrays)
  assert total == 3 * n_cand, (total, n_cand)  # params + AdamW mu + nu; no base (>= n_base)
  assert n_base > 0


def test_loss_falls_on_the_synthetic_copy_task(copy_run):
  """The loss falls, and the held-out loss of continuation tasks is lower with the memory
  than without it: the answer is only in the memory, so the memory carries it."""
  from focus_jax.train.evaluate import evaluate
  config, workdir, summary = copy_run
  losses = [r["loss"] for r in read_metrics(str(workdir))]
  assert summary["step"] == 60 and len(losses) == 60
  first, last = np.mean(losses[:10]), np.mean(losses[-10:])
  assert last < first - 0.4, (first, last)
  ev = evaluate(config, str(workdir), 8)
  ev0 = evaluate(config, str(workdir), 8, step=0)   # the same tasks, untrained candidates
  assert ev["step"] == 60 and ev0["step"] == 0
  gain = ev["loss_continuation_no_memory"] - ev["loss_continuation"]
  gain0 = ev0["loss_continuation_no_memory"] - ev0["loss_continuation"]
  print(f"memory gain on held-out continuations: untrained {gain0:.3f}, trained {gain:.3f}")
  assert gain > 0.3 and gain > gain0 + 0.3, (ev0, ev)


def test_non_finite_parameters_stop_before_the_save(tmp_path):
  """lr = 1e39 is inf in float32: step 1's loss is finite (old parameters) but the update
  makes the parameters non-finite; nothing of step 1 may be saved."""
  config = _tiny_config(steps=4, lr=1e39, warmup_steps=0, decay="constant", clip_norm=0.0,
                        checkpoint_every=1, async_checkpoints=False)
  with pytest.raises(NonFiniteLoss, match="parameter is NaN or infinite after the update at "
                     "step 1") as e:
    train(config, str(tmp_path))
  assert "no checkpoint was saved before it" in str(e.value)
  metrics = tmp_path / "metrics.jsonl"
  assert not metrics.exists() or not metrics.read_text().strip()
  assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


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


def test_paper_config_traces_at_full_size():
  """configs/llama2_7b_paper.py with LLaMA-2-7B shapes: the step traces (jax.eval_shape)."""
  from configs import llama2_7b_paper
  from focus_jax import parallel
  from focus_jax.train import setup
  from focus_jax.train.run_config import TrainConfig
  from focus_jax.train.step import make_train_step
  config = TrainConfig.from_config(llama2_7b_paper.get_config())
  cfg = ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                    num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=4096,
                    compute_dtype=config.dtype)
  mesh = parallel.make_mesh("")
  spec = setup.sample_spec(config, cfg, 1)
  assert spec.max_rows(64) == 128 and spec.row_len(64) == 129 and spec.row_len(2048) == 2561
  assert spec.local_len == 3070 and spec.span_max == 3069  # BOS + m
  graphdef, cand, frozen = nnx.split(
      nnx.eval_shape(lambda: add_candidates(LlamaForCausalLM(cfg))), CandidateParam, ...)
  sched = make_schedule(config.lr, config.steps, config.warmup_steps, config.decay)
  tx = make_optimizer(sched, clip_norm=config.clip_norm)
  state = jax.eval_shape(lambda c: init_state(c, tx), cand)
  s, b = 512, config.batch_size
  shapes = dict(chunk_tokens=((1, b, 2, spec.max_rows(s), spec.row_len(s)), jnp.int32),
                chunk_valid=((1, b, 2, spec.max_rows(s), spec.row_len(s)), bool),
                local_tokens=((1, b, 2, spec.local_len), jnp.int32),
                local_valid=((1, b, 2, spec.local_len), bool),
                targets=((1, b, 2, 1), jnp.int32), n_memory=((1, b, 2), jnp.int32),
                kind=((1, b, 2), jnp.int32))
  batch = {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()}
  step = make_train_step(graphdef, mesh, tx, sched, config)
  new_state, metrics = jax.eval_shape(step, state, frozen, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  q = nnx.to_pure_dict(new_state.params)["model"]["layers"]["self_attn"]["candidate_q_proj"]
  assert q["kernel"].shape == (32, 4096, 4096) and metrics["loss_sum"].shape == ()


def test_loss_curve_window_means(tmp_path, capsys):
  from focus_jax.train import metrics
  rows = [{"step": 3, "loss": 5.0, "loss_repetition": 5.0},
          {"step": 1, "loss": 1.0, "loss_continuation": 1.0},
          {"step": 2, "loss": "nan", "loss_continuation": 3.0},
          {"step": 4, "loss": 2.0}]
  (tmp_path / "metrics.jsonl").write_text(
      "".join(__import__("json").dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')
  curve = metrics.loss_curve(metrics.read_metrics(str(tmp_path)), window=2)
  # Sorted by step; windows {1, 2} and {3, 4}; "nan" and the cut last line skipped.
  assert curve == [{"first_step": 1, "last_step": 2, "loss": 1.0, "loss_continuation": 2.0},
                   {"first_step": 3, "last_step": 4, "loss": 3.5, "loss_repetition": 5.0}]
  metrics.main([str(tmp_path), "--window=3"])
  table = capsys.readouterr().out.splitlines()
  assert table[2] == "| 1-3 | 3.000 | 2.000 | 5.000 |" and table[3] == "| 4-4 | 2.000 | - | - |"
  with pytest.raises(ValueError, match="window"):
    metrics.loss_curve(rows, 0)


def test_training_changes_only_the_candidates(tmp_path):
  """A real run's exported model: every non-candidate Param bit-identical to the initial model."""
  from focus_jax.checkpoint.orbax import load_checkpoint
  from focus_jax.train import setup
  from focus_jax.train.run_config import TrainConfig
  config = _tiny_config(steps=3, export_model=True, lr=1e-2, warmup_steps=0)
  initial, _ = setup.load_model(TrainConfig.from_config(config))
  train(config, str(tmp_path))
  trained, _ = load_checkpoint(tmp_path / "model")
  before = nnx.to_pure_dict(nnx.state(initial, nnx.Param))
  after = nnx.to_pure_dict(nnx.state(trained, nnx.Param))
  flat_b = dict(jax.tree_util.tree_flatten_with_path(before)[0])
  flat_a = dict(jax.tree_util.tree_flatten_with_path(after)[0])
  assert flat_a.keys() == flat_b.keys()
  changed = [jax.tree_util.keystr(k) for k in flat_b
             if not np.array_equal(np.asarray(flat_b[k]), np.asarray(flat_a[k]))]
  assert changed and all("candidate_" in k for k in changed), changed
  assert len(changed) == len(jax.tree.leaves(nnx.state(initial, CandidateParam)))
