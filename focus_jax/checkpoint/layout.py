"""The params pytree layout and its mapping to Hugging Face / GGUF tensor names.

Weights are stored [in, out] (HF stores [out, in]); decoder layers are stacked
on a leading axis of size num_layers:

  embed [V, D], final_norm [D], lm_head [D, V] (absent when embeddings are tied)
  layers/{attn_norm, mlp_norm} [L, D]
  layers/{q, k, v, o, gate, up, down} [L, in, out]   (+ *_bias [L, out] when enabled)
  candidate/{q, k, v, o}(_bias)                       FocusLLM candidate projections
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from focus_jax.config import ModelConfig


class CheckpointError(ValueError):
  """A checkpoint is missing, malformed or does not match its config."""


@dataclasses.dataclass(frozen=True)
class Spec:
  """One layer tensor: our key, HF module path, GGUF name, and whether HF stores it [out, in]."""
  key: str
  hf: str          # relative to model.layers.{i}.
  gguf: str        # relative to blk.{i}.
  matrix: bool     # True: a weight matrix (transposed between layouts)


# key -> (hf module, gguf name)
_PROJ = {"q": ("self_attn.q_proj", "attn_q"), "k": ("self_attn.k_proj", "attn_k"),
         "v": ("self_attn.v_proj", "attn_v"), "o": ("self_attn.o_proj", "attn_output"),
         "gate": ("mlp.gate_proj", "ffn_gate"), "up": ("mlp.up_proj", "ffn_up"),
         "down": ("mlp.down_proj", "ffn_down")}
_NORM = {"attn_norm": ("input_layernorm", "attn_norm"),
         "mlp_norm": ("post_attention_layernorm", "ffn_norm")}
ATTN_PROJS = ("q", "k", "v", "o")
MLP_PROJS = ("gate", "up", "down")

TOP_HF = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
          "lm_head": "lm_head.weight"}
TOP_GGUF = {"embed": "token_embd.weight", "final_norm": "output_norm.weight",
            "lm_head": "output.weight"}


def proj_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
  """(in, out) of every projection, in our [in, out] layout."""
  d, i = cfg.hidden_size, cfg.intermediate_size
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d),
          "gate": (d, i), "up": (d, i), "down": (i, d)}


def layer_specs(cfg: ModelConfig) -> list[Spec]:
  """Every per-layer tensor the config calls for."""
  specs = [Spec(k, f"{m}.weight", f"{g}.weight", False) for k, (m, g) in _NORM.items()]
  for key, (m, g) in _PROJ.items():
    specs.append(Spec(key, f"{m}.weight", f"{g}.weight", True))
    if (key in ATTN_PROJS and cfg.attention_bias) or (key in MLP_PROJS and cfg.mlp_bias):
      specs.append(Spec(f"{key}_bias", f"{m}.bias", f"{g}.bias", False))
  return specs


def candidate_hf_name(layer: int, key: str) -> str:
  """HF name of a candidate tensor: key is q|k|v|o or q_bias|..."""
  proj, _, bias = key.partition("_")
  return f"model.layers.{layer}.self_attn.candidate_{proj}_proj.{'bias' if bias else 'weight'}"


def layer_shape(cfg: ModelConfig, key: str) -> tuple[int, ...]:
  """Shape of one layer's tensor `key` in our layout (no layer axis)."""
  if key in _NORM:
    return (cfg.hidden_size,)
  proj, _, bias = key.partition("_")
  shape = proj_shapes(cfg)[proj]
  return (shape[1],) if bias else shape


def top_shape(cfg: ModelConfig, key: str) -> tuple[int, ...]:
  v, d = cfg.vocab_size, cfg.hidden_size
  return {"embed": (v, d), "final_norm": (d,), "lm_head": (d, v)}[key]


def top_keys(cfg: ModelConfig) -> list[str]:
  return ["embed", "final_norm"] + ([] if cfg.tie_word_embeddings else ["lm_head"])


def hf_shape(shape: tuple[int, ...], matrix: bool) -> tuple[int, ...]:
  """Our shape -> the shape HF stores ([out, in] for matrices)."""
  return tuple(reversed(shape)) if matrix else tuple(shape)


def check_shape(name: str, got, expected) -> None:
  if tuple(got) != tuple(expected):
    raise CheckpointError(f"tensor {name}: shape mismatch, expected {tuple(expected)} "
                          f"but the checkpoint has {tuple(got)}")


