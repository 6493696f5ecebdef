"""A decoding mode with its settings (ModeSetup) and the two calls every mode answers:

  gen = generate(setup, prompt_ids, max_new_tokens=8, stop_at_eos=False)
  lp = token_logprobs(setup, prompt_ids, target_ids)   # log p(target_k | prompt ++ targets[:k])
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from focus_jax.config import FocusConfig, ModelConfig
from focus_jax.generation import CACHE_DTYPES, FOCUS_DECODES, check_mode
from focus_jax.generation.decode import Decoder, Generation, PlainDecoder, sample
from focus_jax.model import AttnOptions
from focus_jax.sampling import Sampler

# Chunk rows per batch of an exact decoding step: the step's temporaries (the batch's
# cache rows, each layer's upcast and rotated) are O(this), not O(rows); below it, one
# call as before. SmolLM2 at S=128: 64 rows of 208 slots are 0.3 GB of bfloat16 K/V.
STEP_ROWS = 64


@dataclasses.dataclass
class ModeSetup:
  mode: str
  model: Any                             # a focus_jax.model.LlamaForCausalLM
  group_size: int | None = None          # selfextend
  neighbor_window: int = 1024            # selfextend
  focus: FocusConfig = FocusConfig()     # focus
  focus_decode: str = "exact"            # focus
  mesh: Any = None                       # focus: a jax Mesh (default one device)
  chunk_batch: int = 1                   # focus: chunk rows encoded per call
  progress: bool = False                 # focus: chunk encoding progress bar
  chunk_cache_dtype: str | None = None   # focus, exact: chunk K/V cache storage (None: compute)
  step_rows: int = STEP_ROWS             # focus, exact: chunk rows per step batch (0: all)
  attn: AttnOptions = AttnOptions()      # attention blocking (selfextend sets its grouping)

  def __post_init__(self):
    check_mode(self.mode)
    if self.focus_decode not in FOCUS_DECODES:
      raise ValueError(f"decode must be one of {FOCUS_DECODES}, got {self.focus_decode!r}")
    if self.chunk_batch < 1:
      raise ValueError(f"chunk_batch must be >= 1, got {self.chunk_batch}")
    if self.chunk_cache_dtype is not None and self.chunk_cache_dtype not in CACHE_DTYPES:
      raise ValueError(f"cache_dtype must be one of {CACHE_DTYPES}, "
                       f"got {self.chunk_cache_dtype!r}")
    if self.step_rows < 0:
      raise ValueError(f"step_rows must be >= 0, got {self.step_rows}")

  @property
  def cfg(self) -> ModelConfig:
    return self.model.config

  def describe(self) -> dict:
    """The settings that change results (for run records)."""
    d = {"mode": self.mode}
    if self.mode == "selfextend":
      d.update(group_size=self.group_size, neighbor_window=self.neighbor_window)
    if self.mode == "focus":
      d.update(self.focus.to_dict(), focus_decode=self.focus_decode)
      if self.chunk_cache_dtype:
        d.update(chunk_cache_dtype=self.chunk_cache_dtype)
    return d

  def plain_attn(self, total_len: int) -> AttnOptions:
    """Attention of the plain decoder over `total_len` tokens: SelfExtend's (G, W)
    (G resolved for total_len) in that mode."""
    if self.mode != "selfextend":
      return self.attn
    from focus_jax.selfextend import resolve
    se = resolve(self.cfg, total_len, self.group_size, self.neighbor_window)
    logging.info("SelfExtend: G=%d, W=%d (covers %d tokens)", se.group_size,
                 se.neighbor_window, se.max_length(self.cfg.max_position_embeddings))
    return self.attn._replace(selfextend=(se.group_size, se.neighbor_window))


def decoder(setup: ModeSetup, prompt: np.ndarray, max_new: int,
            timings: dict | None = None) -> Decoder:
  """The setup's decoder for `prompt` and max_new more tokens (timings: focus_decoder)."""
  if setup.mode == "focus":
    from focus_jax.focus.inference import focus_decoder
    return focus_decoder(setup, prompt, max_new, timings)
  return PlainDecoder(setup.model, prompt, max_new, setup.plain_attn(prompt.size + max_new))


