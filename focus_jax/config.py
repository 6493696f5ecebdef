"""Frozen, validated configuration dataclasses.

`ModelConfig` is the model's architecture as Hugging Face's LlamaConfig defines
it (read with `ModelConfig.from_hf`); the other configs describe the
long-context modes built on top of it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, Mapping

import jax.numpy as jnp

_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# Parameters beyond this many bytes (1 PiB) cannot be any real model: a config that
# asks for them is refused before anything is allocated.
MAX_PARAM_BYTES = 2**50


def as_int(value, name: str) -> int:
  """An integer config value (an int, or a float with an integral value such as 2.0);
  refuses booleans, fractions, strings and None with the field's name."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if isinstance(value, numbers.Integral):
    return int(value)
  if not math.isfinite(value) or value != int(value):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  return int(value)


def _optional_int(value, name: str) -> int | None:
  return None if value is None else as_int(value, name)


def as_positive_float(value, name: str) -> float:
  """A finite number > 0 (booleans and strings refused), with the field's name."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be a number, got {value!r}")
  if not math.isfinite(value) or value <= 0:
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
  return float(value)


def dtype_of(name: str):
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
  return DTYPES[name]


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
    for f, hf_name in (("theta", "rope_theta"), ("factor", "rope factor"),
                       ("low_freq_factor", "low_freq_factor"),
                       ("high_freq_factor", "high_freq_factor")):
      as_positive_float(getattr(self, f), hf_name)
    as_int(self.original_max_position_embeddings, "original_max_position_embeddings")

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> "RopeConfig":
    """Reads `rope_parameters` (transformers >= 5) or `rope_scaling` + `rope_theta`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    if not params:
      params = dict(scaling)
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    kw = dict(rope_type=rope_type, theta=as_positive_float(theta, "rope_theta"))
    if rope_type != "default":
      kw["factor"] = as_positive_float(params.get("factor", 1.0), "rope factor")
    if rope_type == "llama3":
      kw.update(
          low_freq_factor=as_positive_float(params["low_freq_factor"], "low_freq_factor"),
          high_freq_factor=as_positive_float(params["high_freq_factor"], "high_freq_factor"),
          original_max_position_embeddings=as_int(params["original_max_position_embeddings"],
                                                  "original_max_position_embeddings"))
    return cls(**kw)


