"""The LLaMA decoder as Flax NNX modules: one call for every path (plain, chunk, candidate,
local, SelfExtend).

  model = focus_jax.model.load("out/smollm2")          # a LlamaForCausalLM
  out = model(tokens, positions)                       # ForwardOutput(logits, hidden, cache, kv)
"""
from focus_jax.model.llama import (Attention, AttnOptions, CandidateParam, DecoderLayer,
                                   ForwardOutput, KVCache, Linear, LlamaForCausalLM, LlamaModel,
                                   MLP, Prefix, RMSNorm, ScanOptions, add_candidates, device_put, init_cache,
                                   make_context, param_count, remove_candidates)
from focus_jax.model.rope import apply_rope, inv_frequencies


def load(path, dtype: str | None = None, sharding=None):
  """The model of a focus_jax checkpoint folder (launch.convert / training output).

  dtype: cast the parameters ("float32", "bfloat16"); sharding: where to put them
  (default: the first device). The checkpoint's side files (HF config, FocusLLM
  settings, tokenizer) are in focus_jax.checkpoint.load_checkpoint's extras.
  """
  from focus_jax.checkpoint.orbax import load_checkpoint
  return load_checkpoint(path, dtype=dtype, sharding=sharding)[0]


__all__ = ["Attention", "AttnOptions", "CandidateParam", "DecoderLayer", "ForwardOutput",
           "KVCache", "Linear", "LlamaForCausalLM", "LlamaModel", "MLP", "Prefix", "RMSNorm", "ScanOptions",
           "add_candidates", "apply_rope", "device_put", "init_cache", "inv_frequencies", "load",
           "make_context", "param_count", "remove_candidates"]
