"""The decoder interface, the plain decoder (KV cache; SelfExtend through attn) and the one
sampling loop, whose `Generation` holds the chosen tokens and, per token, the float32
logits that chose it (row 0 predicts the token right after the prompt)."""
from __future__ import annotations

import functools
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from focus_jax.focus.plan import left_pad
from focus_jax.model import AttnOptions, init_cache
from focus_jax.sampling import Sampler


class Generation(NamedTuple):
  tokens: np.ndarray   # [steps] int32
  logits: np.ndarray   # [steps, vocab] float32


class Decoder(Protocol):
  def prefill(self) -> jax.Array: ...          # logits [V] after the prompt
  def step(self, token: int) -> jax.Array: ...  # appends `token`: the logits [V] after it


def bucket(n: int, multiple: int = 256) -> int:
  return -(-n // multiple) * multiple


def kv_cache_bytes(cfg, tokens: int, cache_dtype: str | None = None) -> int:
  """Bytes of a KV cache (keys and values of every layer) holding `tokens` positions, stored
  in cache_dtype (default the compute dtype; int8 with its per-vector scales)."""
  from focus_jax.model.llama import cache_entry_bytes
  entry = cache_entry_bytes(cfg.head_dim, cache_dtype or cfg.dtype)
  return 2 * cfg.num_layers * int(tokens) * cfg.num_kv_heads * entry


def activation_bytes(cfg, tokens: int) -> int:
  """Bytes a prefill of `tokens` holds live in one layer (the layers run one at a time):
  the residual stream, its normed copy and the attention output (3 x hidden), q/k/v and
  the MLP's gate and up projections. A lower bound on what XLA allocates."""
  per = (3 * cfg.hidden_size + 2 * cfg.intermediate_size
         + (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim)
  return int(tokens) * per * np.dtype(cfg.dtype).itemsize


def check_cache_fits(cfg, tokens: int, what: str, prefill_tokens: int = 0,
                     hint: str = "lower max_new_tokens or the prompt length",
                     cache_dtype: str | None = None) -> None:
  """Refuses, before allocating, a KV cache of `tokens` positions (and the activations of a
  prefill over `prefill_tokens`) that cannot fit."""
  from focus_jax.memory import available_bytes, check_bytes
  avail, where = available_bytes()
  check_bytes(kv_cache_bytes(cfg, tokens, cache_dtype) + activation_bytes(cfg, prefill_tokens),
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
def prefill(graphdef, state, tokens, valid, *, cache_size: int,
            attn: AttnOptions = AttnOptions()):
  """Runs left-padded prompts (tokens, valid [B,T]) into a fresh cache."""
  model = nnx.merge(graphdef, state)
  positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
  cache = init_cache(model.config, tokens.shape[0], cache_size)
  out = model(tokens, positions, valid=valid, cache=cache, attn=attn, logits="last")
  return out.logits[:, -1], out.cache, positions[:, -1]


@functools.partial(jax.jit, static_argnames=("graphdef", "attn"), donate_argnames=("cache",))
def decode_step(graphdef, state, cache, token, position, *, attn: AttnOptions = AttnOptions()):
  """One token per row [B] at positions [B] on top of the cache."""
  out = nnx.merge(graphdef, state)(token[:, None], position[:, None], cache=cache, attn=attn,
                                    logits="last")
  return out.logits[:, -1], out.cache


class PlainDecoder:
  """The model with a KV cache over `prompt` (ids used exactly as given) and up to
  `max_new` more tokens; attn.selfextend = (G, W) for SelfExtend.

  The prompt is left-padded to a bucket (prompts of similar length share one
  compilation); the cache holds the bucket plus max_new positions.
  """

  def __init__(self, model, prompt: np.ndarray, max_new: int, attn: AttnOptions = AttnOptions()):
    cfg, prompt = model.config, np.asarray(prompt, np.int32)
    if prompt.min() < 0 or prompt.max() >= cfg.vocab_size:
      raise ValueError(f"prompt ids must lie in [0, {cfg.vocab_size})")
    t = bucket(prompt.size)
    check_cache_fits(cfg, bucket(t + max_new), f"{prompt.size} prompt + {max_new} new tokens",
                     prefill_tokens=t)
    self.graphdef, self.state = nnx.split(model)
    self.tokens, self.valid = left_pad([prompt], 1, t)
    self.cache_size, self.attn = bucket(t + max_new), attn

  def prefill(self) -> jax.Array:
    logits, self.cache, self.pos = prefill(self.graphdef, self.state, jnp.asarray(self.tokens),
                                           jnp.asarray(self.valid), cache_size=self.cache_size,
                                           attn=self.attn)
    return logits[0]

  def step(self, token: int) -> jax.Array:
    self.pos = self.pos + 1
    logits, self.cache = decode_step(self.graphdef, self.state, self.cache,
                                     jnp.asarray([token], jnp.int32), self.pos, attn=self.attn)
    return logits[0]


def sample(decoder: Decoder, max_new_tokens: int, sampler: Sampler, stop=()) -> Generation:
  """Up to max_new_tokens tokens picked by `sampler` from the decoder's logits; ends
  after a token in `stop` (the EOS ids, or none)."""
  logits = decoder.prefill()
  tokens, rows = [], []
  for step in range(max_new_tokens):
    row = finite_row(logits, step)
    tok = sampler.pick(row, step)
    tokens.append(tok)
    rows.append(row)
    if tok in stop or step == max_new_tokens - 1:
      break
    logits = decoder.step(tok)
  return Generation(np.asarray(tokens, np.int32), np.stack(rows))
