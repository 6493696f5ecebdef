r"""What a trained FocusLLM memory retrieves: one long prompt, FocusLLM against the plain model
on the same local window.

  python -m launch.demo_memory --checkpoint=out/smollm2_memory [--task=passkey|fact]
      [--length=2048] [--depth=0.3] [--seed=1]

passkey: the official passkey prompt (focus_jax.eval.passkey); fact: a held-out
play (not trained on) with one fact line at --depth and a question restating
it at the end (focus_jax.data.retrieval's wording). The answer lies far
outside the local window (the last Wl tokens). FocusLLM reads the whole
prompt through its memory with the checkpoint's trained settings
(focus_config.json), exact decoding; the plain model gets BOS + the local
window only, i.e. exactly what FocusLLM's local part sees without the memory.
Prints one line per model and a JSON summary as the last line.
"""
from __future__ import annotations

import json
import math
import sys

from absl import flags

from launch.cli_errors import fail_cleanly, run_cli, start

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "focus_jax checkpoint with trained candidates.")
flags.DEFINE_enum("task", "passkey", ["passkey", "fact"], "Prompt kind.")
flags.DEFINE_integer("length", 2048, "Prompt length in tokens.")
flags.DEFINE_float("depth", 0.3, "Where the key or fact sits, in [0, 1].")
flags.DEFINE_integer("seed", 1, "Seed of the key / fact.")
flags.mark_flag_as_required("checkpoint")


def _fact_prompt(tok, bos, n_tokens, depth, seed):
  """Held-out play text with one fact at `depth`, then the question up to the number."""
  import numpy as np
  from focus_jax.data.retrieval import ATTRS, NAMES
  from focus_jax.train.setup import SHAKESPEARE_EVAL, shakespeare_split
  rng = np.random.default_rng(seed)
  name, attr = NAMES[rng.integers(len(NAMES))], ATTRS[rng.integers(len(ATTRS))]
  value = str(int(rng.integers(10000, 100000)))
  play = [p for p in shakespeare_split("eval") if SHAKESPEARE_EVAL[0] in p][0]
  enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
  fact, question = enc(f" The {attr} of {name} is {value}. "), enc(
      f" Question: what is the {attr} of {name}? Answer: the {attr} of {name} is")
  body = enc(open(play, encoding="utf-8", errors="replace").read()[:n_tokens * 8])
  body = body[:n_tokens - 1 - len(fact) - len(question)]
  at = int(depth * len(body))
  ids = [bos] + body[:at] + fact + body[at:] + question
  return np.asarray(ids, np.int32), value


def validate_flags():
  """Checks every flag that needs no checkpoint."""
  if not math.isfinite(FLAGS.depth) or not 0 <= FLAGS.depth <= 1:
    raise ValueError(f"--depth must be in [0, 1], got {FLAGS.depth}")
  if FLAGS.length < 64:
    raise ValueError(f"--length must be >= 64 tokens, got {FLAGS.length}")


def demo():
  validate_flags()
  from focus_jax.checkpoint.orbax import load_checkpoint
  from focus_jax.text import load_hf_tokenizer
  from focus_jax.eval.passkey import answer_token_count, is_correct, make_passkey_prompt
  from focus_jax.generation.modes import ModeSetup, generate
  model, extras = load_checkpoint(FLAGS.checkpoint)
  focus = extras["focus_config"]
  if not model.has_candidates or focus is None:
    raise ValueError(f"{FLAGS.checkpoint} has no trained candidates (focus_config.json)")
  if extras["tokenizer_dir"] is None:
    raise ValueError(f"{FLAGS.checkpoint} has no tokenizer (its tokenizer/ folder is missing "
                     "or empty); convert the model from a folder or GGUF that has one")
  # The model's BOS (what FocusLLM's rows start with), also where the tokenizer names none.
  bos = model.config.bos_token_id
  if bos is None:
    raise ValueError(f"{FLAGS.checkpoint}: the model has no bos_token_id (model_config.json); "
                     "FocusLLM needs one")
  tok = load_hf_tokenizer(extras["tokenizer_dir"])
  if FLAGS.task == "passkey":
    ids, answer = make_passkey_prompt(tok, FLAGS.length, depth=FLAGS.depth, seed=FLAGS.seed)
    n = answer_token_count(tok, answer)
  else:
    ids, answer = _fact_prompt(tok, bos, FLAGS.length, FLAGS.depth, FLAGS.seed)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    n = len(enc(f" is {answer}")) - len(enc(" is"))
  local = [bos] + ids[-focus.local_window:].tolist()
  seen = answer in tok.decode(local)
  print(f"{FLAGS.task} prompt: {ids.size} tokens, answer {answer} "
        f"({'inside' if seen else 'outside'} the local window of the last {focus.local_window} "
        f"tokens); FocusLLM S={focus.chunk_size} Wl={focus.local_window} F={focus.fragment_len}",
        flush=True)
  out = {}
  for name, run in (
      ("FocusLLM (memory + local window)",
       lambda: generate(ModeSetup("focus", model, focus=focus), ids, n, stop_at_eos=False)),
      ("plain model, local window only",
       lambda: generate(ModeSetup("plain", model), local, n, stop_at_eos=False))):
    gen = run().tokens[:n]
    ok = is_correct(tok, gen, answer)
    out[name] = {"output": tok.decode(gen), "correct": bool(ok)}
    print(f"  {name:34s} -> {tok.decode(gen)!r} ({'correct' if ok else 'wrong'})", flush=True)
  print(json.dumps({"task": FLAGS.task, "tokens": int(ids.size), "answer": answer, **out}))
  sys.stdout.flush()


def main(argv):
  start("demo_memory", argv)
  fail_cleanly("demo_memory", demo)


if __name__ == "__main__":
  run_cli("demo_memory", main)
