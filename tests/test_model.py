"""Decoder internals against plain references written here: softmax attention
with an explicit mask, full recomputation for the KV cache, a naive greedy loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.config import ModelConfig
from flax import nnx

from focus_jax.generation.modes import ModeSetup, generate
from focus_jax.model import AttnOptions, LlamaForCausalLM, init_cache
from focus_jax.model.attention import attention
from focus_jax.model.rope import apply_rope, inv_frequencies

CFG = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, eos_token_ids=())


def reference_attention(q, k, v, q_pos, k_pos, mask, inv_freq):
  """Plain softmax attention in float64 with an explicit [B,T,S] mask."""
  q = np.asarray(apply_rope(q, q_pos, inv_freq), np.float64)
  k = np.asarray(apply_rope(k, k_pos, inv_freq), np.float64)
  v = np.asarray(v, np.float64)
  g = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  s = np.where(mask[:, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", p, v)


@pytest.mark.parametrize("dense_max,bq,bk", [(10**9, 512, 1024), (0, 16, 24), (0, 7, 50)])
def test_blockwise_attention_equals_softmax(dense_max, bq, bk):
  rng = np.random.default_rng(0)
  b, t, s, h, kvh, hd = 2, 61, 90, 6, 2, 8
  q = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, s, kvh, hd)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, s, kvh, hd)), jnp.float32)
  # keys: 29 "memory" entries visible to all (order -1) then a causal block with padding
  k_order = np.concatenate([np.full((b, s - t), -1), np.tile(np.arange(t), (b, 1))], 1)
  k_pos = np.concatenate([np.tile(np.arange(s - t), (b, 1)), np.tile(np.arange(t) + s - t, (b, 1))], 1)
  k_valid = np.ones((b, s), bool)
  k_valid[1, :5] = False
  k_valid[1, s - t:s - t + 3] = False
  q_order = np.tile(np.arange(t), (b, 1))
  q_pos = q_order + s - t
  inv = inv_frequencies(CFG.replace(head_dim=hd))
  out = attention(q, k, v, jnp.asarray(q_pos), jnp.asarray(k_pos), jnp.asarray(q_order),
                  jnp.asarray(k_order), jnp.asarray(k_valid), inv, block_q=bq, block_k=bk,
                  dense_max=dense_max)
  mask = k_valid[:, None, :] & (k_order[:, None, :] <= q_order[:, :, None])
  ref = reference_attention(q, k, v, q_pos, k_pos, mask, inv)
  np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=0)


def test_fully_masked_rows_are_zero():
  q = jnp.ones((1, 3, 2, 4))
  k = v = jnp.ones((1, 5, 1, 4))
  z = jnp.zeros((1, 3), jnp.int32)
  out = attention(q, k, v, z, jnp.zeros((1, 5), jnp.int32), z, jnp.zeros((1, 5), jnp.int32),
                  jnp.zeros((1, 5), bool), inv_frequencies(CFG.replace(head_dim=4)))
  assert np.all(np.asarray(out) == 0)


@pytest.fixture(scope="module")
def model():
  return LlamaForCausalLM(CFG, nnx.Rngs(0), std=0.05)


def test_blockwise_forward_equals_dense(model):
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 150), 0, CFG.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(150), (2, 150))
  dense = model(ids, pos).logits
  block = model(ids, pos, attn=AttnOptions(block_q=32, block_k=40, dense_max=0)).logits
  np.testing.assert_allclose(np.asarray(block), np.asarray(dense), atol=1e-5)


def test_cached_decoding_equals_full_recomputation(model):
  t, split = 120, 77
  ids = jax.random.randint(jax.random.PRNGKey(2), (2, t), 0, CFG.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(t), (2, t))
  full = model(ids, pos).logits
  out = model(ids[:, :split], pos[:, :split], cache=init_cache(CFG, 2, 128))
  cache, rows = out.cache, [out.logits]
  for i in range(split, t):
    out = model(ids[:, i:i + 1], pos[:, i:i + 1], cache=cache)
    cache = out.cache
    rows.append(out.logits)
  assert int(cache.index) == t
  np.testing.assert_allclose(np.asarray(jnp.concatenate(rows, 1)), np.asarray(full), atol=1e-5)


def test_left_padded_row_equals_row_alone(model):
  ids = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (40,), 0, CFG.vocab_size))
  alone = model(jnp.asarray(ids[None]), jnp.arange(40)[None]).logits[0]
  padded = np.concatenate([np.zeros(9, np.int32), ids])[None]
  valid = np.arange(49)[None] >= 9
  pos = np.maximum(np.arange(49) - 9, 0)[None]
  out = model(jnp.asarray(padded), jnp.asarray(pos), valid=jnp.asarray(valid))
  np.testing.assert_allclose(np.asarray(out.logits[0, 9:]), np.asarray(alone), atol=1e-5)


def test_generate_plain_equals_naive_greedy_loop(model):
  prompt = np.asarray(jax.random.randint(jax.random.PRNGKey(4), (23,), 0, CFG.vocab_size))
  gen = generate(ModeSetup("plain", model), prompt, 12)
  seq = list(prompt)
  for step in range(12):
    logits = model(jnp.asarray([seq]), jnp.arange(len(seq))[None]).logits[0, -1]
    np.testing.assert_allclose(gen.logits[step], np.asarray(logits), atol=1e-5)
    seq.append(int(jnp.argmax(logits)))
  assert gen.tokens.tolist() == seq[len(prompt):]
  assert gen.logits.shape == (12, CFG.vocab_size) and gen.logits.dtype == np.float32


def test_generate_stops_at_eos(model):
  prompt = np.arange(5, dtype=np.int32)
  first = generate(ModeSetup("plain", model), prompt, 6)
  eos = int(first.tokens[2])
  stopped = generate(ModeSetup("plain", model), prompt, 6, eos_ids=(eos,))
  assert stopped.tokens.tolist() == first.tokens.tolist()[:first.tokens.tolist().index(eos) + 1]


def test_bad_prompt_rejected(model):
  with pytest.raises(ValueError, match="prompt ids"):
    generate(ModeSetup("plain", model), np.asarray([1, 500]), 3)
  with pytest.raises(ValueError, match="1-D"):
    generate(ModeSetup("plain", model), np.zeros((2, 2), np.int32), 3)


def test_config_validation():
  with pytest.raises(ValueError, match="multiple"):
    CFG.replace(num_kv_heads=3)
  with pytest.raises(ValueError, match="LLaMA"):
    ModelConfig.from_hf({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