def assemble(cfg: ModelConfig, dtype, get: Callable[[str, str, bool], np.ndarray],
             log: Callable[[str], None] = lambda msg: None) -> dict:
  """Builds the params pytree one tensor at a time.

  `get(group, key_or_name, matrix)` returns one tensor in HF layout: group is
  "top" (key in TOP_HF) or an int layer index (a Spec). Stacked arrays are
  allocated once and filled in place, so peak memory is the params plus one
  tensor.
  """
  params: dict = {}
  for key in top_keys(cfg):
    matrix = key == "lm_head"
    x = get("top", key, matrix)
    params[key] = _to_ours(x, matrix, dtype)
  log(f"loaded {', '.join(top_keys(cfg))}")
  specs = layer_specs(cfg)
  layers = {s.key: np.empty((cfg.num_layers, *layer_shape(cfg, s.key)), dtype) for s in specs}
  for i in range(cfg.num_layers):
    for s in specs:
      layers[s.key][i] = _to_ours(get(i, s, s.matrix), s.matrix, dtype)
    log(f"loaded layer {i + 1}/{cfg.num_layers} ({len(specs)} tensors)")
  params["layers"] = layers
  return params


def _to_ours(x: np.ndarray, matrix: bool, dtype) -> np.ndarray:
  x = x.T if matrix else x
  return np.ascontiguousarray(x.astype(dtype, copy=False))


def iter_hf_tensors(params: dict, cfg: ModelConfig) -> Iterator[tuple[str, Callable[[], np.ndarray], tuple, np.dtype]]:
  """(HF name, thunk giving the HF-layout tensor, HF shape, dtype) for every tensor in params."""
  def top(key):
    arr = np.asarray(params[key])
    matrix = key == "lm_head"
    return (TOP_HF[key], lambda: _to_hf(arr, matrix), hf_shape(arr.shape, matrix), arr.dtype)

  yield top("embed")
  layers = params["layers"]
  specs = layer_specs(cfg)
  missing = [s.key for s in specs if s.key not in layers]
  if missing:
    raise CheckpointError(f"params['layers'] lacks {missing} required by the config")
  arrays = {s.key: np.asarray(layers[s.key]) for s in specs}
  for i in range(cfg.num_layers):
    for s in specs:
      a = arrays[s.key]
      yield (f"model.layers.{i}.{s.hf}", (lambda a=a, i=i, m=s.matrix: _to_hf(a[i], m)),
             hf_shape(a.shape[1:], s.matrix), a.dtype)
  yield top("final_norm")
  if "lm_head" in params:
    yield top("lm_head")


def iter_candidate_tensors(params: dict, cfg: ModelConfig):
  """Like iter_hf_tensors for params['candidate'] (HF candidate names)."""
  cand = params.get("candidate") or {}
  arrays = {k: np.asarray(v) for k, v in sorted(cand.items())}
  for i in range(cfg.num_layers):
    for key, a in arrays.items():
      matrix = not key.endswith("_bias")
      yield (candidate_hf_name(i, key), (lambda a=a, i=i, m=matrix: _to_hf(a[i], m)),
             hf_shape(a.shape[1:], matrix), a.dtype)


def _to_hf(x: np.ndarray, matrix: bool) -> np.ndarray:
  return np.ascontiguousarray(x.T if matrix else x)


def validate_params(params: dict, cfg: ModelConfig) -> None:
  """Checks that params hold every tensor the config calls for, with the right shapes."""
  for key in top_keys(cfg):
    if key not in params:
      raise CheckpointError(f"params lack {key!r} required by the config")
    check_shape(key, np.shape(params[key]), top_shape(cfg, key))
  if "lm_head" in params:
    check_shape("lm_head", np.shape(params["lm_head"]), top_shape(cfg, "lm_head"))
  layers = params.get("layers") or {}
  for s in layer_specs(cfg):
    if s.key not in layers:
      raise CheckpointError(f"params lack layers/{s.key} required by the config")
    check_shape(f"layers/{s.key}", np.shape(layers[s.key]),
                (cfg.num_layers, *layer_shape(cfg, s.key)))
  for key, value in (params.get("candidate") or {}).items():
    proj = key.partition("_")[0]
    if proj not in ATTN_PROJS:
      raise CheckpointError(f"unknown candidate tensor {key!r}; expected q|k|v|o(_bias)")
    check_shape(f"candidate/{key}", np.shape(value), (cfg.num_layers, *layer_shape(cfg, key)))
