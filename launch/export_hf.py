r"""Exports a focus_jax checkpoint to an HF folder that transformers loads as is.

  python -m launch.export_hf --checkpoint=DIR --out=HF_DIR [--overwrite]

Writes config.json, model.safetensors, the tokenizer files, and with FocusLLM
candidate projections focus_candidate.safetensors + focus_config.json.
HF_DIR appears only once complete; an existing one is kept unless --overwrite,
which replaces only a folder this tool wrote (marker file .focus_jax_export).
"""
from __future__ import annotations

import logging
import sys
import time

from absl import flags

from launch.cli_errors import fail_cleanly, run_cli, setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "focus_jax checkpoint folder (launch.convert output).")
flags.DEFINE_string("out", None, "Output HF folder.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --out folder.")
flags.mark_flags_as_required(["checkpoint", "out"])

log = logging.getLogger("focus_jax.launch.export_hf")


def export(checkpoint: str, out: str, overwrite: bool):
  from focus_jax.checkpoint.atomic import EXPORT, check_target
  from focus_jax.checkpoint.hf import export_hf
  from focus_jax.checkpoint.orbax import load_checkpoint
  check_target(out, overwrite, EXPORT)
  t0 = time.time()
  cfg, params, extras = load_checkpoint(checkpoint, as_numpy=True)
  log.info("load: %s in %.1f s (%d layers)", checkpoint, time.time() - t0, cfg.num_layers)
  if extras["tokenizer_dir"] is None:
    log.warning("%s has no tokenizer: %s gets none, so transformers cannot tokenise text "
                "with it (copy tokenizer files into it or convert with a tokenizer)",
                checkpoint, out)
  t1 = time.time()
  export_hf(params, cfg, extras["hf_config"], out, tokenizer_src_dir=extras["tokenizer_dir"],
            focus_config=extras["focus_config"], overwrite=overwrite)
  log.info("save: %s in %.1f s", out, time.time() - t1)


def main(argv):
  if len(argv) > 1:
    print(f"export_hf: error: unexpected arguments: {argv[1:]}", file=sys.stderr)
    sys.exit(1)
  setup_logging()
  fail_cleanly("export_hf", export, FLAGS.checkpoint, FLAGS.out, FLAGS.overwrite)


if __name__ == "__main__":
  run_cli("export_hf", main)
