"""Each NNX submodule against transformers' own torch submodule (random tiny configs):
LlamaRMSNorm, LlamaMLP, LlamaAttention and LlamaDecoderLayer, weights loaded through the
checkpoint name table, on GQA, MQA and biased configs."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from focus_jax.checkpoint.hf import load_hf
from focus_jax.model import make_context

T = 37


@pytest.fixture(scope="module", params=[(4, False), (2, True), (1, True)],
            ids=["mha", "gqa2-bias", "mqa-bias"])
def pair(request, tmp_path_factory):
  kv, bias = request.param
  torch.manual_seed(kv)
  config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=kv, head_dim=12,
                       attention_bias=bias, mlp_bias=bias, rope_theta=500.0,
                       max_position_embeddings=128, attn_implementation="eager")
  hf = LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if "norm" in name or "bias" in name:
        p.add_(0.2 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("hf")
  hf.save_pretrained(path)
  ours, _ = load_hf(path)
  return hf, ours


def _x(seed, d):
  return np.random.default_rng(seed).standard_normal((2, T, d)).astype(np.float32)


def _torch(x):
  return torch.from_numpy(np.asarray(x))


def _rope_and_mask(hf, x):
  pos = torch.arange(T)[None].expand(2, T)
  cos_sin = hf.model.rotary_emb(_torch(x), pos)
  mask = torch.triu(torch.full((T, T), float("-inf")), 1)[None, None].expand(2, 1, T, T)
  return cos_sin, mask


def _ctx(ours):
  return make_context(ours.config, jnp.broadcast_to(jnp.arange(T), (2, T)))


def test_rmsnorm(pair):
  hf, ours = pair
  x = _x(0, 48)
  with torch.no_grad():
    ref = hf.model.layers[1].input_layernorm(_torch(x)).numpy()
  got = ours.model.layer(1).input_layernorm(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=0)


def test_mlp(pair):
  hf, ours = pair
  x = _x(1, 48)
  with torch.no_grad():
    ref = hf.model.layers[0].mlp(_torch(x)).numpy()
  np.testing.assert_allclose(np.asarray(ours.model.layer(0).mlp(jnp.asarray(x))), ref,
                             atol=1e-5, rtol=0)


def test_attention(pair):
  hf, ours = pair
  x = _x(2, 48)
  cos_sin, mask = _rope_and_mask(hf, x)
  with torch.no_grad():
    ref = hf.model.layers[1].self_attn(_torch(x), position_embeddings=cos_sin,
                                       attention_mask=mask)[0].numpy()
  got, _, _ = ours.model.layer(1).self_attn(jnp.asarray(x), _ctx(ours))
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=0)


def test_decoder_layer(pair):
  hf, ours = pair
  x = _x(3, 48)
  cos_sin, mask = _rope_and_mask(hf, x)
  with torch.no_grad():
    ref = hf.model.layers[0](_torch(x), attention_mask=mask, position_embeddings=cos_sin,
                             position_ids=torch.arange(T)[None].expand(2, T))
  ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
  got, _, _ = ours.model.layer(0)(jnp.asarray(x), _ctx(ours))
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=0)


def test_whole_model(pair):
  hf, ours = pair
  ids = np.random.default_rng(4).integers(0, 64, (2, T))
  with torch.no_grad():
    ref = hf(torch.from_numpy(ids)).logits.numpy()
  got = ours(jnp.asarray(ids, jnp.int32), jnp.broadcast_to(jnp.arange(T), (2, T))).logits
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4, rtol=0)
