"""FocusLLM on the real embedded SmolLM2-135M (untrained candidate copies) against
the per-chunk reference of focus_reference.py: a 1,400-token passkey prompt,
multi-block attention in chunks and local input, exact and fast decoding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_reference import reference_focus

from focus_jax import assets
from focus_jax.config import FocusConfig
from focus_jax.generation.modes import ModeSetup, generate
from focus_jax.model import add_candidates, device_put

S, WL, F = 256, 600, 512


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_smollm2_focus_matches_reference(decode):
  from transformers import AutoTokenizer
  from focus_jax.checkpoint.hf import load_hf
  from focus_jax.eval.passkey import make_passkey_prompt
  path = assets.smollm2_hf_dir()
  model = add_candidates(device_put(load_hf(path)[0]))
  tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
  ids, _ = make_passkey_prompt(tok, 1400, depth=0.5, seed=0)
  fc = FocusConfig(chunk_size=S, local_window=WL, fragment_len=F, min_focus_len=1000)
  gen = generate(ModeSetup("focus", model, focus=fc, focus_decode=decode), ids, 4,
                 stop_at_eos=False)
  ref = reference_focus(model, ids, S, WL, F, gen.tokens[:-1],
                        frozen_memory=decode == "fast")
  # fp32 logits of magnitude ~30: 2e-4 is a relative error of about 1e-5
  np.testing.assert_allclose(gen.logits, ref, atol=2e-4, rtol=0)
  assert gen.tokens.tolist() == ref.argmax(-1).tolist()
