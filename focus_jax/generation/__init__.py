"""Generation in every decoding mode: the mode names (here, the one declaration and its
check), one decoder per mode (decode.PlainDecoder; focus.inference's ExactDecoder and
FastDecoder) and one sampling loop (decode.sample); modes.ModeSetup, generate and
token_logprobs are the calls the launchers and evaluations make.

  plain       cached decoding
  selfextend  the plain decoder with SelfExtend positions; G chosen to cover prompt +
              new tokens unless given (focus_jax.selfextend.resolve)
  focus       FocusLLM, "exact" (official) or "fast"; a prompt shorter than
              min_focus_len runs the plain decoder on BOS ++ prompt

A decoder holds one prompt: `prefill()` returns the logits [V] after it, `step(token)`
appends a chosen token and returns the logits after that. Padding, everywhere: a
left-padded row holds id 0 in its pads and a bool `valid` marks its real tokens
(focus_jax.focus.plan.left_pad); positions count valid tokens only. Lengths are bucketed
so that similar prompts share one compilation.

This file imports nothing heavy: the launchers check --mode before JAX starts.
"""
MODES = ("plain", "selfextend", "focus")
FOCUS_DECODES = ("exact", "fast")
CACHE_DTYPES = ("float32", "bfloat16", "int8")


def check_mode(mode: str) -> str:
  """`mode` when it is one of MODES; else one ValueError line naming them."""
  if mode not in MODES:
    raise ValueError(f"unknown --mode={mode}; available: {', '.join(MODES)}")
  return mode
