"""Frozen, validated configuration dataclasses.

`ModelConfig` is the model's architecture as Hugging Face's LlamaConfig defines
it (read with `ModelConfig.from_hf`); the other configs describe the
long-context modes built on top of it.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax.numpy as jnp

_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
  if name not in _DTYPES:
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
  return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  rope_type: str = "default"
  theta: float = 10000.0
  factor: float = 1.0
  # llama3 only
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.rope_type not in _ROPE_TYPES:
      raise ValueError(f"unsupported RoPE type {self.rope_type!r}; supported: {_ROPE_TYPES}")
    if self.theta <= 0 or self.factor <= 0:
      raise ValueError("rope theta and factor must be positive")

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> "RopeConfig":
    """Reads `rope_parameters` (transformers >= 5) or `rope_scaling` + `rope_theta`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    if not params:
      params = dict(scaling)
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    kw = dict(rope_type=rope_type, theta=float(theta))
    if rope_type != "default":
      kw["factor"] = float(params.get("factor", 1.0))
    if rope_type == "llama3":
      kw.update(
          low_freq_factor=float(params["low_freq_factor"]),
          high_freq_factor=float(params["high_freq_factor"]),
          original_max_position_embeddings=int(params["original_max_position_embeddings"]))
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  max_position_embeddings: int = 2048
  rope: RopeConfig = RopeConfig()
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  bos_token_id: int | None = 1
  eos_token_ids: tuple[int, ...] = (2,)
  pad_token_id: int | None = None
  param_dtype: str = "float32"
  compute_dtype: str = "float32"

  def __post_init__(self):
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
              "num_kv_heads", "head_dim"):
      if getattr(self, f) <= 0:
        raise ValueError(f"ModelConfig.{f} must be positive, got {getattr(self, f)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of "
                       f"num_kv_heads ({self.num_kv_heads})")
    if self.head_dim % 2:
      raise ValueError("head_dim must be even for RoPE")
    dtype_of(self.param_dtype)
    dtype_of(self.compute_dtype)

  @property
  def q_per_kv(self) -> int:
    return self.num_heads // self.num_kv_heads

  @property
  def dtype(self):
    return dtype_of(self.compute_dtype)

  @property
  def pdtype(self):
    return dtype_of(self.param_dtype)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "ModelConfig":
    """Builds the config from an HF `config.json` dict (LlamaForCausalLM only)."""
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if model_type != "llama" and "LlamaForCausalLM" not in archs:
      raise ValueError(f"only LLaMA-family checkpoints are supported (model_type 'llama'); "
                       f"got model_type={model_type!r}, architectures={archs}")
    heads = int(hf["num_attention_heads"])
    eos = hf.get("eos_token_id", 2)
    eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    act = hf.get("hidden_act", "silu")
    if act != "silu":
      raise ValueError(f"unsupported hidden_act {act!r}; LLaMA uses 'silu'")
    kw = dict(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        rope=RopeConfig.from_hf(hf),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=tuple(int(e) for e in eos),
        pad_token_id=hf.get("pad_token_id"),
    )
    kw.update(overrides)
    return cls(**kw)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["eos_token_ids"] = list(self.eos_token_ids)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    d = dict(d)
    d["rope"] = RopeConfig(**d["rope"])
    d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)


@dataclasses.dataclass(frozen=True)
class SelfExtendConfig:
  """SelfExtend: neighbour window W with ordinary RoPE, group size G beyond it."""
  group_size: int
  neighbor_window: int

  def __post_init__(self):
    if self.group_size < 1:
      raise ValueError(f"group_size must be >= 1, got {self.group_size}")
    if self.neighbor_window < 1:
      raise ValueError(f"neighbor_window must be >= 1, got {self.neighbor_window}")

  def max_length(self, train_len: int) -> int:
    return (train_len - self.neighbor_window) * self.group_size + self.neighbor_window


CANDIDATE_PROJS = ("q", "k", "v", "o")


@dataclasses.dataclass(frozen=True)
class FocusConfig:
  """FocusLLM settings (names as in the official code in comments)."""
  chunk_size: int = 2048          # S, official memory_stride
  local_window: int = 3072        # Wl, official local_window
  fragment_len: int = 512         # official hard-codes 512
  min_focus_len: int = 4096       # T: shorter inputs run the plain model
  candidate_projs: tuple[str, ...] = CANDIDATE_PROJS

  def __post_init__(self):
    for f in ("chunk_size", "local_window", "fragment_len"):
      if getattr(self, f) < 1:
        raise ValueError(f"FocusConfig.{f} must be >= 1, got {getattr(self, f)}")
    bad = set(self.candidate_projs) - set(CANDIDATE_PROJS)
    if bad or not self.candidate_projs:
      raise ValueError(f"candidate_projs must be a non-empty subset of {CANDIDATE_PROJS}")

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["candidate_projs"] = list(self.candidate_projs)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "FocusConfig":
    d = dict(d)
    d["candidate_projs"] = tuple(d.get("candidate_projs", CANDIDATE_PROJS))
    return cls(**d)
