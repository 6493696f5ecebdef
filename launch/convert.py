r"""Converts an HF LLaMA checkpoint (folder or llama.cpp .gguf) to a focus_jax checkpoint.

  python -m launch.convert --hf_model=PATH --out=DIR [--overwrite] [--dtype=float32|bfloat16]

--overwrite replaces only a focus_jax checkpoint (model_config.json + params/), and
never one that is PATH or holds it; a symbolic link DIR is followed (the folder it
points to is replaced, the link stays).
Every tensor must be finite (--allow_nonfinite to convert anyway).
PATH is an HF folder (config.json + *.safetensors, optionally
focus_candidate.safetensors + focus_config.json, or the official FocusLLM layout:
beacon_*_proj tensors in the weights, its settings in config.json) or a .gguf
file (dequantised).
The tokenizer is carried along. DIR appears only once complete: a failed run
leaves nothing behind, and an existing DIR is kept unless --overwrite.
"""
from __future__ import annotations

import logging
import time

from absl import flags

import numpy as np

from launch.cli_errors import fail_cleanly, run_cli, start

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_model", None, "HF checkpoint folder or .gguf file.")
flags.DEFINE_string("out", None, "Output checkpoint folder.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --out folder.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored parameter dtype.")
flags.DEFINE_boolean("allow_nonfinite", False, "Convert even when a tensor holds NaN or Inf.")
flags.mark_flags_as_required(["hf_model", "out"])

log = logging.getLogger("focus_jax.launch.convert")


def check_finite(model, where) -> None:
  """Raises ValueError naming the first tensor (by its HF name) holding NaN or Inf.

  Reads one layer's tensor at a time, as it would be written: bounded memory.
  """
  from focus_jax.checkpoint import layout
  for candidates in (False, True):
    for name, get, _, dtype in layout.iter_hf_tensors(model, candidates=candidates):
      if not np.issubdtype(np.dtype(dtype), np.floating) and np.dtype(dtype).kind != "V":
        continue
      bad = ~np.isfinite(np.asarray(get()).astype(np.float32))
      if bad.any():
        raise ValueError(f"{where}: tensor {name} holds {int(bad.sum())} non-finite values "
                         "(NaN/Inf); pass --allow_nonfinite to convert anyway")


def convert(hf_model: str, out: str, overwrite: bool, dtype: str, allow_nonfinite: bool = False):
  from focus_jax.checkpoint.atomic import check_target
  from focus_jax.checkpoint.hf import load_hf, read_focus_config
  from focus_jax.checkpoint.orbax import save_checkpoint
  check_target(out, overwrite, sources=[hf_model])  # fail before the (slow) load
  t0 = time.time()
  model, hf_cfg = load_hf(hf_model, dtype=dtype)
  cfg = model.config
  if allow_nonfinite:
    log.warning("--allow_nonfinite: tensors are not checked for NaN/Inf")
  else:
    check_finite(model, hf_model)
  log.info("load: %s in %.1f s (%d layers, hidden %d, %d heads / %d KV heads, vocab %d%s)",
           hf_model, time.time() - t0, cfg.num_layers, cfg.hidden_size, cfg.num_heads,
           cfg.num_kv_heads, cfg.vocab_size,
           ", candidate projections" if model.has_candidates else "")
  t1 = time.time()
  save_checkpoint(out, model, hf_cfg, tokenizer_src=hf_model,
                  focus_config=read_focus_config(hf_model), overwrite=overwrite)
  log.info("save: %s in %.1f s", out, time.time() - t1)


def main(argv):
  start("convert", argv)
  fail_cleanly("convert", convert, FLAGS.hf_model, FLAGS.out, FLAGS.overwrite, FLAGS.dtype,
               FLAGS.allow_nonfinite)


if __name__ == "__main__":
  run_cli("convert", main)
