"""The real embedded model (SmolLM2-135M-Instruct) against HF transformers on
Shakespeare text: logits on 1,600 tokens and a greedy 32-token continuation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from focus_jax import assets
from focus_jax.generation.modes import ModeSetup, generate
from focus_jax.model import device_put

N_TOKENS = 1600


@pytest.fixture(scope="module")
def smollm2():
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from focus_jax.checkpoint.hf import load_hf
  hf_dir = assets.smollm2_hf_dir()
  model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True,
                                               trust_remote_code=False).eval()
  tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True, trust_remote_code=False)
  ours, _ = load_hf(assets.smollm2_gguf())  # straight from the GGUF file
  return model, tok, device_put(ours)


def test_config_is_smollm2(smollm2):
  _, _, ours = smollm2
  cfg = ours.config
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
  assert cfg.tie_word_embeddings and ours.lm_head is None
  assert cfg.rope.theta == 100000.0


def test_logits_match_hf_on_long_text(smollm2):
  model, tok, ours = smollm2
  ids = tok(assets.shakespeare_text(n_chars=20000))["input_ids"][:N_TOKENS]
  assert len(ids) == N_TOKENS
  with torch.no_grad():
    ref = model(torch.tensor([ids])).logits[0].numpy()
  logits = ours(jnp.asarray([ids], jnp.int32), jnp.arange(N_TOKENS)[None]).logits
  diff = np.abs(np.asarray(logits[0]) - ref)
  print(f"SmolLM2 {N_TOKENS} tokens: max abs logit diff {diff.max():.2e}, mean {diff.mean():.2e}")
  assert diff.max() < 1e-3
  assert (np.asarray(logits[0]).argmax(-1) == ref.argmax(-1)).all()


def test_greedy_continuation_matches_hf_generate(smollm2):
  model, tok, ours = smollm2
  # A Shakespeare prompt: 32 tokens of blank verse, no end of turn.
  prompt = tok(assets.shakespeare_text(n_chars=3000))["input_ids"][:600]
  with torch.no_grad():
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                         pad_token_id=tok.eos_token_id)[0, len(prompt):]
  assert len(ref) == 32
  ours = generate(ModeSetup("plain", ours), prompt, 32)
  assert ours.tokens.tolist() == ref.tolist()


def test_answers_paris_and_stops_at_eos_like_hf(smollm2):
  model, tok, ours = smollm2
  prompt = tok("The capital of France is")["input_ids"]
  with torch.no_grad():
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=48, do_sample=False,
                         pad_token_id=tok.eos_token_id)[0, len(prompt):]
  gen = generate(ModeSetup("plain", ours), prompt, 48)
  assert gen.tokens.tolist() == ref.tolist()
  assert gen.tokens[-1] in ours.config.eos_token_ids or len(gen.tokens) == 48
  assert tok.decode(gen.tokens).lstrip().startswith("Paris")