# ModelConfig fields under their HF config.json names (for messages).
_HF_NAMES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
             "num_kv_heads": "num_key_value_heads"}


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
              "num_kv_heads", "head_dim", "max_position_embeddings"):
      if as_int(getattr(self, f), _HF_NAMES.get(f, f)) <= 0:
        raise ValueError(f"{_HF_NAMES.get(f, f)} must be > 0, got {getattr(self, f)}")
    as_positive_float(self.rms_norm_eps, "rms_norm_eps")
    for f in ("bos_token_id", "pad_token_id"):
      v = getattr(self, f)
      if v is not None and not (f == "pad_token_id" and v == -1):   # -1: no pad token
        self._check_token(f, v)
    for v in self.eos_token_ids:
      self._check_token("eos_token_id", v)
    if self.param_count() * 4 > MAX_PARAM_BYTES:
      raise ValueError(f"the config describes {self.param_count():.3g} parameters "
                       f"({self.param_count() * 4 / 2**40:.3g} TiB in float32): no model is "
                       f"that large (num_hidden_layers={self.num_layers}, "
                       f"hidden_size={self.hidden_size}, vocab_size={self.vocab_size})")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of "
                       f"num_kv_heads ({self.num_kv_heads})")
    if self.head_dim % 2:
      raise ValueError("head_dim must be even for RoPE")
    dtype_of(self.param_dtype)
    dtype_of(self.compute_dtype)

  def _check_token(self, name: str, v) -> None:
    if not 0 <= as_int(v, name) < self.vocab_size:
      raise ValueError(f"{name} {v} lies outside the vocabulary [0, {self.vocab_size})")

  def param_count(self) -> int:
    """Parameters of the base model (biases aside), from the shapes alone."""
    h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
    layer = 2 * h + 2 * h * q + 2 * h * kv + 3 * h * self.intermediate_size
    embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
    return self.num_layers * layer + embed + h

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
    if not isinstance(hf, Mapping):
      raise ValueError(f"the config must be a JSON object of settings, got {type(hf).__name__}")
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if model_type != "llama" and "LlamaForCausalLM" not in archs:
      raise ValueError(f"only LLaMA-family checkpoints are supported (model_type 'llama'); "
                       f"got model_type={model_type!r}, architectures={archs}")
    heads = as_int(hf["num_attention_heads"], "num_attention_heads")
    if heads <= 0:
      raise ValueError(f"num_attention_heads must be > 0, got {heads}")
    eos = hf.get("eos_token_id", 2)
    eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    as_int(hf["hidden_size"], "hidden_size")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
      raise ValueError(f"unsupported hidden_act {act!r}; LLaMA uses 'silu'")
    if hf["hidden_size"] % heads and not hf.get("head_dim"):
      raise ValueError(f"hidden_size ({hf['hidden_size']}) must be a multiple of "
                       f"num_attention_heads ({heads}) when the config gives no head_dim")
    kw = dict(
        vocab_size=as_int(hf["vocab_size"], "vocab_size"),
        hidden_size=as_int(hf["hidden_size"], "hidden_size"),
        intermediate_size=as_int(hf["intermediate_size"], "intermediate_size"),
        num_layers=as_int(hf["num_hidden_layers"], "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=as_int(hf.get("num_key_value_heads") or heads, "num_key_value_heads"),
        head_dim=as_int(hf.get("head_dim") or hf["hidden_size"] // heads, "head_dim"),
        rms_norm_eps=as_positive_float(hf.get("rms_norm_eps", 1e-6), "rms_norm_eps"),
        max_position_embeddings=as_int(hf.get("max_position_embeddings", 2048),
                                       "max_position_embeddings"),
        rope=RopeConfig.from_hf(hf),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        bos_token_id=_optional_int(hf.get("bos_token_id"), "bos_token_id"),
        eos_token_ids=tuple(as_int(e, "eos_token_id") for e in eos),
        pad_token_id=_optional_int(hf.get("pad_token_id"), "pad_token_id"),
    )
    kw.update(overrides)
    return cls(**kw)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["eos_token_ids"] = list(self.eos_token_ids)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    if not isinstance(d, Mapping) or not isinstance(d.get("rope"), Mapping):
      raise ValueError("the model config must be a JSON object with a 'rope' object")
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
  # False (not the official layout): the local BOS, the attention sink, does not attend to
  # the memory (candidates trained with TrainConfig.bos_sees_memory=False need it).
  bos_sees_memory: bool = True

  def __post_init__(self):
    for f in ("chunk_size", "local_window", "fragment_len"):
      if as_int(getattr(self, f), f) < 1:
        raise ValueError(f"FocusConfig.{f} must be >= 1, got {getattr(self, f)}")
    if as_int(self.min_focus_len, "min_focus_len") < 0:
      raise ValueError(f"FocusConfig.min_focus_len must be >= 0, got {self.min_focus_len}")
    if not isinstance(self.bos_sees_memory, bool):
      raise ValueError(f"bos_sees_memory must be true or false, got {self.bos_sees_memory!r}")
    if isinstance(self.candidate_projs, str) or not all(
        isinstance(p, str) for p in self.candidate_projs):
      raise ValueError(f"candidate_projs must be a list of names from {CANDIDATE_PROJS}")
    bad = set(self.candidate_projs) - set(CANDIDATE_PROJS)
    if bad or not self.candidate_projs:
      raise ValueError(f"candidate_projs must be a non-empty subset of {CANDIDATE_PROJS}")

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["candidate_projs"] = list(self.candidate_projs)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "FocusConfig":
    if not isinstance(d, Mapping):
      raise ValueError(f"the FocusLLM config must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"unknown FocusLLM settings {unknown}")
    d = dict(d)
    projs = d.get("candidate_projs", CANDIDATE_PROJS)
    if isinstance(projs, str) or not isinstance(projs, (list, tuple)):
      raise ValueError(f"candidate_projs must be a list of names from {CANDIDATE_PROJS}, "
                       f"got {projs!r}")
    d["candidate_projs"] = tuple(projs)
    return cls(**d)
