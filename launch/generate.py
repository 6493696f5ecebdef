r"""Generates a continuation of a prompt from a focus_jax checkpoint.

  python -m launch.generate --checkpoint=DIR --prompt="The capital of France is" \
      --max_new_tokens=16 [--mode=plain|...] [--temperature=0.7 --top_p=0.9 --seed=0] \
      [--logits_out=out.npz]

Prompt sources (exactly one): --prompt (text, tokenised by the checkpoint's
tokenizer), --prompt_file (text file), --input_ids (a 1-D integer .npy used
exactly as given, no BOS added). --logits_out writes float32 `logits`
[steps, vocab] (row 0 predicts the token after the prompt, then one row per
generated token) and int32 `tokens`.

Modes and their flags live in launch/modes.py (shared with launch.evaluate);
every mode runs through focus_jax.eval.runner.generate.
"""
from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
import numpy as np

from launch import modes

FLAGS = flags.FLAGS
MODES = modes.MODE_NAMES
flags.DEFINE_string("checkpoint", None, "focus_jax checkpoint directory (launch.convert output).")
flags.DEFINE_string("prompt", None, "Prompt text.")
flags.DEFINE_string("prompt_file", None, "File holding the prompt text.")
flags.DEFINE_string("input_ids", None, "1-D integer .npy of prompt ids, used as given.")
flags.DEFINE_integer("max_new_tokens", 32, "Maximum number of tokens to generate.")
flags.DEFINE_string("logits_out", None, "Write logits [steps, vocab] and tokens to this .npz.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with --temperature > 0).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_boolean("ignore_eos", False, "Keep generating after an EOS token.")


def _prompt_ids(tokenizer):
  given = [f for f in ("prompt", "prompt_file", "input_ids") if getattr(FLAGS, f) is not None]
  if len(given) != 1:
    raise app.UsageError("give exactly one of --prompt, --prompt_file, --input_ids")
  if FLAGS.input_ids is not None:
    ids = np.load(FLAGS.input_ids, allow_pickle=False)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise app.UsageError(f"--input_ids must hold a 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int32)
  if tokenizer is None:
    raise app.UsageError("the checkpoint has no tokenizer; use --input_ids")
  text = FLAGS.prompt
  if FLAGS.prompt_file is not None:
    with open(FLAGS.prompt_file, encoding="utf-8") as f:
      text = f.read()
  return np.asarray(tokenizer(text)["input_ids"], np.int32)


def load_tokenizer(tokenizer_dir):
  if not tokenizer_dir or not os.path.isdir(tokenizer_dir) or not os.listdir(tokenizer_dir):
    return None
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(tokenizer_dir)


def main(argv):
  del argv
  if FLAGS.checkpoint is None:
    raise app.UsageError("--checkpoint is required")
  if FLAGS.mode not in modes.MODE_NAMES:
    raise app.UsageError(f"unknown --mode={FLAGS.mode}; available: {sorted(modes.MODE_NAMES)}")
  from focus_jax.checkpoint.orbax import load_checkpoint
  from focus_jax.sampling import Sampler
  model, extras = load_checkpoint(FLAGS.checkpoint)
  model.set_config(model.config.replace(compute_dtype=FLAGS.dtype))
  tokenizer = load_tokenizer(extras.get("tokenizer_dir"))
  ids = _prompt_ids(tokenizer)
  sampler = Sampler(FLAGS.temperature, FLAGS.top_p, FLAGS.seed)
  logging.info("prompt: %d tokens, mode=%s", ids.size, FLAGS.mode)
  t0 = time.time()
  from focus_jax.eval import runner
  setup = modes.mode_setup(model)
  gen = runner.generate(setup, ids, FLAGS.max_new_tokens, sampler,
                        stop_at_eos=not FLAGS.ignore_eos)
  dt = time.time() - t0
  logging.info("generated %d tokens in %.2f s", len(gen.tokens), dt)
  if FLAGS.logits_out:
    np.savez(FLAGS.logits_out, logits=gen.logits.astype(np.float32),
             tokens=gen.tokens.astype(np.int32))
  if tokenizer is not None:
    print(tokenizer.decode(gen.tokens, skip_special_tokens=False))
  else:
    print(" ".join(map(str, gen.tokens.tolist())))
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
