"""The official FocusLLM checkpoint layout (github leezythu/FocusLLM), both ways.

The official code saves a trained model as an HF LLaMA folder whose weights
also hold, per layer i and projection p of its `beacon_param`,
`model.layers.{i}.self_attn.beacon_{p}_proj.weight` (+ `.bias` with attention
biases), same shapes and [out, in] orientation as `{p}_proj`; these are our
candidate projections. It also holds `model.beacon_embed_tokens.weight`
[1, hidden], an Activation Beacon leftover FocusLLM's forward never reads (its
loader fills it with the EOS embedding when missing): ignored on import,
written as the EOS row on export. Its config.json carries `beacon_param`,
`local_window` (Wl) and `memory_stride` (S, a list) among the LlamaConfig fields.
"""
from __future__ import annotations

import logging
import re
import numpy as np

from focus_jax.checkpoint import layout
from focus_jax.checkpoint.layout import CheckpointError, check_shape
from focus_jax.config import CANDIDATE_PROJS, FocusConfig, ModelConfig

log = logging.getLogger(__name__)

BEACON = "beacon_"
BEACON_EMBED = "model.beacon_embed_tokens.weight"
# config.json keys of the official LlamaConfig that hold the FocusLLM settings
CONFIG_KEYS = ("beacon_param", "local_window", "memory_stride")
_NAME = re.compile(r"model\.layers\.(\d+)\.self_attn\.beacon_(\w+?)_proj\.(weight|bias)")


def beacon_names(names) -> list[str]:
  """The official candidate tensors (beacon_*_proj of some layer) among tensor names."""
  return sorted(n for n in names if n.startswith("model.layers.") and ".self_attn.beacon_" in n)


def _config_projs(hf_cfg: dict, src) -> tuple[str, ...] | None:
  projs = hf_cfg.get("beacon_param")
  if projs is None:
    return None
  if (not isinstance(projs, (list, tuple)) or not projs
      or any(p not in CANDIDATE_PROJS for p in projs)):
    raise CheckpointError(f"{src}: beacon_param {projs!r} in config.json is not a non-empty "
                          f"subset of {list(CANDIDATE_PROJS)}")
  return tuple(p for p in CANDIDATE_PROJS if p in projs)


def beacon_projs(reader, cfg: ModelConfig, hf_cfg: dict, src) -> tuple[str, ...]:
  """The candidate projections held as official beacon_*_proj tensors; () when none.

  Checks the set is complete before anything is read: every layer holds every
  projection (config.json's beacon_param, else those present), with a bias
  exactly when the model has attention biases, in the shape of `{p}_proj`.
  """
  names = beacon_names(reader.names)
  if not names:
    return ()
  found = {}
  for n in names:
    m = _NAME.fullmatch(n)
    if m is None or m.group(2) not in CANDIDATE_PROJS:
      raise CheckpointError(f"tensor {n}: not an official beacon_{{q,k,v,o}}_proj tensor")
    layer = int(m.group(1))
    if layer >= cfg.num_layers:
      raise CheckpointError(f"tensor {n}: layer {layer} but the config has "
                            f"{cfg.num_layers} layers (num_hidden_layers)")
    found[n] = m.group(2)
  projs = _config_projs(hf_cfg, src) or tuple(p for p in CANDIDATE_PROJS if p in found.values())
  for n, p in found.items():
    if p not in projs:
      raise CheckpointError(f"tensor {n}: projection {p!r} is not in config.json's "
                            f"beacon_param {list(projs)}")
  specs = sorted((t for t in layout.tensors(cfg, projs) if t.candidate),  # weights first
                 key=lambda t: (CANDIDATE_PROJS.index(*layout.candidate_projs_of([t.path])),
                                not t.matrix))
  want = {t.hf(i, BEACON): t for i in range(cfg.num_layers) for t in specs}
  for n in found:
    if n not in want:  # a bias: every weight name of a listed projection and layer is wanted
      raise CheckpointError(f"tensor {n}: the config has no attention biases "
                            "(attention_bias is false)")
  for name, t in want.items():
    if name not in reader:
      why = " (the config sets attention_bias)" if name.endswith(".bias") else ""
      raise CheckpointError(f"missing tensor {name}{why}: the official beacon projections "
                            f"{list(projs)} must be in every layer")
    check_shape(name, reader.shape(name), t.hf_shape())
  return projs


def focus_config(hf_cfg: dict, projs, src) -> FocusConfig:
  """The FocusConfig of an official folder: beacon_param, local_window, memory_stride."""
  kw = {"candidate_projs": tuple(projs)}
  if "local_window" in hf_cfg:
    kw["local_window"] = hf_cfg["local_window"]
  stride = hf_cfg.get("memory_stride")
  if isinstance(stride, (list, tuple)):
    if not stride:
      raise CheckpointError(f"{src}: memory_stride in config.json is an empty list")
    if len(stride) > 1:
      log.warning("memory_stride %s in config.json holds several chunk sizes (the official "
               "trainer samples them); using the first, %s", list(stride), stride[0])
    stride = stride[0]
  if stride is not None:
    kw["chunk_size"] = stride
  missing = [k for k in ("local_window", "memory_stride") if k not in hf_cfg]
  if missing:
    log.warning("config.json lacks %s: focus_jax defaults used", missing)
  for k in ("local_window", "chunk_size"):
    if k in kw and (isinstance(kw[k], bool) or not isinstance(kw[k], int)):
      raise CheckpointError(f"{src}: {'memory_stride' if k == 'chunk_size' else k} in "
                            f"config.json must be an integer, got {kw[k]!r}")
  try:
    return FocusConfig(**kw)
  except ValueError as e:
    raise CheckpointError(f"{src}: config.json: {e}") from None


def export_config(hf: dict, focus: FocusConfig) -> dict:
  """config.json of the official layout: the LLaMA config + the FocusLLM fields."""
  default = FocusConfig()
  if (focus.fragment_len, focus.min_focus_len) != (default.fragment_len, default.min_focus_len):
    log.info("fragment_len %d and min_focus_len %d are not part of the official layout "
             "(the official code uses %d and %d)", focus.fragment_len, focus.min_focus_len,
             default.fragment_len, default.min_focus_len)
  if not focus.bos_sees_memory:
    log.warning("bos_sees_memory=false is not part of the official layout: the official code "
                "lets the local BOS attend to the memory, which these candidates were not "
                "trained for")
  return {**hf, "architectures": ["LlamaForCausalLM"], "beacon_param": list(focus.candidate_projs),
          "local_window": focus.local_window, "memory_stride": [focus.chunk_size]}


def iter_tensors(model):
  """(name, thunk, shape, dtype) of every tensor of the official layout's model.safetensors."""
  cfg = model.config
  if not model.has_candidates:
    raise CheckpointError("the model has no candidate projections: the official layout "
                          "holds them as beacon_*_proj tensors (use the focus_jax layout)")
  if not cfg.eos_token_ids:
    raise CheckpointError("the model config has no eos_token_id: the official layout "
                          "stores the EOS embedding as model.beacon_embed_tokens.weight")
  yield from layout.iter_hf_tensors(model)
  yield from layout.iter_hf_tensors(model, candidates=True, candidate_prefix=BEACON)
  table = model.model.embed_tokens.embedding
  eos = cfg.eos_token_ids[0]
  row = lambda: np.ascontiguousarray(np.asarray(table[...])[eos:eos + 1])
  yield BEACON_EMBED, row, (1, cfg.hidden_size), np.asarray(table[...]).dtype
