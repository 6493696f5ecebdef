r"""Exports a focus_jax checkpoint to an HF folder that transformers loads as is.

  python -m launch.export_hf --checkpoint=DIR --out=HF_DIR [--overwrite] [--layout=official]

Writes config.json, model.safetensors, the tokenizer files, and with FocusLLM
candidate projections focus_candidate.safetensors + focus_config.json; with
--layout=official the official FocusLLM layout instead (beacon_*_proj tensors in
model.safetensors, beacon_param / local_window / memory_stride in config.json).
HF_DIR appears only once complete; an existing one is kept unless --overwrite,
which replaces only a folder this tool wrote (marker file .focus_jax_export), and
never one that is DIR or holds it; a symbolic link HF_DIR is followed.
"""
from __future__ import annotations

import logging
import time

from absl import flags

from launch.cli_errors import fail_cleanly, run_cli, start

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "focus_jax checkpoint folder (launch.convert output).")
flags.DEFINE_string("out", None, "Output HF folder.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --out folder.")
flags.DEFINE_enum("layout", "focus_jax", ["focus_jax", "official"],
                  "How candidate projections are stored: focus_candidate.safetensors "
                  "(focus_jax) or the official FocusLLM beacon_*_proj tensors (official).")
flags.mark_flags_as_required(["checkpoint", "out"])

log = logging.getLogger("focus_jax.launch.export_hf")


def export(checkpoint: str, out: str, overwrite: bool, layout: str = "focus_jax"):
  from focus_jax.checkpoint.atomic import EXPORT, check_target
  from focus_jax.checkpoint.hf import export_hf
  from focus_jax.checkpoint.orbax import load_checkpoint
  check_target(out, overwrite, EXPORT, sources=[checkpoint])
  t0 = time.time()
  model, extras = load_checkpoint(checkpoint, as_numpy=True)
  log.info("load: %s in %.1f s (%d layers)", checkpoint, time.time() - t0,
           model.config.num_layers)
  if extras["tokenizer_dir"] is None:
    log.warning("%s has no tokenizer: %s gets none, so transformers cannot tokenise text "
                "with it (copy tokenizer files into it or convert with a tokenizer)",
                checkpoint, out)
  t1 = time.time()
  export_hf(model, extras["hf_config"], out, tokenizer_src_dir=extras["tokenizer_dir"],
            focus_config=extras["focus_config"], overwrite=overwrite, layout_name=layout)
  log.info("save: %s in %.1f s", out, time.time() - t1)


def main(argv):
  start("export_hf", argv)
  fail_cleanly("export_hf", export, FLAGS.checkpoint, FLAGS.out, FLAGS.overwrite, FLAGS.layout)


if __name__ == "__main__":
  run_cli("export_hf", main)
