"""Every model call of the evaluations: generation and teacher-forced log-probabilities.

All evaluation code reaches the decoder through this module only, so a change
of the model API touches this file and nothing else in focus_jax.eval.

  setup = ModeSetup("selfextend", model, neighbor_window=1024)
  gen = generate(setup, prompt_ids, max_new_tokens=8, stop_at_eos=False)
  lp = token_logprobs(setup, prompt_ids, target_ids)   # log p(target_k | prompt ++ targets[:k])

Modes: "plain" (cached decoding), "selfextend" (G chosen to cover prompt +
targets unless given), "focus" (FocusLLM; teacher-forced log-probabilities
equal exact decoding with the targets forced as the generated tokens, so every
target reads a memory rebuilt from the chunks extended by the targets before
it, exactly as in exact generation; computed in one batched pass by
focus_jax.focus.exact_batch).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from focus_jax.config import FocusConfig, ModelConfig
from focus_jax.decoding import Generation, bucket, generate_plain, prefill
from focus_jax.model import AttnOptions
from focus_jax.sampling import Sampler

MODES = ("plain", "selfextend", "focus")


@dataclasses.dataclass
class ModeSetup:
  mode: str
  model: Any                             # a focus_jax.model.LlamaForCausalLM
  group_size: int | None = None          # selfextend
  neighbor_window: int = 1024            # selfextend
  focus: FocusConfig = FocusConfig()     # focus
  focus_decode: str = "exact"            # focus
  mesh: Any = None                       # focus
  chunk_batch: int = 1                   # focus
  progress: bool = False                 # focus: chunk encoding progress bar
  chunk_cache_dtype: str | None = None   # focus, exact: chunk K/V cache storage (None: compute)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")

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


def generate(setup: ModeSetup, prompt: Sequence[int], max_new_tokens: int,
             sampler: Sampler = Sampler(), *, stop_at_eos: bool = True,
             eos_ids=None) -> Generation:
  """Generates after `prompt` (ids used as given) in the setup's mode."""
  m = setup.model
  kw = dict(stop_at_eos=stop_at_eos, eos_ids=eos_ids)
  if setup.mode == "plain":
    return generate_plain(m, prompt, max_new_tokens, sampler, **kw)
  if setup.mode == "selfextend":
    from focus_jax.selfextend import generate_selfextend
    return generate_selfextend(m, prompt, max_new_tokens, sampler,
                               group_size=setup.group_size,
                               neighbor_window=setup.neighbor_window, **kw)
  from focus_jax.focus.inference import generate_focus
  return generate_focus(m, prompt, max_new_tokens, sampler, focus=setup.focus,
                        decode=setup.focus_decode, mesh=setup.mesh,
                        chunk_batch=setup.chunk_batch, progress=setup.progress,
                        cache_dtype=setup.chunk_cache_dtype, **kw)


class _Forced:
  """A sampler that picks the given tokens in order (teacher forcing)."""

  def __init__(self, tokens):
    self.tokens = [int(t) for t in tokens]

  def pick(self, logits, step: int) -> int:
    return self.tokens[step]


def _log_softmax_at(rows: np.ndarray, targets) -> np.ndarray:
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
  prompt = np.asarray(prompt, np.int32)
  targets = np.asarray(targets, np.int32)
  if prompt.ndim != 1 or prompt.size == 0 or targets.ndim != 1 or targets.size == 0:
    raise ValueError("prompt and targets must be non-empty 1-D id sequences")
  cfg = setup.cfg
  if setup.mode == "focus" and setup.focus_decode == "exact":
    from focus_jax.focus.exact_batch import exact_logits
    from focus_jax.focus.plan import make_plan
    plan = make_plan(prompt, cfg, setup.focus)
    if plan.focus:
      return _log_softmax_at(exact_logits(setup.model, prompt, targets, focus=setup.focus,
                                          mesh=setup.mesh, chunk_batch=setup.chunk_batch),
                             targets)
    prompt = plan.local   # the plain model on BOS ++ prompt, as generate_focus runs it
  elif setup.mode == "focus":
    gen = generate(setup, prompt, targets.size, _Forced(targets), stop_at_eos=False)
    return _log_softmax_at(gen.logits, targets)
  se = None
  if setup.mode == "selfextend":
    from focus_jax.selfextend import resolve
    s = resolve(cfg, prompt.size + targets.size, setup.group_size, setup.neighbor_window)
    se = (s.group_size, s.neighbor_window)
  t = bucket(prompt.size)
  padded = np.full((1, t), -1, np.int32)
  padded[0, t - prompt.size:] = prompt
  graphdef, state = nnx.split(setup.model)
  attn = AttnOptions(selfextend=se)
  first, cache, pos = prefill(graphdef, state, jnp.asarray(padded),
                              cache_size=bucket(t + targets.size), attn=attn)
  rows = [np.asarray(first[0], np.float32)[None]]
  if targets.size > 1:
    positions = pos[:, None] + 1 + jnp.arange(targets.size - 1)[None]
    rest = _block_logits(graphdef, state, cache, jnp.asarray(targets[None, :-1]), positions,
                         attn=attn)
    rows.append(np.asarray(rest, np.float32))
  return _log_softmax_at(np.concatenate(rows), targets)
