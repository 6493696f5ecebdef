r"""Generates a continuation of a prompt from a focus_jax checkpoint.

  python -m launch.generate --checkpoint=DIR --prompt="The capital of France is" \
      --max_new_tokens=16 [--mode=plain|...] [--temperature=0.7 --top_p=0.9 --seed=0] \
      [--logits_out=out.npz]

Prompt sources (exactly one): --prompt (text, tokenised by the checkpoint's
tokenizer), --prompt_file (text file), --input_ids (a 1-D integer .npy used
exactly as given, no BOS added). --logits_out writes float32 `logits`
[steps, vocab] (row 0 predicts the token after the prompt, then one row per
generated token) and int32 `tokens`, atomically; an existing file is replaced
only with --overwrite.

Every input is checked before the checkpoint loads; a bad one ends with exit
status 1 and one `generate: error: ...` line. The text is printed before
--logits_out is written.

Modes and their flags live in launch/modes.py (shared with launch.evaluate);
every mode runs through focus_jax.generation.modes.generate.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time

from absl import flags
import numpy as np

from launch import modes
from launch.cli_errors import fail_cleanly, run_cli, start

FLAGS = flags.FLAGS
log = logging.getLogger("focus_jax.launch.generate")
flags.DEFINE_string("checkpoint", None, "focus_jax checkpoint directory (launch.convert output).")
flags.DEFINE_string("prompt", None, "Prompt text.")
flags.DEFINE_string("prompt_file", None, "File holding the prompt text.")
flags.DEFINE_string("input_ids", None, "1-D integer .npy of prompt ids, used as given.")
flags.DEFINE_integer("max_new_tokens", 32, "Maximum number of tokens to generate.")
flags.DEFINE_string("logits_out", None, "Write logits [steps, vocab] and tokens to this .npz "
                    "(the name must end in .npz).")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --logits_out file.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples (a value too small for "
                   "float32, below 1.2e-38, is greedy: the limit of sampling).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with --temperature > 0).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_boolean("ignore_eos", False, "Keep generating after an EOS token.")


def validate_flags():
  """Checks every flag that needs no checkpoint."""
  if FLAGS.checkpoint is None:
    raise ValueError("--checkpoint is required")
  modes.check_mode_flags()
  given = [f for f in ("prompt", "prompt_file", "input_ids") if getattr(FLAGS, f) is not None]
  if len(given) != 1:
    raise ValueError("give exactly one of --prompt, --prompt_file, --input_ids")
  modes.at_least(1, "max_new_tokens")
  if not math.isfinite(FLAGS.temperature) or FLAGS.temperature < 0:
    raise ValueError(f"--temperature must be a finite number >= 0, got {FLAGS.temperature}")
  if not math.isfinite(FLAGS.top_p) or not 0 < FLAGS.top_p <= 1:
    raise ValueError(f"--top_p must be in (0, 1], got {FLAGS.top_p}")
  if FLAGS.logits_out is not None and not FLAGS.logits_out.endswith(".npz"):
    raise ValueError(f"--logits_out={FLAGS.logits_out}: the name must end in .npz")
  if FLAGS.logits_out is not None and os.path.lexists(FLAGS.logits_out):
    from focus_jax.checkpoint.atomic import check_file_target
    check_file_target(FLAGS.logits_out, FLAGS.overwrite, "--logits_out")


def _prompt_ids(tokenizer_dir, cfg):
  """(prompt ids, tokenizer or None); the tokenizer is loaded after --input_ids is checked."""
  tokenizer = None
  if FLAGS.input_ids is not None:
    try:
      ids = np.load(FLAGS.input_ids, allow_pickle=False)
    except (ValueError, EOFError):
      raise ValueError(f"--input_ids={FLAGS.input_ids}: not an array saved with numpy.save "
                       "(.npy)") from None
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"--input_ids must hold a 1-D integer array, got "
                       f"{getattr(ids, 'dtype', type(ids))} {getattr(ids, 'shape', '')}")
  else:
    tokenizer = load_tokenizer(tokenizer_dir)
    if tokenizer is None:
      raise ValueError("the checkpoint has no tokenizer; use --input_ids")
    text = FLAGS.prompt
    if FLAGS.prompt_file is not None:
      try:
        with open(FLAGS.prompt_file, encoding="utf-8") as f:
          text = f.read()
      except UnicodeDecodeError as e:
        raise ValueError(f"--prompt_file={FLAGS.prompt_file} is not UTF-8 text "
                         f"(byte {e.start})") from None
    if not text:
      raise ValueError("the prompt is empty" + (f" ({FLAGS.prompt_file})" if FLAGS.prompt_file
                                                else ""))
    ids = np.asarray(tokenizer(text)["input_ids"], np.int64)
  if ids.size == 0:
    raise ValueError("the prompt holds no tokens")
  lo, hi = int(ids.min()), int(ids.max())  # exact for any integer dtype, before any cast
  if lo < 0 or hi >= cfg.vocab_size:
    raise ValueError(f"prompt ids must be in [0, {cfg.vocab_size}) (the vocabulary), "
                     f"got min {lo}, max {hi}")
  if tokenizer is None:
    tokenizer = load_tokenizer(tokenizer_dir)
  return ids.astype(np.int32), tokenizer


def load_tokenizer(tokenizer_dir):
  """The checkpoint's tokenizer (local files, no remote code), or None when it has none."""
  from focus_jax.text import has_tokenizer, load_hf_tokenizer as load
  return load(tokenizer_dir) if has_tokenizer(tokenizer_dir) else None


