"""Plain incremental decoding with a KV cache (the `plain` mode of launch.generate).

Every mode returns a `Generation`: the generated tokens and, per generated
token, the float32 logits that chose it (row 0 predicts the token right after
the prompt).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from focus_jax.model import AttnOptions, init_cache
from focus_jax.sampling import Sampler


class Generation(NamedTuple):
  tokens: np.ndarray   # [steps] int32
  logits: np.ndarray   # [steps, vocab] float32


def bucket(n: int, multiple: int = 256) -> int:
  return -(-n // multiple) * multiple


def kv_cache_bytes(cfg, tokens: int) -> int:
  """Bytes of a KV cache (keys and values of every layer) holding `tokens` positions."""
  itemsize = np.dtype(cfg.dtype).itemsize
  return 2 * cfg.num_layers * int(tokens) * cfg.num_kv_heads * cfg.head_dim * itemsize


def activation_bytes(cfg, tokens: int) -> int:
  """Bytes a prefill of `tokens` holds live in one layer (the layers run one at a time):
  the residual stream, its normed copy and the attention output (3 x hidden), q/k/v and
  the MLP's gate and up projections. A lower bound on what XLA allocates."""
  per = (3 * cfg.hidden_size + 2 * cfg.intermediate_size
         + (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim)
  return int(tokens) * per * np.dtype(cfg.dtype).itemsize


def check_cache_fits(cfg, tokens: int, what: str, prefill_tokens: int = 0,
                     hint: str = "lower max_new_tokens or the prompt length") -> None:
  """Refuses, before allocating, a KV cache of `tokens` positions (and the activations of a
  prefill over `prefill_tokens`) that cannot fit."""
  from focus_jax.memory import available_bytes, check_bytes
  avail, where = available_bytes()
  check_bytes(kv_cache_bytes(cfg, tokens) + activation_bytes(cfg, prefill_tokens),
              f"the KV cache{' and prefill activations' if prefill_tokens else ''} for {what}",
              hint, limit=avail, where=where)


def finite_row(logits, step: int) -> np.ndarray:
  """The logits row [V] as float32 on the host; refuses to decode from NaN or inf."""
  row = np.asarray(logits, np.float32)
  if not np.isfinite(row).all():
    bad = int(np.sum(~np.isfinite(row)))
    raise NonFiniteLogits(f"the model produced non-finite logits ({bad} of {row.size} NaN or "
                          f"inf) at generation step {step}: its weights or config "
                          "(rms_norm_eps, rope_theta) are broken; refusing to decode")
  return row


class NonFiniteLogits(ValueError):
  """Decoding stopped: the model's logits hold NaN or inf."""


@functools.partial(jax.jit, static_argnames=("graphdef", "attn", "cache_size"))
def prefill(graphdef, state, tokens, *, cache_size: int, attn: AttnOptions = AttnOptions()):
  """Runs a prompt [B,T] (left padding marked by token id -1) into a fresh cache."""
  model = nnx.merge(graphdef, state)
  valid = tokens >= 0
  positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
  cache = init_cache(model.config, tokens.shape[0], cache_size)
  out = model(jnp.maximum(tokens, 0), positions, valid=valid, cache=cache, attn=attn,
              logits="last")
  return out.logits[:, -1], out.cache, positions[:, -1]


@functools.partial(jax.jit, static_argnames=("graphdef", "attn"), donate_argnames=("cache",))
def decode_step(graphdef, state, cache, token, position, *, attn: AttnOptions = AttnOptions()):
  """One token per row [B] at positions [B] on top of the cache."""
  out = nnx.merge(graphdef, state)(token[:, None], position[:, None], cache=cache, attn=attn,
                                    logits="last")
  return out.logits[:, -1], out.cache


def generate_plain(model, prompt: Sequence[int], max_new_tokens: int,
                   sampler: Sampler = Sampler(), *, attn: AttnOptions = AttnOptions(),
                   stop_at_eos: bool = True, eos_ids=None) -> Generation:
  """Generates up to max_new_tokens after `prompt` (ids used exactly as given).

  attn: attention options (SelfExtend: attn.selfextend = (G, W)).
  """
  cfg = model.config
  prompt = np.asarray(prompt, np.int32)
  if prompt.ndim != 1 or prompt.size == 0:
    raise ValueError(f"prompt must be a non-empty 1-D id sequence, got shape {prompt.shape}")
  if prompt.min() < 0 or prompt.max() >= cfg.vocab_size:
    raise ValueError(f"prompt ids must lie in [0, {cfg.vocab_size})")
  if max_new_tokens < 1:
    raise ValueError("max_new_tokens must be >= 1")
  eos = set(cfg.eos_token_ids if eos_ids is None else eos_ids)
  check_cache_fits(cfg, bucket(bucket(prompt.size) + max_new_tokens),
                   f"{prompt.size} prompt + {max_new_tokens} new tokens",
                   prefill_tokens=bucket(prompt.size))
  graphdef, state = nnx.split(model)
  # Left-pad the prompt to a bucket so prompts of similar length share one compilation.
  t = bucket(prompt.size)
  padded = np.full((1, t), -1, np.int32)
  padded[0, t - prompt.size:] = prompt
  logits, cache, pos = prefill(graphdef, state, jnp.asarray(padded),
                               cache_size=bucket(t + max_new_tokens), attn=attn)
  tokens, rows = [], []
  for step in range(max_new_tokens):
    row = finite_row(logits[0], step)
    tok = sampler.pick(row, step)
    tokens.append(tok)
    rows.append(row)
    if (stop_at_eos and tok in eos) or step == max_new_tokens - 1:
      break
    pos = pos + 1
    logits, cache = decode_step(graphdef, state, cache, jnp.asarray([tok], jnp.int32), pos,
                                attn=attn)
  return Generation(np.asarray(tokens, np.int32), np.stack(rows))
