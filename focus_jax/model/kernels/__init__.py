"""Attention kernels behind focus_jax.model.attention, chosen per backend and mask kind.

  name        where                 what
  reference   every backend         the pure-JAX blockwise online softmax (the CPU default)
  pallas      GPU (Triton)          flash.flash_attention: the general order/valid/segment
                                    mask and SelfExtend's two position sets
  cudnn       GPU                   jax.nn.dot_product_attention(implementation="cudnn")
                                    where the mask is plain causal plus padding
  splash      TPU                   splash attention (causal mask class, padding as
                                    segment ids) where the mask is plain causal plus padding

`choose` makes the static choice: a (primary, fallback) pair. A fused
primary (cudnn, splash) only fits the plain causal mask, which depends on the
mask arrays; the call checks it at run time (`fused.plain_causal`) and runs
the fallback where it does not hold, so every choice computes the reference's
function. On TPU the general mask and SelfExtend run the reference (the
Pallas kernel is written for GPU and checked on CPU in interpret mode; it has
not been lowered through Mosaic). On CPU a kernel runs only when asked for
by name, in Pallas interpret mode (how the tests compare it with the reference).
"""
from __future__ import annotations

import jax.numpy as jnp

from focus_jax.model.kernels.flash import flash_attention
from focus_jax.model.kernels.fused import (CUDNN_DTYPES, cudnn_attention, plain_causal,
                                           splash_attention)

NAMES = ("auto", "reference", "pallas", "cudnn", "splash")
AUTO = {"cpu": "reference", "gpu": "cudnn", "cuda": "cudnn", "rocm": "pallas", "tpu": "splash"}
CUDNN_MAX_HEAD_DIM = 128


def check_name(name: str) -> str:
  if name not in NAMES:
    raise ValueError(f"unknown attention {name!r}; available: {', '.join(NAMES)}")
  return name


def choose(name: str, backend: str, *, dtype, t: int, s: int, head_dim: int,
           selfextend: bool, segments: bool) -> tuple[str, str | None]:
  """(primary, fallback) kernel names for one attention call (static).

  name: the requested attention (NAMES; "auto": AUTO[backend]); the fallback
  runs where the primary's run-time mask condition fails (None: no condition).
  """
  name = AUTO.get(backend, "reference") if check_name(name) == "auto" else name
  causal_shape = not selfextend and not segments and 1 < t <= s
  if name == "cudnn":
    fits = (causal_shape and jnp.dtype(dtype) in [jnp.dtype(d) for d in CUDNN_DTYPES]
            and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM)
    return ("cudnn", "pallas") if fits else ("pallas", None)
  if name == "splash":
    return ("splash", "reference") if causal_shape else ("reference", None)
  return name, None


__all__ = ["AUTO", "NAMES", "check_name", "choose", "cudnn_attention", "flash_attention",
           "plain_causal", "splash_attention"]
