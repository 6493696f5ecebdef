r"""Converts an HF LLaMA checkpoint (folder or llama.cpp .gguf) to a focus_jax checkpoint.

  python -m launch.convert --hf_model=PATH --out=DIR [--overwrite] [--dtype=float32|bfloat16]

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

from absl import app, flags

from launch.cli_errors import fail_cleanly, setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_model", None, "HF checkpoint folder or .gguf file.")
flags.DEFINE_string("out", None, "Output checkpoint folder.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --out folder.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored parameter dtype.")
flags.mark_flags_as_required(["hf_model", "out"])

log = logging.getLogger("focus_jax.launch.convert")


def convert(hf_model: str, out: str, overwrite: bool, dtype: str):
  from focus_jax.checkpoint.atomic import check_target
  from focus_jax.checkpoint.hf import load_hf, read_focus_config
  from focus_jax.checkpoint.orbax import save_checkpoint
  check_target(out, overwrite)  # fail before the (slow) load
  t0 = time.time()
  log.info("reading %s", hf_model)
  model, hf_cfg = load_hf(hf_model, dtype=dtype)
  cfg = model.config
  log.info("model: %d layers, hidden %d, %d heads / %d KV heads, vocab %d%s",
           cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size,
           ", candidate projections" if model.has_candidates else "")
  save_checkpoint(out, model, hf_cfg, tokenizer_src=hf_model,
                  focus_config=read_focus_config(hf_model), overwrite=overwrite)
  log.info("wrote %s in %.1f s", out, time.time() - t0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_logging()
  fail_cleanly("convert", convert, FLAGS.hf_model, FLAGS.out, FLAGS.overwrite, FLAGS.dtype)


if __name__ == "__main__":
  app.run(main)