def generate(setup: ModeSetup, prompt: Sequence[int], max_new_tokens: int,
             sampler: Sampler = Sampler(), *, stop_at_eos: bool = True, eos_ids=None,
             timings: dict | None = None) -> Generation:
  """Generates up to max_new_tokens after `prompt` (ids used as given) in the setup's mode,
  stopping after an EOS id (eos_ids, default the model's) when stop_at_eos."""
  prompt = np.asarray(prompt)
  if prompt.ndim != 1 or prompt.size == 0:
    raise ValueError(f"prompt must be a non-empty 1-D id sequence, got shape {prompt.shape}")
  if max_new_tokens < 1:
    raise ValueError("max_new_tokens must be >= 1")
  stop = set(setup.cfg.eos_token_ids if eos_ids is None else eos_ids) if stop_at_eos else ()
  return sample(decoder(setup, prompt, max_new_tokens, timings), max_new_tokens, sampler, stop)


class Forced:
  """A sampler that picks the given tokens in order (teacher forcing)."""

  def __init__(self, tokens):
    self.tokens = [int(t) for t in tokens]

  def pick(self, logits, step: int) -> int:
    return self.tokens[step]


def log_softmax_at(rows: np.ndarray, targets) -> np.ndarray:
  """float64 log_softmax(rows[k])[targets[k]] for each row k."""
  rows = np.asarray(rows, np.float64)
  m = rows.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(rows - m).sum(-1, keepdims=True)))[:, 0]
  return rows[np.arange(len(targets)), np.asarray(targets)] - lse


@functools.partial(jax.jit, static_argnames=("graphdef", "attn"))
def _block_logits(graphdef, state, cache, tokens, positions, *, attn: AttnOptions):
  out = nnx.merge(graphdef, state)(tokens, positions, cache=cache, attn=attn, logits="all")
  return out.logits[0]


def token_logprobs(setup: ModeSetup, prompt: Sequence[int],
                   targets: Sequence[int]) -> np.ndarray:
  """float64 [len(targets)]: log p(targets[k] | prompt ++ targets[:k]) in the setup's mode.

  plain / selfextend: the prompt is prefilled into a KV cache, then the
  targets run as one block on it (all their logits at once). focus, exact:
  what exact decoding with the targets forced gives (one chunk update and one
  local recomputation per target), computed in one batched pass
  (exact_batch.exact_logits); a prompt too short for the memory is scored by
  the plain model, BOS first, as generation does. focus, fast: fast decoding
  with the targets forced (the memory frozen after the prompt).
  """
  prompt, targets = np.asarray(prompt, np.int32), np.asarray(targets, np.int32)
  if prompt.ndim != 1 or prompt.size == 0 or targets.ndim != 1 or targets.size == 0:
    raise ValueError("prompt and targets must be non-empty 1-D id sequences")
  if setup.mode == "focus" and setup.focus_decode == "exact":
    from focus_jax.focus.exact_batch import exact_logits
    from focus_jax.focus.plan import make_plan
    plan = make_plan(prompt, setup.cfg, setup.focus)
    if plan.focus:
      return log_softmax_at(exact_logits(setup.model, prompt, targets, focus=setup.focus,
                                         mesh=setup.mesh, chunk_batch=setup.chunk_batch),
                            targets)
    prompt = plan.local   # the plain model on BOS ++ prompt, as focus decoding runs it
  elif setup.mode == "focus":
    gen = generate(setup, prompt, targets.size, Forced(targets), stop_at_eos=False)
    return log_softmax_at(gen.logits, targets)
  dec = PlainDecoder(setup.model, prompt, targets.size,
                     setup.plain_attn(prompt.size + targets.size))
  rows = [np.asarray(dec.prefill(), np.float32)[None]]
  if targets.size > 1:
    positions = dec.pos[:, None] + 1 + jnp.arange(targets.size - 1)[None]
    rest = _block_logits(dec.graphdef, dec.state, dec.cache, jnp.asarray(targets[None, :-1]),
                         positions, attn=dec.attn)
    rows.append(np.asarray(rest, np.float32))
  return log_softmax_at(np.concatenate(rows), targets)