def check_memory(cfg, n_prompt: int, params_bytes: int):
  """Refuses a KV cache (plain / selfextend) that cannot fit, before allocating it."""
  if FLAGS.mode == "focus":
    return
  from focus_jax.generation.decode import bucket, kv_cache_bytes
  cache = kv_cache_bytes(cfg.replace(compute_dtype=FLAGS.dtype),
                         bucket(n_prompt + FLAGS.max_new_tokens))
  from focus_jax.memory import available_bytes, check_bytes
  avail, where = available_bytes()
  check_bytes(cache + params_bytes, f"the KV cache for {n_prompt} prompt + {FLAGS.max_new_tokens} "
              f"new tokens (+ {params_bytes / 2**30:.1f} GiB params)", "lower --max_new_tokens",
              limit=avail, where=where)


def _dir_bytes(path) -> int:
  return sum(f.stat().st_size for f in __import__("pathlib").Path(path).rglob("*") if f.is_file())


class _TimedSampler:
  """Records when the first token is chosen (end of compile + prefill)."""

  def __init__(self, sampler):
    self.sampler, self.first = sampler, None

  def __getattr__(self, name):
    return getattr(self.sampler, name)

  def pick(self, logits, step):
    tok = self.sampler.pick(logits, step)
    if self.first is None:
      self.first = time.time()
    return tok


def write_logits(path: str, gen, overwrite: bool = False):
  """Writes the .npz atomically; an existing file is replaced only with overwrite."""
  from focus_jax.checkpoint.atomic import atomic_file, check_file_target
  check_file_target(path, overwrite, "--logits_out")  # its own one-line messages
  try:
    with atomic_file(path, overwrite, "--logits_out", suffix=".npz") as tmp:
      np.savez(tmp, logits=gen.logits.astype(np.float32), tokens=gen.tokens.astype(np.int32))
  except OSError as e:
    raise OSError(f"could not write --logits_out={path}: {e.strerror or e}") from None


def generate():
  validate_flags()
  from focus_jax.checkpoint.orbax import load_checkpoint, read_checkpoint_info
  from focus_jax.sampling import Sampler
  t0 = time.time()
  cfg, tokenizer_dir = read_checkpoint_info(FLAGS.checkpoint)
  ids, tokenizer = _prompt_ids(tokenizer_dir, cfg)
  if FLAGS.mode == "plain" and ids.size + FLAGS.max_new_tokens > cfg.max_position_embeddings:
    log.warning("prompt (%d tokens) + %d new tokens exceed the model's trained context of %d "
                "tokens; plain attention degrades beyond it: --mode=selfextend or --mode=focus "
                "handle long inputs", ids.size, FLAGS.max_new_tokens, cfg.max_position_embeddings)
  check_memory(cfg, ids.size, _dir_bytes(os.path.join(FLAGS.checkpoint, "params")))
  sampler = _TimedSampler(Sampler(FLAGS.temperature, FLAGS.top_p, FLAGS.seed))
  model, extras = load_checkpoint(FLAGS.checkpoint)
  model.set_config(model.config.replace(compute_dtype=FLAGS.dtype))
  log.info("load: %s in %.1f s (prompt %d tokens, mode=%s)", FLAGS.checkpoint,
           time.time() - t0, ids.size, FLAGS.mode)
  t1 = time.time()
  from focus_jax.generation.modes import generate
  setup = modes.mode_setup(model, saved_focus=extras.get("focus_config"))
  gen = generate(setup, ids, FLAGS.max_new_tokens, sampler, stop_at_eos=not FLAGS.ignore_eos)
  t2 = time.time()
  first = sampler.first or t2
  log.info("compile + prefill: %.2f s; generate: %d tokens in %.2f s", first - t1,
           len(gen.tokens), t2 - first)
  if tokenizer is not None:
    print(tokenizer.decode(gen.tokens, skip_special_tokens=False))
  else:
    print(" ".join(map(str, gen.tokens.tolist())))
  sys.stdout.flush()
  if FLAGS.logits_out:
    t3 = time.time()
    write_logits(FLAGS.logits_out, gen, FLAGS.overwrite)
    log.info("save: %s in %.2f s", FLAGS.logits_out, time.time() - t3)


def main(argv):
  start("generate", argv)
  fail_cleanly("generate", generate)


if __name__ == "__main__":
  run_cli("generate", main)
