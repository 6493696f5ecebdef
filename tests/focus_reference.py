"""A deliberately plain FocusLLM reference for the tests: Python loops over chunks,
explicit token and position lists, one unbatched model call per chunk input,
everything recomputed from scratch at every generated token (FOCUSLLM.md).

To keep the number of compilations small, each call's token list is padded on
the RIGHT to a multiple of PAD_TO and the result is read at the last real
token: attention is causal, so tokens after it cannot change it.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from focus_jax.config import ModelConfig
from focus_jax.model import CandidateParam, LlamaForCausalLM, Prefix, add_candidates

TINY = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, bos_token_id=5, eos_token_ids=())


PAD_TO = 32


@functools.partial(jax.jit, static_argnames=("graphdef", "logits", "return_kv"))
def _call(graphdef, state, tokens, positions, candidate_index=None, prefix=None, logits="all",
          return_kv=False):
  return nnx.merge(graphdef, state)(tokens, positions, candidate_index=candidate_index,
                                    prefix=prefix, logits=logits, return_kv=return_kv)


def _forward(model, tokens, positions, **kw):
  return _call(*nnx.split(model), tokens, positions, **kw)


def _padded(seq, positions):
  size = -(-len(seq) // PAD_TO) * PAD_TO
  extra = size - len(seq)
  return (jnp.asarray([list(seq) + [0] * extra]),
          jnp.asarray([list(positions) + [positions[-1] + 1 + i for i in range(extra)]]))


def perturb_candidates(model, seed: int, scale: float = 0.05):
  """Adds noise to the candidate projections so that they differ from the originals."""
  cand = nnx.state(model, CandidateParam)
  leaves, tree = jax.tree.flatten(cand)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  nnx.update(model, jax.tree.unflatten(
      tree, [w + scale * jax.random.normal(k, w.shape) for w, k in zip(leaves, keys)]))
  return model


def tiny_model(cfg=TINY, seed=0):
  """A random model with candidate projections that differ from the originals."""
  model = add_candidates(LlamaForCausalLM(cfg, nnx.Rngs(seed), std=0.05))
  return perturb_candidates(model, seed + 1)


def _with_bos(seq, bos):
  return list(seq) if seq and seq[0] == bos else [bos] + list(seq)


def candidate_kv(model, seq):
  """Per-layer pre-RoPE K/V [L, KV, hd] of the last token of `seq` run as the candidate."""
  t = len(seq)
  tokens, positions = _padded(seq, list(range(t)))
  out = _forward(model, tokens, positions, candidate_index=jnp.asarray([t - 1]),
                 logits=None, return_kv=True)
  k, v = out.kv
  return k[:, 0, t - 1], v[:, 0, t - 1]


def local_logits(model, mem, local, bos_sees_memory=True):
  """Last-position logits of `local` after the memory entries (positions 0..n-1, n, ...).

  bos_sees_memory=False: the first local token's K/V come from a run of that token alone
  at position n (it sees nothing else), and join the memory as one more prefix entry
  that the other local tokens, run after it, attend to."""
  n = len(mem)
  pos = list(range(n))
  if not bos_sees_memory:
    tokens, positions = _padded(local[:1], [n])
    k1, v1 = _forward(model, tokens, positions, logits=None, return_kv=True).kv
    mem = list(mem) + [(k1[:, 0, 0], v1[:, 0, 0])]
    pos, local = pos + [n], local[1:]
  k = jnp.stack([m[0] for m in mem], 1)[:, None]  # [L, 1, n, KV, hd]
  v = jnp.stack([m[1] for m in mem], 1)[:, None]
  prefix = Prefix(k, v, jnp.asarray([pos]), jnp.full((1, len(pos)), -1),
                  jnp.ones((1, len(pos)), bool))
  tokens, positions = _padded(local, [len(pos) + i for i in range(len(local))])
  out = _forward(model, tokens, positions, prefix=prefix)
  return np.asarray(out.logits[0, len(local) - 1], np.float32)


def reference_focus(model, x, s, wl, frag_len, generated=(), frozen_memory=False,
                    bos_sees_memory=True):
  """Logits [len(generated) + 1, V]: row t predicts the token after x ++ generated[:t].

  Chunk i's input at step t is chunk_i ++ q ++ generated[:t] with its last token
  the candidate; the local input is BOS ++ local ++ generated[:t]. With
  frozen_memory the memory of step 0 is reused at every step (fast mode).
  bos_sees_memory=False: the local BOS does not attend to the memory (local_logits).
  """
  x = [int(a) for a in x]
  bos = model.config.bos_token_id
  big_l = len(x)
  mem_text, local = x[:big_l - wl], x[big_l - wl:]
  f = min(frag_len, s, wl)
  q = _with_bos(x[big_l - f:], bos)
  chunks = [mem_text[i:i + s] for i in range(0, len(mem_text), s)]
  rows, mem0 = [], None
  for t in range(len(generated) + 1):
    gen = [int(a) for a in generated[:t]]
    if frozen_memory and mem0 is not None:
      mem = mem0
    else:
      mem = [candidate_kv(model, chunk + q + gen) for chunk in chunks]
      mem0 = mem
    rows.append(local_logits(model, mem, _with_bos(local, bos) + gen, bos_sees_memory))
  return np.stack(rows)


def reference_plain(model, x, generated=()):
  """The plain model on BOS ++ x (BOS only when x[0] != BOS), recomputed per step."""
  seq = _with_bos([int(a) for a in x], model.config.bos_token_id)
  rows = []
  for t in range(len(generated) + 1):
    s = seq + [int(a) for a in generated[:t]]
    tokens, positions = _padded(s, list(range(len(s))))
    out = _forward(model, tokens, positions)
    rows.append(np.asarray(out.logits[0, len(s) - 1], np.float32))
  return np.stack(rows)
