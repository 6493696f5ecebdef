"""FocusLLM inference against the plain reference in focus_reference.py (a loop over
chunks, explicit token/position lists, everything recomputed per step)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx
from focus_reference import TINY, reference_focus, reference_plain, tiny_model

from focus_jax.config import FocusConfig
from focus_jax.focus import core
from focus_jax.focus.losses import split_model
from focus_jax.focus.plan import bucket_count, make_plan, shard_order
from focus_jax.generation.modes import ModeSetup, generate
from focus_jax.model import AttnOptions, LlamaForCausalLM

S, WL, F, T = 16, 24, 8, 40
FC = FocusConfig(chunk_size=S, local_window=WL, fragment_len=F, min_focus_len=T)
BOS = TINY.bos_token_id
STEPS = 6   # prefill + 5 generated tokens


@pytest.fixture(scope="module")
def model():
  return tiny_model()


def prompt(length, seed=0, bos_at=()):
  """Random ids that avoid BOS except at the given indices."""
  x = np.random.default_rng(seed).integers(BOS + 1, TINY.vocab_size, size=length).astype(np.int32)
  for i in bos_at:
    x[i] = BOS
  return x


def test_bucket_count():
  assert [bucket_count(k) for k in (1, 4, 5, 7, 8, 9, 11, 17, 127, 129)] == \
      [1, 4, 5, 7, 8, 10, 12, 20, 128, 160]
  with pytest.raises(ValueError):
    bucket_count(0)


def test_plan_layout():
  x = prompt(90)
  plan = make_plan(x, TINY, FC, row_multiple=4)
  assert plan.focus and plan.n_chunks == 5 and plan.n_rows == 8 and plan.row_len == S + F + 1
  q = [BOS] + list(x[90 - F:])
  for i in range(5):
    want = list(x[i * S:min((i + 1) * S, 90 - WL)]) + q
    row = plan.tokens[i][plan.valid[i]].tolist()
    assert row == want and plan.valid[i, -len(want):].all() and not plan.valid[i, :-len(want)].any()
    assert plan.tokens[i, -1] == x[-1]
  assert not plan.valid[5:].any()
  assert plan.mem_valid.tolist() == [True] * 5 + [False] * 3
  assert plan.local.tolist() == [BOS] + x[90 - WL:].tolist()
  # fragment and local that already start with BOS get no second one
  y = prompt(90, bos_at=(90 - F, 90 - WL))
  p2 = make_plan(y, TINY, FC)
  assert p2.fragment.tolist() == y[90 - F:].tolist() and p2.local.tolist() == y[90 - WL:].tolist()
  # below the threshold: the plain input
  small = make_plan(prompt(30), TINY, FC)
  assert not small.focus and small.local[0] == BOS and small.local.size == 31


def test_plan_rejects_bad_input():
  with pytest.raises(ValueError, match="1-D"):
    make_plan(np.zeros((2, 50), np.int32), TINY, FC)
  with pytest.raises(ValueError, match="lie in"):
    make_plan(np.full(50, 500), TINY, FC)
  with pytest.raises(ValueError, match="bos_token_id"):
    make_plan(prompt(50), TINY.replace(bos_token_id=None), FC)


def test_shard_order_is_block_cyclic():
  perm = shard_order(16, 4, 8)
  # device d holds positions [4d, 4d+4); its first two rows are batch 0
  assert perm.reshape(4, 2, 2)[:, 0].ravel().tolist() == list(range(8))
  assert sorted(perm.tolist()) == list(range(16))


CASES = {
    "partial_last_chunk": dict(length=90),                       # M = 66: 4 x 16 + 2
    "full_chunks": dict(length=WL + 4 * S),
    "bos_in_fragment_and_local": dict(length=90, bos_at=(90 - F, 90 - WL)),
    "bos_first_token": dict(length=77, bos_at=(0,)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_generation_matches_reference(model, case):
  kw = CASES[case]
  x = prompt(kw["length"], seed=len(case), bos_at=kw.get("bos_at", ()))
  gen = generate(ModeSetup("focus", model, focus=FC, chunk_batch=2), x, STEPS)
  assert gen.logits.shape == (STEPS, TINY.vocab_size) and gen.logits.dtype == np.float32
  ref = reference_focus(model, x, S, WL, F, gen.tokens[:-1])
  np.testing.assert_allclose(gen.logits, ref, atol=1e-5, rtol=0)
  assert gen.tokens.tolist() == ref.argmax(-1).tolist()


def test_blockwise_attention_paths_match_reference(model):
  """Small attention blocks: multi-block chunk rows, caches, memory prefix and left padding."""
  x = prompt(90, seed=8)
  blocks = AttnOptions(block_q=8, block_k=8, dense_max=0)
  for decode in ("exact", "fast"):
    setup = ModeSetup("focus", model, focus=FC, focus_decode=decode, attn=blocks)
    gen = generate(setup, x, 4)
    ref = reference_focus(model, x, S, WL, F, gen.tokens[:-1],
                          frozen_memory=decode == "fast")
    np.testing.assert_allclose(gen.logits, ref, atol=1e-5, rtol=0)


def test_fast_mode_is_frozen_memory(model):
  x = prompt(90, seed=3)
  gen = generate(ModeSetup("focus", model, focus=FC, chunk_batch=2, focus_decode="fast"), x,
                 STEPS)
  ref = reference_focus(model, x, S, WL, F, gen.tokens[:-1], frozen_memory=True)
  np.testing.assert_allclose(gen.logits, ref, atol=1e-5, rtol=0)
  exact = generate(ModeSetup("focus", model, focus=FC, chunk_batch=2), x, 1)
  np.testing.assert_allclose(gen.logits[0], exact.logits[0], atol=1e-6, rtol=0)


def test_chunk_batch_does_not_change_results(model):
  x = prompt(90, seed=4)
  a = generate(ModeSetup("focus", model, focus=FC, chunk_batch=1), x, 3)
  b = generate(ModeSetup("focus", model, focus=FC, chunk_batch=2, progress=True), x, 3)
  np.testing.assert_allclose(a.logits, b.logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bos_first", [False, True])
def test_below_threshold_is_plain_model(model, bos_first):
  x = prompt(T - 1, seed=5, bos_at=(0,) if bos_first else ())
  gen = generate(ModeSetup("focus", model, focus=FC), x, STEPS)
  ref = reference_plain(model, x, gen.tokens[:-1])
  np.testing.assert_allclose(gen.logits, ref, atol=1e-5, rtol=0)
  plain = generate(ModeSetup("plain", model), x if bos_first else np.concatenate([[BOS], x]),
                   STEPS)
  assert gen.tokens.tolist() == plain.tokens.tolist()


def test_candidate_gradient_with_stopped_prefix_is_exact(model):
  """Training use: prefix under stop_gradient + candidate step + local = full gradient."""
  x = prompt(50, seed=6)
  rows = jnp.asarray(np.stack([x[:20], x[20:40]]))           # two chunk rows, candidate last
  valid = jnp.ones(rows.shape, bool)
  local = jnp.asarray(x[40:])

  graphdef, cand, frozen = split_model(model)

  def loss_split(cand):
    m = nnx.merge(graphdef, cand, frozen)
    cache = jax.lax.stop_gradient(core.chunk_prefix(m, rows, valid, rows.shape[1]))
    mk, mv, same = core.chunk_step(m, cache, rows[:, -1:], valid[:, -1:])
    assert same is cache   # a lone candidate is not kept
    return core.local_forward(m, mk, mv, jnp.ones(2, bool), local)[3]

  def loss_full(cand):
    m = nnx.merge(graphdef, cand, frozen)
    pos = jnp.broadcast_to(jnp.arange(20), (2, 20))
    k, v = m(rows, pos, candidate_index=jnp.asarray([19, 19]), logits=None, return_kv=True).kv
    return core.local_forward(m, k[:, :, -1], v[:, :, -1], jnp.ones(2, bool), local)[3]

  (l1, g1), (l2, g2) = (jax.jit(jax.value_and_grad(f))(cand) for f in (loss_split, loss_full))
  np.testing.assert_allclose(l1, l2, atol=1e-6)
  assert len(jax.tree.leaves(g1)) == 4   # candidate q, k, v, o kernels (TINY has no biases)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    assert float(jnp.abs(a).max()) > 0
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bad_arguments(model):
  x = prompt(90)
  with pytest.raises(ValueError, match="candidate"):
    generate(ModeSetup("focus", LlamaForCausalLM(TINY), focus=FC), x, 2)
  with pytest.raises(ValueError, match="decode"):
    generate(ModeSetup("focus", model, focus=FC, focus_decode="approx"), x, 2)
  with pytest.raises(ValueError, match="max_new_tokens"):
    generate(ModeSetup("focus", model, focus=FC), x, 0)
  with pytest.raises(ValueError, match="cache_size"):
    core.chunk_prefix(model, jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), bool), 3)


def test_generate_cli_focus_mode(model, tmp_path):
  """launch.generate --mode=focus: --input_ids used as given, --logits_out rows as in-process."""
  import os
  import subprocess
  import sys
  from focus_jax.checkpoint.orbax import save_checkpoint
  save_checkpoint(tmp_path / "ckpt", model)
  x = prompt(90, seed=7)
  np.save(tmp_path / "ids.npy", x.astype(np.int64))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run(
      [sys.executable, "-m", "launch.generate", f"--checkpoint={tmp_path / 'ckpt'}",
       f"--input_ids={tmp_path / 'ids.npy'}", "--mode=focus", f"--chunk_size={S}",
       f"--local_window={WL}", f"--fragment_len={F}", f"--min_focus_len={T}",
       "--max_new_tokens=4", f"--logits_out={tmp_path / 'out.npz'}", "--ignore_eos"],
      cwd=root, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  got = np.load(tmp_path / "out.npz")
  want = generate(ModeSetup("focus", model, focus=FC), x, 4, stop_at_eos=False)
  assert got["logits"].dtype == np.float32 and got["tokens"].dtype == np.int32
  np.testing.assert_allclose(got["logits"], want.logits, atol=1e-5, rtol=0)
  assert got["tokens"].tolist() == want.tokens.tolist()
