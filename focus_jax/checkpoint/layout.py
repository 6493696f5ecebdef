"""Module paths of the NNX decoder and their Hugging Face / GGUF tensor names: one table.

A model's state is addressed by module paths ("model/layers/self_attn/q_proj/
kernel"); decoder layers are stacked on a leading axis. The HF name of a path
is the path itself with "." for "/", the layer index after "layers" and
"weight" for kernel / embedding; kernels are [in, out] here and [out, in] in
HF files. GGUF names come from GGUF_NAMES. FocusLLM candidates are the
`candidate_{q,k,v,o}_proj` modules (CandidateParam) of the attention.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterator

import ml_dtypes
import numpy as np
from flax import nnx, traverse_util

from focus_jax.config import CANDIDATE_PROJS, ModelConfig
from focus_jax.model.llama import candidate_attr


class CheckpointError(ValueError):
  """A checkpoint is missing, malformed or does not match its config."""


LAYERS = "model/layers/"
CANDIDATE = "candidate_"
# module path (under model/layers/ for per-layer tensors) -> GGUF name (under blk.{i}.)
GGUF_NAMES = {
    "model/embed_tokens/embedding": "token_embd.weight", "model/norm/weight": "output_norm.weight",
    "lm_head/kernel": "output.weight",
    "input_layernorm/weight": "attn_norm.weight", "post_attention_layernorm/weight": "ffn_norm.weight",
    "self_attn/q_proj/kernel": "attn_q.weight", "self_attn/k_proj/kernel": "attn_k.weight",
    "self_attn/v_proj/kernel": "attn_v.weight", "self_attn/o_proj/kernel": "attn_output.weight",
    "self_attn/q_proj/bias": "attn_q.bias", "self_attn/k_proj/bias": "attn_k.bias",
    "self_attn/v_proj/bias": "attn_v.bias", "self_attn/o_proj/bias": "attn_output.bias",
    "mlp/gate_proj/kernel": "ffn_gate.weight", "mlp/up_proj/kernel": "ffn_up.weight",
    "mlp/down_proj/kernel": "ffn_down.weight", "mlp/gate_proj/bias": "ffn_gate.bias",
    "mlp/up_proj/bias": "ffn_up.bias", "mlp/down_proj/bias": "ffn_down.bias"}


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One state entry: module path, shape without the layer axis, and how HF stores it."""
  path: str
  shape: tuple[int, ...]
  stacked: bool      # has the leading layer axis
  matrix: bool       # a kernel: transposed between our [in, out] and HF [out, in]

  @property
  def candidate(self) -> bool:
    return CANDIDATE in self.path

  def hf(self, layer: int | None = None, candidate_prefix: str = CANDIDATE) -> str:
    """HF name (of one layer for stacked tensors); candidate_prefix renames candidate_*."""
    name = self.path
    if self.stacked:
      name = LAYERS[:-1] + f"/{layer}/" + name[len(LAYERS):]
    name = name.replace(CANDIDATE, candidate_prefix)
    parts = name.split("/")
    parts[-1] = "weight" if parts[-1] in ("kernel", "embedding") else parts[-1]
    return ".".join(parts)

  def gguf(self, layer: int | None = None) -> str:
    if self.stacked:
      return f"blk.{layer}.{GGUF_NAMES[self.path[len(LAYERS):]]}"
    return GGUF_NAMES[self.path]

  def hf_shape(self) -> tuple[int, ...]:
    return tuple(reversed(self.shape)) if self.matrix else self.shape


def abstract_model(cfg: ModelConfig, candidate_projs=()):
  """(graphdef, abstract state) of the model, with candidates; no weights are computed."""
  from focus_jax.model.llama import LlamaForCausalLM, add_candidates

  def build():
    m = LlamaForCausalLM(cfg, nnx.Rngs(0))
    return add_candidates(m, tuple(candidate_projs)) if candidate_projs else m
  return nnx.split(nnx.eval_shape(build))


def flat(tree) -> dict:
  """Nested dict (a pure state) -> {"a/b/c": leaf}."""
  return traverse_util.flatten_dict(tree, sep="/")


def tensors(cfg: ModelConfig, candidate_projs=()) -> list[Tensor]:
  """Every tensor of the model the config describes, in a stable order."""
  _, state = abstract_model(cfg, candidate_projs)
  out = []
  for path, leaf in flat(nnx.to_pure_dict(state)).items():
    stacked = path.startswith(LAYERS)
    shape = tuple(leaf.shape[1:] if stacked else leaf.shape)
    out.append(Tensor(path, shape, stacked, path.endswith("kernel")))
  return out


def check_shape(name: str, got, expected) -> None:
  if tuple(got) != tuple(expected):
    raise CheckpointError(f"tensor {name}: shape mismatch, expected {tuple(expected)} "
                          f"but the checkpoint has {tuple(got)}")


