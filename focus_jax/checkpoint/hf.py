"""Hugging Face LLaMA checkpoints (safetensors folders, GGUF files) <-> NNX model.

  model, hf_config = load_hf("path/to/hf_dir")              # or "model.gguf"
  export_hf(model, hf_config, "out/hf_dir", tokenizer_src_dir="path/to/hf_dir")

Tensors are read and written one at a time. FocusLLM candidate projections
travel in an extra file, focus_candidate.safetensors (HF names
model.layers.{i}.self_attn.candidate_{q,k,v,o}_proj.{weight,bias}), next to
focus_config.json; transformers ignores both. The official FocusLLM layout
(beacon_*_proj tensors in the weight files, settings in config.json) is read
as well and written with layout="official" (official.py).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from focus_jax.checkpoint import layout
from focus_jax.checkpoint import official as official_layout
from focus_jax.checkpoint.atomic import EXPORT, atomic_dir
from focus_jax.checkpoint.layout import CheckpointError
from focus_jax.checkpoint.safetensors_io import SafetensorsReader, write_safetensors
from focus_jax.config import DTYPES, FocusConfig, ModelConfig, RopeConfig

log = logging.getLogger(__name__)

CANDIDATE_FILE = "focus_candidate.safetensors"
LAYOUTS = ("focus_jax", "official")  # how an HF export holds the candidate projections
FOCUS_CONFIG_FILE = "focus_config.json"
# Keys of a source config.json that describe the source file, not the model.
_DROP_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path", "auto_map",
              "_commit_hash", "torch_dtype", "dtype")
_ROPE_KEYS = ("rope_parameters", "rope_scaling", "rope_theta")


def load_hf(path, dtype: str = "float32") -> tuple:
  """Reads an HF LLaMA folder (config.json + safetensors) or a llama.cpp .gguf file.

  Returns (LlamaForCausalLM holding numpy arrays in `dtype`, the HF config dict).
  Candidate projections come from focus_candidate.safetensors when present, else
  from the official layout's beacon_*_proj tensors.
  """
  path = Path(path)
  if path.is_file() and path.suffix == ".gguf":
    return _load_gguf(path, dtype)
  if not path.exists():
    raise CheckpointError(f"{path} not found")
  if not path.is_dir():
    raise CheckpointError(f"{path} is neither an HF checkpoint folder nor a .gguf file")
  if not (path / "config.json").is_file():
    raise CheckpointError(f"{path} has no config.json (expected an HF checkpoint folder)")
  hf_cfg = _read_config(path)
  cfg = _model_config(hf_cfg, dtype, path / "config.json")
  files = _weight_files(path)
  cand_file = path / CANDIDATE_FILE
  if cand_file.is_file():
    files = files + [cand_file]
  with SafetensorsReader(files) as r:
    prefix, projs = _candidates(r, cfg, hf_cfg, path, cand_file)
    get = lambda t, i: r.get(t.hf(i, prefix), t.hf_shape())
    model = layout.assemble(cfg, cfg.pdtype, get, projs, log.info)
    _warn_unused(r.names, model, prefix)
  if projs:
    log.info("loaded candidate projections %s%s", list(projs),
             " (official beacon_*_proj tensors)" if prefix == official_layout.BEACON else "")
  return model, hf_cfg


def _candidates(r, cfg: ModelConfig, hf_cfg: dict, path: Path, cand_file: Path):
  """(HF name prefix, projections) of the candidates: focus_jax's file, official tensors or none."""
  beacons = official_layout.beacon_names(r.names)
  if cand_file.is_file():
    if beacons:
      raise CheckpointError(f"{path} holds both {CANDIDATE_FILE} and official beacon tensors "
                            f"(e.g. {beacons[0]}); keep one of them")
    projs = layout.candidate_projs_of(r.names)
    if not projs:
      raise CheckpointError(f"{cand_file} holds no candidate_{{q,k,v,o}}_proj tensors")
    return layout.CANDIDATE, projs
  return official_layout.BEACON, official_layout.beacon_projs(r, cfg, hf_cfg, path)


