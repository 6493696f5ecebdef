"""Passkey grid and perplexity on tiny random models, against plain loops written here."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx
from focus_reference import TINY, reference_focus, tiny_model
from focus_jax.config import FocusConfig, ModelConfig
from focus_jax.eval import passkey as P
from focus_jax.eval import passkey_grid as G
from focus_jax.eval import perplexity as PP
from focus_jax.eval.driver import run_cases
from focus_jax.generation.modes import ModeSetup
from focus_jax.text import ByteTokenizer as ByteTok
from focus_jax.model import AttnOptions, LlamaForCausalLM

CFG = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, bos_token_id=1, eos_token_ids=(2,),
                  max_position_embeddings=64)


@functools.partial(jax.jit, static_argnames=("graphdef", "logits", "attn"))
def _call(graphdef, state, tokens, positions, logits="all", attn=AttnOptions()):
  return nnx.merge(graphdef, state)(tokens, positions, logits=logits, attn=attn)


def _fwd(model, tokens, positions, logits="all", selfextend=None):
  return _call(*nnx.split(model), tokens, positions, logits=logits,
               attn=AttnOptions(selfextend=selfextend))


@pytest.fixture(scope="module")
def model():
  return LlamaForCausalLM(CFG, nnx.Rngs(0), std=0.3)


def _ref_logprobs(model, window, n, selfextend=None):
  """Full forward over the window; log-softmax at the last n targets."""
  out = _fwd(model, jnp.asarray([window]), jnp.arange(len(window))[None], selfextend=selfextend)
  logp = np.asarray(jax.nn.log_softmax(out.logits[0]), np.float64)
  t = len(window)
  return np.asarray([logp[i - 1, window[i]] for i in range(t - n, t)])


def test_windows_protocol():
  # docs of 10, 3, 25 tokens; L = 8 (7 document tokens per window), stride 5
  assert PP.windows([10, 3, 25], 8, 5, 100) == [(0, 0), (2, 0), (2, 5), (2, 10), (2, 15)]
  assert PP.windows([10, 3, 25], 8, 0, 100) == [(0, 0), (2, 0)]
  assert PP.windows([10, 3, 25], 8, 5, 3) == [(0, 0), (2, 0), (2, 5)]
  assert PP.window_ids(list(range(100, 125)), 5, 8, bos=1) == [1] + list(range(105, 112))


@pytest.mark.parametrize("mode", ["plain", "selfextend"])
def test_perplexity_matches_full_forward(model, tmp_path, mode):
  rng = np.random.default_rng(0)
  docs = [rng.integers(3, 300, size=n).tolist() for n in (150, 40, 100)]
  n_loss = 8
  setup = ModeSetup(mode, model, neighbor_window=16, group_size=4 if mode != "plain" else None)
  cases = PP.make_cases(docs, ["a", "b", "c"], [48, 120], stride=40, max_windows=3,
                        loss_tokens=n_loss)
  assert [(c["length"], c["doc"], c["start"]) for c in cases] == [
      (48, 0, 0), (48, 0, 40), (48, 0, 80), (120, 0, 0)]
  rows = run_cases(tmp_path, cases, lambda c: PP.run_window(setup, docs[c["doc"]], c, 1, n_loss),
                   progress=False)
  se = (4, 16) if mode == "selfextend" else None
  total = {}
  for c, r in zip(cases, rows):
    window = [1] + docs[c["doc"]][c["start"]:c["start"] + c["length"] - 1]
    ref = _ref_logprobs(model, window, n_loss, se)
    np.testing.assert_allclose(r["nll"], -ref.sum(), rtol=1e-4)
    nll, n = total.get(c["length"], (0.0, 0))
    total[c["length"]] = (nll - ref.sum(), n + n_loss)
  s = PP.summarize(rows)
  for length, (nll, n) in total.items():
    assert s[str(length)]["ppl"] == pytest.approx(np.exp(nll / n), rel=1e-4)
    assert s[str(length)]["windows"] == (3 if length == 48 else 1)


def test_perplexity_truncated_context_control(model):
  """context=C: the same targets, scored after BOS and the C window tokens before them."""
  rng = np.random.default_rng(1)
  doc = rng.integers(3, 300, size=100).tolist()
  setup = ModeSetup("plain", model)
  case = {"length": 64, "doc": 0, "start": 10}
  row = PP.run_window(setup, doc, case, 1, 8, context=5)
  targets = doc[10 + 63 - 8:10 + 63]
  window = [1] + doc[10 + 63 - 8 - 5:10 + 63 - 8] + targets
  assert len(window) == 14
  np.testing.assert_allclose(row["nll"], -_ref_logprobs(model, window, 8).sum(), rtol=1e-4)
  full = PP.run_window(setup, doc, case, 1, 8)
  assert PP.run_window(setup, doc, case, 1, 8, context=1000)["nll"] == pytest.approx(full["nll"])
  assert abs(row["nll"] - full["nll"]) > 1e-3
  with pytest.raises(ValueError, match="context"):
    PP.run_window(setup, doc, case, 1, 8, context=0)


def test_focus_perplexity_is_exact_decoding_teacher_forced():
  focus_model = tiny_model()
  fc = FocusConfig(chunk_size=16, local_window=12, fragment_len=6, min_focus_len=20)
  setup = ModeSetup("focus", focus_model, focus=fc)
  rng = np.random.default_rng(1)
  doc = rng.integers(6, 97, size=80).tolist()
  case = {"case": "x", "length": 50, "doc": 0, "start": 7}
  n_loss = 3
  r = PP.run_window(setup, doc, case, TINY.bos_token_id, n_loss)
  window = PP.window_ids(doc, 7, 50, TINY.bos_token_id)
  rows = reference_focus(focus_model, window[:-n_loss], 16, 12, 6,
                         generated=window[-n_loss:-1])
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(rows, jnp.float32)), np.float64)
  ref = -sum(logp[k, window[-n_loss + k]] for k in range(n_loss))
  np.testing.assert_allclose(r["nll"], ref, rtol=1e-4)


def _greedy(model, ids, n):
  seq = list(ids)
  for _ in range(n):
    out = _fwd(model, jnp.asarray([seq]), jnp.arange(len(seq))[None], logits="last")
    seq.append(int(jnp.argmax(out.logits[0, -1])))
  return seq[len(ids):]


def test_passkey_grid_against_greedy_loop(model, tmp_path):
  tok = ByteTok()
  cases = G.make_cases([330], [0.0, 1.0], seeds=1)
  setup = ModeSetup("plain", model)
  rows = run_cases(tmp_path, cases, lambda c: G.run_case(setup, tok, c), progress=False)
  key = str(G.key_for_seed(0))
  for c, r in zip(cases, rows):
    ids, answer = P.make_passkey_prompt(tok, c["length"], depth=c["depth"], key=int(key))
    assert r["key"] == answer == key and r["tokens"] == len(ids) <= c["length"]
    want = _greedy(model, ids.tolist(), P.answer_token_count(tok, answer))
    assert r["output"] == tok.decode(want)
    assert r["correct"] == (tok.decode(want).strip() == key)
  s = G.summarize(rows)
  assert set(s["grid"]) == {"330@0", "330@1"}


def test_passkey_haystack_prompt():
  tok = ByteTok()
  ids, key = G.haystack_prompt(tok, "abc", 400, 0.5, 42, "KEY={key}")
  text = tok.decode(ids)
  assert len(ids) == 400 and key == "42"
  head, rest = text.split("\n", 1)
  assert head == P.TASK
  hay1, needle, hay2_q = rest.split("\n", 2)
  assert needle == "KEY=42" and hay2_q.endswith("\n" + P.QUESTION)
  assert abs(len(hay1) - len(hay2_q.split("\n")[0])) <= 1 and hay1.startswith("abcabc")
  with pytest.raises(ValueError, match="needs --haystack"):
    G.case_prompt(tok, {"seed": 0, "length": 300, "depth": 0.5}, None, "K={key}")
