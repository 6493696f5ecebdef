"""Token choice: greedy by default, temperature + nucleus (top-p) sampling on request.

A temperature below float32's smallest normal number (1.2e-38: smaller ones are 0
or flushed to 0 by XLA) is greedy decoding, the limit of sampling as the
temperature goes to 0; any larger one samples, with
the logits shifted by their maximum before the division so that no temperature
turns them into inf - inf.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Sampler:
  temperature: float = 0.0   # 0: greedy
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if not math.isfinite(self.temperature) or self.temperature < 0:
      raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature < np.finfo(np.float32).tiny   # 0, or 0 in float32: the limit

  def key(self, step: int):
    return jax.random.fold_in(jax.random.PRNGKey(self.seed), step)

  def pick(self, logits, step: int) -> int:
    """Chooses the next token from logits [V] for generation step `step`."""
    if self.greedy:
      return int(jnp.argmax(logits))
    return int(_sample(jnp.asarray(logits, jnp.float32), self.key(step),
                       jnp.float32(self.temperature), jnp.float32(self.top_p)))


@jax.jit
def _sample(logits, key, temperature, top_p):
  logits = (logits - jnp.max(logits)) / temperature   # the top token stays at 0, never NaN
  order = jnp.argsort(-logits)
  probs = jax.nn.softmax(logits[order])
  # keep the smallest prefix whose mass reaches top_p (always at least one token)
  keep = (jnp.cumsum(probs) - probs) < top_p
  masked = jnp.where(keep, logits[order], -jnp.inf)
  return order[jax.random.categorical(key, masked)]
