"""focus_jax: FocusLLM and SelfExtend for LLaMA models in JAX."""
