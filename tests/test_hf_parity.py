"""Logit parity with Hugging Face transformers (PyTorch) on random tiny LLaMA
configs: HF dir -> focus_jax params -> logits; export -> reload with HF -> logits."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from focus_jax.checkpoint.hf import export_hf, load_hf
from focus_jax.model import AttnOptions

T = 260  # > max_position_embeddings of the tiny configs: long enough to exercise RoPE scaling
ROPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
}


def _hf_model(tmp_path, kv_heads, tied, rope, bias, mlp_bias=False):
  torch.manual_seed(0)
  kw = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
            tie_word_embeddings=tied, attention_bias=bias, mlp_bias=mlp_bias, rms_norm_eps=1e-5,
            rope_theta=5000.0)
  if ROPES[rope] is not None:
    kw["rope_scaling"] = dict(ROPES[rope])
  model = LlamaForCausalLM(LlamaConfig(**kw)).eval()
  with torch.no_grad():  # non-trivial norms and biases
    for name, p in model.named_parameters():
      if "norm" in name or "bias" in name:
        p.add_(0.1 * torch.randn_like(p))
  path = tmp_path / "hf"
  model.save_pretrained(path)
  return model, path


def _jax_logits(model, ids):
  pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  return np.asarray(model(jnp.asarray(ids), pos).logits)


@pytest.mark.parametrize("kv_heads,tied,rope,bias", [
    (4, False, "default", False),   # MHA (GQA ratio 1)
    (2, True, "default", False),    # GQA ratio 2, tied
    (1, False, "linear", True),     # MQA, linear RoPE, attention bias
    (2, False, "llama3", False),    # llama3 RoPE
    (4, True, "llama3", True),
    (1, True, "dynamic", False),    # dynamic NTK
    (2, False, "linear", True),
])
def test_logits_match_hf_and_survive_export(tmp_path, kv_heads, tied, rope, bias):
  model, path = _hf_model(tmp_path, kv_heads, tied, rope, bias, mlp_bias=bias)
  ids = np.random.default_rng(1).integers(0, 320, size=(2, T)).astype(np.int32)
  with torch.no_grad():
    ref = model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
  ours_model, hf_cfg = load_hf(path)
  cfg = ours_model.config
  assert cfg.rope.rope_type == rope and cfg.tie_word_embeddings == tied
  assert (ours_model.lm_head is None) == tied
  ours = _jax_logits(ours_model, ids)
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

  out = tmp_path / "export"
  export_hf(ours_model, hf_cfg, out)
  back, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True,
                                                    local_files_only=True, trust_remote_code=False)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  with torch.no_grad():
    again = back.eval()(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
  np.testing.assert_allclose(again, ref, atol=1e-5, rtol=0)
  assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] == tied


def test_bf16_compute_close_to_fp32(tmp_path):
  model, path = _hf_model(tmp_path, 2, False, "default", False)
  ids = np.random.default_rng(2).integers(0, 320, size=(1, 64)).astype(np.int32)
  ours, _ = load_hf(path)
  f32 = _jax_logits(ours, ids)
  b16 = _jax_logits(ours.set_config(ours.config.replace(compute_dtype="bfloat16")), ids)
  assert b16.dtype == np.float32  # logits are always float32
  # bf16 keeps ~3 significant digits: the predicted tokens agree almost everywhere
  assert (f32.argmax(-1) == b16.argmax(-1)).mean() > 0.9
  assert np.abs(f32 - b16).max() < 0.1 * np.abs(f32).max()
