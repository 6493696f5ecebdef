"""focus_jax checkpoints: an Orbax (tensorstore) model state plus JSON side files.

  DIR/params/             Orbax PyTree checkpoint of nnx.state(model) as a pure dict
                          (module paths, e.g. model/layers/self_attn/q_proj/kernel)
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
import os
import re
from pathlib import Path
import sys
import warnings

import jax
import numpy as np
from flax import nnx

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


class _AbandonedRead(logging.Filter):
  """asyncio's "<Task|Future|_GatheringFuture> exception was never retrieved" for the reads of
  a failed restore.

  Which of them asyncio prints depends on whether the abandoned read was wrapped in a Task, a
  gather or left a bare Future, which depends on timing; all are dropped when the exception
  came from Orbax's reads (_from_orbax: its traceback or a cause's passes through orbax, or
  TensorStore's native code set it with no Python frame)."""

  _ABANDONED = re.compile(r"\w+ exception was never retrieved")

  def filter(self, record):
    if not self._ABANDONED.match(record.getMessage()):
      return True
    return not (record.exc_info and _from_orbax(record.exc_info[1]))


def _from_orbax(exc) -> bool:
  """Whether `exc`, or an exception it was raised from, has a frame in orbax's sources, or
  `exc` was raised with no Python frame (set on a Future by TensorStore's native code)."""
  if exc is not None and exc.__traceback__ is None and exc.__cause__ is None:
    return True
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    tb = exc.__traceback__
    while tb is not None:
      if _in_orbax(tb.tb_frame.f_code.co_filename):
        return True
      tb = tb.tb_next
    exc = exc.__cause__ or exc.__context__
  return False


def quiet_abandoned_reads() -> None:
  """After a failed Orbax restore (a damaged checkpoint or training step), its pending
  TensorStore reads complete into an event loop that Orbax has closed: each prints a
  RuntimeError traceback (sys.unraisablehook) or an asyncio error line, dozens in all,
  around the one error that matters; a read coroutine closed unfinished prints its own
  read error the same way, and one Orbax created but never started warns ("coroutine ...
  was never awaited") when collected. Drops exactly those, for the rest of the process
  (installed once); the same messages from any other code still print."""
  if getattr(sys.unraisablehook, "_focus_jax", False):
    return
  previous = sys.unraisablehook

  def hook(u):
    if isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value):
      return
    code = getattr(u.object, "cr_code", None)   # an abandoned coroutine of Orbax's reads
    if code is not None and _in_orbax(code.co_filename):
      return
    previous(u)
  hook._focus_jax = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_AbandonedRead())
  # The interpreter calls warnings._warn_unawaited_coroutine for every coroutine collected
  # unstarted; the warning's text names only the function, so the filter is on its code.
  warn_unawaited = getattr(warnings, "_warn_unawaited_coroutine", None)
  if warn_unawaited is not None:
    def quiet_unawaited(coro):
      code = getattr(coro, "cr_code", None)
      if code is not None and _in_orbax(code.co_filename):
        return
      warn_unawaited(coro)
    warnings._warn_unawaited_coroutine = quiet_unawaited


def _in_orbax(filename: str) -> bool:
  return f"{os.sep}orbax{os.sep}" in filename


@contextlib.contextmanager
def _checkpointer(quiet: bool = False):
  """A StandardCheckpointer, with Orbax's per-step INFO logs (via absl) held at WARNING
  (quiet: its warnings and errors too, for reads whose failures become one CheckpointError)."""
  import orbax.checkpoint as ocp
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  if absl_logger.getEffectiveLevel() > logging.DEBUG:
    absl_logger.setLevel(logging.CRITICAL if quiet else logging.WARNING)
  try:
    with ocp.StandardCheckpointer() as ckpt:
      yield ckpt
  finally:
    absl_logger.setLevel(level)


