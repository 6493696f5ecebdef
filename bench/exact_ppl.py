r"""Exact FocusLLM perplexity of one window: K exact decoding steps against the batched pass.

  nice -n 10 python bench/exact_ppl.py [--length=4096] [--loss_tokens=64] [--start=0] \
      [--checkpoint=HF_DIR] [--chunk_batch=1]

One perplexity window (eval.perplexity: BOS + length - 1 tokens of the first
held-out play from `start`; the last loss_tokens scored) on SmolLM2-135M with
the shipped trained candidates (focus_jax/trained, their S, Wl, F), scored
twice in this process: "old", exact decoding with the targets forced
(generation.modes.generate, exact decoding: one chunk update of every chunk and one local
recomputation per target), and "new", focus_jax.focus.exact_batch.exact_logits
(one pass), run twice (the second call reuses its compilation). Reports wall
and process CPU seconds (CPU seconds are robust to other processes on the
cores), compilation seconds (JAX's trace/lower/compile events), the old/new
ratios with and without compilation, the largest logit difference, both
windows' NLL and the load average. The last output line is one JSON object.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_integer("length", 4096, "Window length in tokens (BOS included).")
flags.DEFINE_integer("loss_tokens", 64, "Scored tokens at the end of the window (K).")
flags.DEFINE_integer("start", 0, "First document token of the window.")
flags.DEFINE_string("checkpoint", None, "HF folder with candidates (default: the embedded "
                    "SmolLM2 + the shipped trained candidates).")
flags.DEFINE_integer("chunk_batch", 1, "Chunk rows per call (old path; the new one's minimum).")
flags.DEFINE_bool("warm_call", True, "Run the new path a second time (compiled).")


def _timed(fn):
  from focus_worker import compile_s
  w, c = time.perf_counter(), time.process_time()
  out = fn()
  w1, c1 = time.perf_counter(), time.process_time()
  return out, {"wall_s": round(w1 - w, 2), "cpu_s": round(c1 - c, 2),
               "compile_s": round(compile_s(w, w1), 2)}


def main(_):
  import numpy as np
  from focus_jax import trained
  from focus_jax.checkpoint.hf import load_hf, read_focus_config
  from focus_jax.text import hf_tokenizer
  from focus_jax.eval.perplexity import default_paths, window_ids
  from focus_jax.focus.exact_batch import exact_logits
  from focus_jax.generation.modes import Forced, ModeSetup, generate, log_softmax_at
  from focus_jax.model import device_put

  with tempfile.TemporaryDirectory() as tmp:
    path = FLAGS.checkpoint or str(trained.hf_folder(os.path.join(tmp, "hf")))
    model, _ = load_hf(path)
    model = device_put(model)
    fc = read_focus_config(path)
    enc, _ = hf_tokenizer(path, add_special_tokens=False)
  bos = model.config.bos_token_id
  doc = enc(open(default_paths()[0], encoding="utf-8").read())
  if len(doc) < FLAGS.start + FLAGS.length - 1:
    raise SystemExit(f"exact_ppl: error: the play has {len(doc)} tokens, fewer than start + "
                     f"length - 1")
  ids = np.asarray(window_ids(doc, FLAGS.start, FLAGS.length, bos), np.int32)
  k = FLAGS.loss_tokens
  prompt, targets = ids[:-k], ids[-k:]
  load0 = os.getloadavg()
  print(f"window {FLAGS.length} tokens, K = {k}, S = {fc.chunk_size}, Wl = {fc.local_window}, "
        f"F = {fc.fragment_len}; load {load0}", flush=True)
  steps = {}
  old, t_old = _timed(lambda: generate(
      ModeSetup("focus", model, focus=fc, chunk_batch=FLAGS.chunk_batch), prompt, k,
      Forced(targets), stop_at_eos=False, timings=steps).logits)
  print("old", t_old, flush=True)
  new, t_new = _timed(lambda: exact_logits(model, prompt, targets, focus=fc,
                                           chunk_batch=FLAGS.chunk_batch))
  print("new (first call)", t_new, flush=True)
  new2, t_warm = new, None
  if FLAGS.warm_call:
    new2, t_warm = _timed(lambda: exact_logits(model, prompt, targets, focus=fc,
                                               chunk_batch=FLAGS.chunk_batch))
    print("new (warm)", t_warm, flush=True)
  nll_old = float(-log_softmax_at(old, targets).sum())
  nll_new = float(-log_softmax_at(new, targets).sum())
  ex = lambda t: max(t["wall_s"] - t["compile_s"], 1e-9)
  res = {
      "length": FLAGS.length, "loss_tokens": k, "chunk_size": fc.chunk_size,
      "local_window": fc.local_window, "fragment_len": fc.fragment_len,
      "n_chunks": steps.get("n_chunks"), "old": t_old, "new": t_new, "new_warm": t_warm,
      "ratio_wall": round(t_old["wall_s"] / t_new["wall_s"], 2),
      "ratio_cpu": round(t_old["cpu_s"] / t_new["cpu_s"], 2),
      "ratio_wall_no_compile": round(ex(t_old) / ex(t_new), 2),
      "ratio_wall_warm": t_warm and round(t_old["wall_s"] / t_warm["wall_s"], 2),
      "ratio_cpu_warm": t_warm and round(t_old["cpu_s"] / t_warm["cpu_s"], 2),
      "max_abs_logit_diff": float(np.abs(old - new).max()),
      "warm_repeat_diff": float(np.abs(new2 - new).max()),
      "nll_per_token_old": nll_old / k, "nll_per_token_new": nll_new / k,
      "load_before": load0, "load_after": os.getloadavg(),
  }
  print(json.dumps(res))


if __name__ == "__main__":
  app.run(main)
