"""focus_jax checkpoints: an Orbax (tensorstore) params pytree plus JSON side files.

  DIR/params/             Orbax PyTree checkpoint of the params
  DIR/model_config.json   ModelConfig.to_dict()
  DIR/hf_config.json      the source HF config (for export back to HF)
  DIR/tokenizer/          tokenizer files (may be absent)
  DIR/focus_config.json   FocusConfig.to_dict() (may be absent)

Saving is atomic: everything is written into a sibling temporary folder that is
renamed to DIR once complete.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import jax
import numpy as np

from focus_jax.checkpoint import layout
from focus_jax.checkpoint.atomic import atomic_dir, check_target
from focus_jax.checkpoint.layout import CheckpointError
from focus_jax.config import FocusConfig, ModelConfig, dtype_of

log = logging.getLogger(__name__)

PARAMS_DIR = "params"
MODEL_CONFIG = "model_config.json"
HF_CONFIG = "hf_config.json"
FOCUS_CONFIG = "focus_config.json"
TOKENIZER_DIR = "tokenizer"


@contextlib.contextmanager
def _checkpointer():
  """A StandardCheckpointer, with Orbax's per-step INFO logs (via absl) held at WARNING."""
  import orbax.checkpoint as ocp
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  if absl_logger.getEffectiveLevel() > logging.DEBUG:
    absl_logger.setLevel(logging.WARNING)
  try:
    with ocp.StandardCheckpointer() as ckpt:
      yield ckpt
  finally:
    absl_logger.setLevel(level)


def save_checkpoint(directory, params: dict, model_config: ModelConfig, hf_config: dict | None = None,
                    tokenizer_src=None, focus_config: FocusConfig | dict | None = None,
                    overwrite: bool = False) -> Path:
  """Writes a checkpoint to `directory` atomically.

  tokenizer_src: an HF folder whose tokenizer files are copied, or a .gguf file
  (the tokenizer is rebuilt from its metadata). Refuses an existing directory
  unless overwrite=True; the old one is then replaced only after the new one
  is complete.
  """
  layout.validate_params(params, model_config)
  check_target(directory, overwrite)
  with atomic_dir(directory, overwrite) as tmp:
    with _checkpointer() as ckpt:
      ckpt.save(tmp / PARAMS_DIR, params)
      ckpt.wait_until_finished()
    log.info("wrote params (%d arrays)", len(jax.tree.leaves(params)))
    (tmp / MODEL_CONFIG).write_text(model_config.to_json() + "\n")
    if hf_config is not None:
      (tmp / HF_CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
    if focus_config is not None:
      fc = focus_config.to_dict() if isinstance(focus_config, FocusConfig) else dict(focus_config)
      FocusConfig.from_dict(fc)  # validate before writing
      (tmp / FOCUS_CONFIG).write_text(json.dumps(fc, indent=2) + "\n")
    if tokenizer_src is not None:
      from focus_jax.checkpoint.tokenizer import copy_tokenizer
      files = copy_tokenizer(tokenizer_src, tmp / TOKENIZER_DIR)
      log.info("tokenizer: %s", ", ".join(files) or "no files found")
  log.info("saved checkpoint %s", directory)
  return Path(directory)


def load_checkpoint(directory, dtype: str | None = None, sharding=None,
                    as_numpy: bool = False) -> tuple[ModelConfig, dict, dict]:
  """Reads a checkpoint written by save_checkpoint.

  dtype: cast the params on restore (and set ModelConfig.param_dtype).
  sharding: a jax.sharding.Sharding for every array (default: the first device).
  as_numpy: return numpy arrays instead of jax arrays.
  Returns (ModelConfig, params, extras) with extras = {"hf_config": dict | None,
  "focus_config": FocusConfig | None, "tokenizer_dir": str | None}.
  """
  directory = Path(directory).absolute()  # Orbax resolves metadata by absolute path
  cfg, _ = read_checkpoint_info(directory)
  if dtype is not None:
    dtype_of(dtype)
    cfg = cfg.replace(param_dtype=dtype)
  with _checkpointer() as ckpt:
    tree = ckpt.metadata(directory / PARAMS_DIR).item_metadata.tree
    target = _target(tree, dtype, sharding, as_numpy)
    params = ckpt.restore(directory / PARAMS_DIR, target)
  params = _plain(params)
  if as_numpy and dtype is not None:
    params = jax.tree.map(lambda x: x.astype(dtype_of(dtype), copy=False), params)
  layout.validate_params(params, cfg)
  extras = {"hf_config": _read_json(directory / HF_CONFIG),
            "focus_config": None, "tokenizer_dir": None}
  fc = _read_json(directory / FOCUS_CONFIG)
  if fc is not None:
    extras["focus_config"] = FocusConfig.from_dict(fc)
  tok = directory / TOKENIZER_DIR
  if tok.is_dir() and any(tok.iterdir()):
    extras["tokenizer_dir"] = str(tok)
  return cfg, params, extras


def read_checkpoint_info(directory) -> tuple[ModelConfig, str | None]:
  """(ModelConfig, tokenizer folder or None) of a checkpoint, without reading the params."""
  directory = Path(directory).absolute()
  if not (directory / MODEL_CONFIG).is_file() or not (directory / PARAMS_DIR).is_dir():
    raise CheckpointError(f"{directory} is not a focus_jax checkpoint (no {MODEL_CONFIG} "
                          f"and {PARAMS_DIR}/); create one with launch.convert")
  try:
    cfg = ModelConfig.from_dict(json.loads((directory / MODEL_CONFIG).read_text()))
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise CheckpointError(f"{directory / MODEL_CONFIG} is broken ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
  tok = directory / TOKENIZER_DIR
  return cfg, (str(tok) if tok.is_dir() and any(tok.iterdir()) else None)


def _target(tree, dtype, sharding, as_numpy):
  """Restore target: None (numpy arrays as stored) or jax.ShapeDtypeStructs cast to dtype."""
  if as_numpy:
    return None
  sh = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def leaf(meta):
    dt = np.dtype(dtype_of(dtype)) if dtype is not None else np.dtype(meta.dtype)
    return jax.ShapeDtypeStruct(tuple(meta.shape), dt, sharding=sh)
  return jax.tree.map(leaf, _plain(tree), is_leaf=lambda x: hasattr(x, "shape"))


def _plain(tree):
  """Orbax may return dict subclasses; the params contract is plain dicts."""
  if isinstance(tree, dict):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def _read_json(path: Path):
  return json.loads(path.read_text()) if path.is_file() else None
