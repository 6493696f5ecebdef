"""The LLaMA decoder: one forward for every path (plain, chunk, candidate, local, SelfExtend)."""
from focus_jax.model.llama import KVCache, Prefix, forward, init_cache, init_params, add_candidate_params
from focus_jax.model.rope import apply_rope, inv_frequencies

__all__ = ["KVCache", "Prefix", "forward", "init_cache", "init_params", "add_candidate_params",
           "apply_rope", "inv_frequencies"]