def read_focus_config(path) -> FocusConfig | None:
  """The FocusConfig stored beside an HF checkpoint (focus_config.json), or that of an
  official-layout folder (from config.json, when it holds beacon tensors); else None."""
  path = Path(path)
  f = path / FOCUS_CONFIG_FILE
  if (path.is_dir() and not f.is_file() and not (path / CANDIDATE_FILE).is_file()
      and (path / "config.json").is_file()):
    hf_cfg = _read_config(path)
    with SafetensorsReader(_weight_files(path)) as r:
      projs = official_layout.beacon_projs(r, _model_config(hf_cfg, "float32", path / "config.json"),
                                           hf_cfg, path)
    return official_layout.focus_config(hf_cfg, projs, path / "config.json") if projs else None
  if not path.is_dir() or not f.is_file():
    return None
  try:
    return FocusConfig.from_dict(json.loads(f.read_text()))
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{f}: invalid FocusLLM config ({e})") from None


def _read_config(path: Path) -> dict:
  """config.json of an HF folder as a dict (one CheckpointError naming the file otherwise)."""
  f = path / "config.json"
  try:
    return json.loads(f.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{f} is not valid JSON ({e})") from None


def _model_config(hf_cfg: dict, dtype: str, src) -> ModelConfig:
  try:
    return ModelConfig.from_hf(hf_cfg, param_dtype=dtype)
  except KeyError as e:
    raise CheckpointError(f"{src}: config lacks the key {e}") from None
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{src}: {e}") from None


def _weight_files(path: Path) -> list[Path]:
  index = path / "model.safetensors.index.json"
  if index.is_file():
    try:
      shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError, TypeError) as e:
      raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
    for s in shards:
      if not isinstance(s, str) or not _inside(path, s):
        raise CheckpointError(f"{index}: shard {s!r} is not a file name inside {path}; "
                              "an index may only name shards in its own folder")
    missing = [s for s in shards if not (path / s).is_file()]
    if missing:
      raise CheckpointError(f"{path}: shards {missing} listed in {index.name} are missing")
    return [path / s for s in shards]
  if (path / "model.safetensors").is_file():
    return [path / "model.safetensors"]
  files = sorted(p for p in path.glob("*.safetensors") if p.name != CANDIDATE_FILE)
  if files:
    return files
  if list(path.glob("pytorch_model*.bin")) or list(path.glob("*.pt")):
    raise CheckpointError(f"{path} holds PyTorch .bin weights only; re-save it with "
                          "save_pretrained(..., safe_serialization=True)")
  raise CheckpointError(f"{path} holds no *.safetensors weights")


def _inside(folder: Path, name: str) -> bool:
  """Whether the shard `name` of an index is a plain relative name that resolves (links
  followed) inside `folder`."""
  p = Path(name)
  if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
    return False
  root = folder.resolve()
  return (folder / p).resolve().is_relative_to(root)


def _warn_unused(names, model, prefix: str = layout.CANDIDATE) -> None:
  used = {n for n, *_ in layout.iter_hf_tensors(model)} | {
      n for n, *_ in layout.iter_hf_tensors(model, candidates=True, candidate_prefix=prefix)}
  if official_layout.BEACON_EMBED in names:
    log.warning("ignored %s (an Activation Beacon leftover that FocusLLM does not read)",
             official_layout.BEACON_EMBED)
    used.add(official_layout.BEACON_EMBED)
  unused = sorted(set(names) - used - {"lm_head.weight"} - {n for n in names if "rotary_emb" in n})
  if unused:
    log.warning("ignored %d tensors not used by the config, e.g. %s", len(unused), unused[:3])


def _load_gguf(path: Path, dtype: str):
  from focus_jax.checkpoint import gguf
  reader = gguf.open_gguf(path)
  hf_cfg = gguf.hf_config(reader)
  cfg = _model_config(hf_cfg, dtype, path)
  tensors = gguf.GGUFTensors(reader, cfg.num_heads, cfg.num_kv_heads)
  model = layout.assemble(cfg, cfg.pdtype, lambda t, i: tensors.get(t.gguf(i), t.hf_shape()),
                          log=log.info)
  return model, hf_cfg


def rope_to_hf(rope: RopeConfig) -> dict:
  """HF config keys (rope_theta + rope_scaling) for a RopeConfig."""
  if rope.rope_type == "default":
    return {"rope_theta": rope.theta, "rope_scaling": None}
  scaling = {"rope_type": rope.rope_type, "factor": rope.factor}
  if rope.rope_type == "llama3":
    scaling.update(low_freq_factor=rope.low_freq_factor, high_freq_factor=rope.high_freq_factor,
                   original_max_position_embeddings=rope.original_max_position_embeddings)
  return {"rope_theta": rope.theta, "rope_scaling": scaling}