def save_checkpoint(directory, model, hf_config: dict | None = None, tokenizer_src=None,
                    focus_config: FocusConfig | dict | None = None,
                    overwrite: bool = False) -> Path:
  """Writes a checkpoint of `model` (a LlamaForCausalLM) to `directory` atomically.

  The params are the pure dict of `nnx.state(model)` (module paths). tokenizer_src:
  an HF folder whose tokenizer files are copied, or a .gguf file (the tokenizer
  is rebuilt from its metadata). Refuses an existing directory unless
  overwrite=True; the old one is then replaced only after the new one is complete.
  """
  layout.validate(model)
  check_target(directory, overwrite)
  pure = nnx.to_pure_dict(nnx.state(model))
  with atomic_dir(directory, overwrite) as tmp:
    with _checkpointer() as ckpt:
      ckpt.save(tmp / PARAMS_DIR, pure)
      ckpt.wait_until_finished()
    log.info("wrote params (%d arrays)", len(jax.tree.leaves(pure)))
    (tmp / MODEL_CONFIG).write_text(model.config.to_json() + "\n")
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
                    as_numpy: bool = False) -> tuple:
  """Reads a checkpoint written by save_checkpoint into a LlamaForCausalLM.

  The restore target is the abstract state of `nnx.eval_shape` (no random
  init). dtype: cast the params on restore (and set ModelConfig.param_dtype).
  sharding: a jax.sharding.Sharding for every array, or a function
  (module path, shape) -> Sharding (default: the first device).
  as_numpy: numpy arrays instead of jax arrays (export, conversion).
  A checkpoint of the flat layout written before the NNX modules is refused with
  one error naming the fix (re-run launch.convert); none ships or is supported.
  Returns (model, extras) with extras = {"hf_config": dict | None,
  "focus_config": FocusConfig | None, "tokenizer_dir": str | None}.
  """
  directory = Path(directory).absolute()  # Orbax resolves metadata by absolute path
  cfg, _ = read_checkpoint_info(directory)
  if dtype is not None:
    dtype_of(dtype)
    cfg = cfg.replace(param_dtype=dtype)
  quiet_abandoned_reads()   # a failed read's pending reads may outlive its one error
  with _checkpointer(quiet=True) as ckpt:
    try:
      meta = ckpt.metadata(directory / PARAMS_DIR).item_metadata
    except Exception as e:  # Orbax raises many types on damaged metadata
      raise _unreadable(directory, e) from None
    if meta is None:
      raise _unreadable(directory, "its metadata cannot be read")
    stored = _plain(meta.tree)
    if layout.is_legacy(stored):
      raise CheckpointError(f"{directory}: a checkpoint of the flat layout written before "
                            "the NNX modules; re-run launch.convert on its source weights")
    paths = list(layout.flat(stored))
    graphdef, abstract = layout.abstract_model(cfg, layout.candidate_projs_of(paths))
    want = layout.flat(nnx.to_pure_dict(abstract))
    if set(want) != set(paths):
      diff = sorted(set(want) ^ set(paths))
      raise CheckpointError(f"{directory}: stored tensors do not match the model config "
                            f"(e.g. {diff[:3]}); re-run launch.convert")
    target = None if as_numpy else layout.tree_map_paths(
        lambda p, m: jax.ShapeDtypeStruct(
            tuple(m.shape), np.dtype(dtype_of(dtype)) if dtype else np.dtype(m.dtype),
            sharding=_sharding(sharding, p, m)), stored)
    pure = _plain(_restore(ckpt, directory, target))
    if as_numpy:
      pure = layout.tree_map_paths(lambda p, x: _cast(np.asarray(x), dtype), pure)
  nnx.replace_by_pure_dict(abstract, pure)
  model = nnx.merge(graphdef, abstract)
  layout.validate(model)
  extras = {"hf_config": _read_json(directory / HF_CONFIG),
            "focus_config": None, "tokenizer_dir": None}
  if (directory / FOCUS_CONFIG).is_file():   # a file holding null is malformed, not absent
    fc = _read_json(directory / FOCUS_CONFIG)
    try:
      extras["focus_config"] = FocusConfig.from_dict(fc)
    except (ValueError, TypeError) as e:
      raise CheckpointError(f"{directory / FOCUS_CONFIG}: invalid FocusLLM config ({e})") from None
  tok = directory / TOKENIZER_DIR
  if tok.is_dir() and any(tok.iterdir()):
    extras["tokenizer_dir"] = str(tok)
  return model, extras


def _cast(x: np.ndarray, dtype):
  return x if dtype is None else x.astype(dtype_of(dtype), copy=False)


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


def _sharding(sharding, path: str, leaf):
  if sharding is None:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return sharding(path, tuple(leaf.shape)) if callable(sharding) else sharding


def _plain(tree):
  """Orbax may return dict subclasses; the params contract is plain dicts."""
  if isinstance(tree, dict):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def _read_json(path: Path):
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def _unreadable(directory: Path, e) -> CheckpointError:
  """The one error for params Orbax cannot read (damaged, truncated or foreign files)."""
  if isinstance(e, str):
    why = e
  else:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    why = type(e).__name__ + (f": {first[:120]}" if first else "")
  return CheckpointError(f"{directory / PARAMS_DIR}: the checkpoint's params are unreadable "
                         f"({why}); re-run launch.convert or restore the folder")


def _restore(ckpt, directory: Path, target=None):
  """ckpt.restore of the params, its errors (damaged or truncated files) as one CheckpointError."""
  try:
    return ckpt.restore(directory / PARAMS_DIR, target)
  except Exception as e:
    raise _unreadable(directory, e) from None
