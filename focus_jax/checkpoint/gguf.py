"""Reading llama.cpp GGUF files: the HF config dict and dequantised tensors.

Follows transformers' GGUF loader (modeling_gguf_pytorch_utils.py and
integrations/ggml.py): the same metadata -> config mapping, and the same
reverse permutation of q/k, which llama.cpp stores reordered for interleaved
RoPE while HF (and this project) use split-half RoPE.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from focus_jax.checkpoint.layout import CheckpointError, check_shape

# llama.cpp metadata key (under "llama.") -> HF config key, as in transformers.
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.dimension_count": "head_dim",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
              "unknown_token_id": "unk_token_id", "padding_token_id": "pad_token_id"}
_REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")


def open_gguf(path: Path):
  """A gguf.GGUFReader over path (memory-mapped), with clear errors."""
  from gguf import GGUFReader
  path = Path(path)
  if not path.is_file():
    raise CheckpointError(f"GGUF file {path} not found")
  try:
    return GGUFReader(str(path))
  except Exception as e:  # the reader raises ValueError/IndexError/struct errors on bad files
    raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); "
                          "is it truncated or corrupt?") from None


def _field(reader, key, default=None):
  """A metadata value as a Python scalar, string or list (default when absent)."""
  f = reader.fields.get(key)
  return default if f is None else f.contents()


def hf_config(reader) -> dict:
  """The LlamaConfig dict transformers would build from this file's metadata."""
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise CheckpointError(f"GGUF architecture {arch!r} is not supported; only 'llama' "
                          "(LlamaForCausalLM) files can be converted")
  names = {t.name for t in reader.tensors}
  cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu"}
  for key, hf_key in _CONFIG_KEYS.items():
    value = _field(reader, f"llama.{key}")
    if value is not None:
      cfg[hf_key] = value
  for key, hf_key in _TOKEN_IDS.items():
    value = _field(reader, f"tokenizer.ggml.{key}")
    if value is not None:
      cfg[hf_key] = value
  missing = [k for k in _REQUIRED if k not in cfg]
  if missing:
    raise CheckpointError(f"GGUF metadata lacks {missing}")
  if "vocab_size" not in cfg:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
      raise CheckpointError("GGUF metadata states no vocab_size and holds no tokenizer tokens")
    cfg["vocab_size"] = len(tokens.data)
  cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
  # llama.cpp writes the output projection only when it is not the embedding matrix
  cfg["tie_word_embeddings"] = "output.weight" not in names
  cfg["attention_bias"] = "blk.0.attn_q.bias" in names
  cfg["mlp_bias"] = "blk.0.ffn_gate.bias" in names
  scaling = _field(reader, "llama.rope.scaling.type")
  if scaling == "linear":
    cfg["rope_scaling"] = {"rope_type": "linear",
                           "factor": float(_field(reader, "llama.rope.scaling.factor"))}
  elif scaling not in (None, "none"):
    raise CheckpointError(f"GGUF RoPE scaling {scaling!r} is not supported (only linear)")
  if "rope_freqs.weight" in names:
    raise CheckpointError("GGUF file holds rope_freqs (llama3-style RoPE frequency factors), "
                          "which cannot be mapped to an HF config; convert the HF safetensors "
                          "checkpoint instead")
  return cfg


def reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation (interleaved -> split-half RoPE)."""
  dim = w.shape[0] // n_head // 2
  return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


class GGUFTensors:
  """HF-layout float32 tensors of a GGUF file by GGUF name, dequantised on demand."""

  def __init__(self, reader, num_heads: int, num_kv_heads: int):
    self._tensors = {t.name: t for t in reader.tensors}
    self._heads = {"attn_q": num_heads, "attn_k": num_kv_heads}

  def __contains__(self, name: str) -> bool:
    return name in self._tensors

  @property
  def names(self) -> list[str]:
    return list(self._tensors)

  def get(self, name: str, expected_shape) -> np.ndarray:
    from gguf.quants import dequantize
    t = self._tensors.get(name)
    if t is None:
      raise CheckpointError(f"missing tensor {name} in the GGUF file")
    shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists dims innermost first
    check_shape(name, shape, expected_shape)
    try:
      w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)
    except NotImplementedError as e:
      raise CheckpointError(f"tensor {name}: {e}") from None
    w = w.reshape(shape)
    parts = name.split(".")
    if len(parts) == 4 and parts[2] in self._heads:  # blk.N.attn_q.{weight,bias}
      w = reverse_permute(w, self._heads[parts[2]])
    return w