def export_config(base: dict | None, cfg: ModelConfig, tied: bool, dtype: str) -> dict:
  """A LlamaConfig-compatible config.json dict: `base` updated from the ModelConfig."""
  d = {k: v for k, v in (base or {}).items() if k not in _DROP_KEYS}
  eos = list(cfg.eos_token_ids)
  d.update(
      model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
      max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=tied,
      attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias,
      bos_token_id=cfg.bos_token_id, pad_token_id=cfg.pad_token_id,
      eos_token_id=(eos[0] if len(eos) == 1 else (eos or None)),
      torch_dtype=dtype, dtype=dtype)
  if not any(k in d for k in _ROPE_KEYS) or RopeConfig.from_hf(d) != cfg.rope:
    for k in _ROPE_KEYS:
      d.pop(k, None)
    d.update(rope_to_hf(cfg.rope))
  return d


def export_hf(model, hf_config_dict: dict | None, out_dir, tokenizer_src_dir=None,
              focus_config: FocusConfig | dict | None = None, overwrite: bool = False,
              layout_name: str = "focus_jax") -> Path:
  """Writes an HF folder that `AutoModelForCausalLM.from_pretrained` loads as is.

  config.json, model.safetensors (HF names, [out, in] weights, the params'
  dtype), tokenizer files copied from tokenizer_src_dir (a folder or .gguf),
  and with candidate projections: focus_candidate.safetensors + focus_config.json
  (layout_name "focus_jax"), or (layout_name "official") the official FocusLLM
  layout: beacon_*_proj tensors and model.beacon_embed_tokens.weight (the EOS
  embedding) in model.safetensors, the FocusLLM settings in config.json.
  The folder appears only once complete; an existing one needs overwrite=True.
  """
  if layout_name not in LAYOUTS:
    raise CheckpointError(f"unknown layout {layout_name!r}; expected one of {list(LAYOUTS)}")
  official = layout_name == "official"
  cfg = model.config
  tied = model.lm_head is None
  if tied and not cfg.tie_word_embeddings:
    raise CheckpointError("the model has no lm_head but the config does not tie word embeddings")
  if not tied and cfg.tie_word_embeddings:
    log.warning("the model holds lm_head: exporting untied embeddings")
    cfg = cfg.replace(tie_word_embeddings=False)
  layout.validate(model)
  emb_dtype = np.asarray(model.model.embed_tokens.embedding[...]).dtype
  dtype_name = {np.dtype(v): k for k, v in DTYPES.items()}.get(emb_dtype)
  if dtype_name is None:
    raise CheckpointError(f"cannot export params of dtype {emb_dtype}")
  projs = model.candidate_projs
  hf = export_config({k: v for k, v in (hf_config_dict or {}).items()
                      if k not in official_layout.CONFIG_KEYS}, cfg, tied, dtype_name)
  tensors = layout.iter_hf_tensors(model)
  if official:
    if isinstance(focus_config, dict):
      focus_config = FocusConfig.from_dict(focus_config)
    focus_config = dataclasses.replace(focus_config or FocusConfig(), candidate_projs=projs) \
        if projs else None
    tensors = list(official_layout.iter_tensors(model))  # checks before anything is written
    hf = official_layout.export_config(hf, focus_config)
  with atomic_dir(out_dir, overwrite, owner=EXPORT) as tmp:
    (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    write_safetensors(tmp / "model.safetensors", tensors, log=log.info)
    if projs and not official:
      write_safetensors(tmp / CANDIDATE_FILE, layout.iter_hf_tensors(model, candidates=True),
                        log=log.info)
      if focus_config is None:
        focus_config = FocusConfig(candidate_projs=projs)
    if focus_config is not None and not official:
      fc = focus_config.to_dict() if isinstance(focus_config, FocusConfig) else dict(focus_config)
      (tmp / FOCUS_CONFIG_FILE).write_text(json.dumps(fc, indent=2) + "\n")
    if tokenizer_src_dir is not None:
      from focus_jax.checkpoint.tokenizer import copy_tokenizer
      copy_tokenizer(tokenizer_src_dir, tmp)
  log.info("exported %s", out_dir)
  return Path(out_dir)