def assemble(cfg: ModelConfig, dtype, get: Callable[[Tensor, int | None], np.ndarray],
             candidate_projs=(), log: Callable[[str], None] = lambda msg: None):
  """Builds the model one tensor at a time from `get(tensor, layer)` (HF layout, [out, in]).

  Stacked arrays are allocated once and filled in place (numpy), so peak
  memory is the model plus one tensor. Returns a LlamaForCausalLM holding
  numpy arrays (jnp operations accept them; `jax.device_put` moves them).
  """
  check_fits(cfg, dtype)
  graphdef, state = abstract_model(cfg, candidate_projs)
  pure = {}
  specs = tensors(cfg, candidate_projs)
  for t in (t for t in specs if not t.stacked):
    pure[t.path] = _to_ours(_float(get(t, None), t.hf()), t.matrix, dtype)
  stacked = [t for t in specs if t.stacked]
  for t in stacked:
    pure[t.path] = np.empty((cfg.num_layers, *t.shape), dtype)
  for i in range(cfg.num_layers):
    for t in stacked:
      pure[t.path][i] = _to_ours(_float(get(t, i), t.hf(i)), t.matrix, dtype)
    log(f"loaded layer {i + 1}/{cfg.num_layers} ({len(stacked)} tensors)")
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(pure, sep="/"))
  return nnx.merge(graphdef, state)


FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64),
                np.dtype(ml_dtypes.bfloat16))


def _float(x: np.ndarray, name: str) -> np.ndarray:
  """Weights are floating point: an integer or boolean tensor is refused, not cast."""
  if np.dtype(x.dtype) not in FLOAT_DTYPES:
    raise CheckpointError(f"tensor {name} holds {x.dtype} values; weights must be floating "
                          "point (float16, bfloat16, float32)")
  return x


def check_fits(cfg: ModelConfig, dtype) -> None:
  """Refuses a model whose parameters cannot fit in this machine's memory (before allocating)."""
  from focus_jax.memory import check_bytes
  check_bytes(cfg.param_count() * np.dtype(dtype).itemsize,
              f"the model's {cfg.param_count():,} parameters ({np.dtype(dtype).name})")


def _to_ours(x: np.ndarray, matrix: bool, dtype) -> np.ndarray:
  x = x.T if matrix else x
  return np.ascontiguousarray(x.astype(dtype, copy=False))


def _to_hf(x: np.ndarray, matrix: bool) -> np.ndarray:
  return np.ascontiguousarray(x.T if matrix else x)


HFItem = tuple[str, Callable[[], np.ndarray], tuple, np.dtype]


def iter_hf_tensors(model, *, candidates: bool = False,
                    candidate_prefix: str = CANDIDATE) -> Iterator[HFItem]:
  """(HF name, thunk giving the HF-layout tensor, HF shape, dtype) for the model's base
  tensors (candidates=False) or its candidate projections (True)."""
  pure = flat(nnx.to_pure_dict(nnx.state(model)))
  specs = [t for t in tensors(model.config, model.candidate_projs) if t.candidate == candidates]
  for t in (t for t in specs if not t.stacked):
    a = np.asarray(pure[t.path])
    yield t.hf(), (lambda a=a, m=t.matrix: _to_hf(a, m)), t.hf_shape(), a.dtype
  stacked = [(t, np.asarray(pure[t.path])) for t in specs if t.stacked]
  for i in range(model.config.num_layers):
    for t, a in stacked:
      yield (t.hf(i, candidate_prefix), (lambda a=a, i=i, m=t.matrix: _to_hf(a[i], m)),
             t.hf_shape(), a.dtype)


def candidate_projs_of(names) -> tuple[str, ...]:
  """The candidate projections (in CANDIDATE_PROJS order) among module paths or HF
  tensor names: those with a `candidate_{p}_proj` part."""
  parts = {part for n in names for part in re.split(r"[./]", n)}
  return tuple(p for p in CANDIDATE_PROJS if candidate_attr(p) in parts)


def validate(model) -> None:
  """Checks every tensor the config calls for is there with the right shape."""
  pure = flat(nnx.to_pure_dict(nnx.state(model)))
  cfg = model.config
  for t in tensors(cfg, model.candidate_projs):
    if t.path not in pure:
      raise CheckpointError(f"the model lacks {t.path} required by the config")
    check_shape(t.path, np.shape(pure[t.path]),
                (cfg.num_layers, *t.shape) if t.stacked else t.shape)


def is_legacy(tree: dict) -> bool:
  """A params tree of the flat layout written before the NNX modules ("embed", "layers")."""
  return "embed" in tree and "layers" in tree and "model" not in tree


def tree_map_paths(fn, tree):
  """fn(path, leaf) over a nested dict."""
  return traverse_util.unflatten_dict({k: fn(k, v) for k, v in flat(tree).items()}, sep="/")

