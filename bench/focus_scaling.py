r"""FocusLLM inference on SmolLM2-135M: scaling with the input length, first-call
latency, per-token cost and fast-vs-exact agreement.

  python bench/focus_scaling.py [--lengths=8192,16384,32768,65536,131072] \
      [--plain_max=16384] [--chunk_size=1024 --local_window=1024] [--new_tokens=8] \
      [--min_focus_len=4096]

Every measurement runs in a fresh subprocess (peak RSS is that process's
ru_maxrss). Each one measures the machine's matmul peak (a jitted
2048x2048 float32 matmul) before and after, and reports the chunk encoding's
model FLOP rate as a fraction of it, per wall second and per process CPU
second (the latter is robust to other processes sharing the cores).
Compilation time (summed from JAX's trace/lower/compile events) is reported
apart and taken out of the wall timings the ratios t(2L)/t(L) use; CPU-second
figures include it. Prompts: Shakespeare text (scaling) and official passkey
prompts (first call, agreement). The candidate projections are
untrained copies of q/k/v/o unless the checkpoint has trained ones; timings
do not depend on it, agreement figures do. The last output line is one JSON
object with every figure.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("lengths", ["8192", "16384", "32768", "65536", "131072"], "Prompt lengths.")
flags.DEFINE_integer("plain_max", 16384, "Longest prompt for the plain full-attention baseline.")
flags.DEFINE_integer("chunk_size", 1024, "S.")
flags.DEFINE_integer("local_window", 1024, "Wl.")
flags.DEFINE_integer("fragment_len", 512, "Fragment length cap.")
flags.DEFINE_integer("chunk_batch", 1, "Chunk rows per encoding call.")
flags.DEFINE_integer("min_focus_len", 4096, "T: shorter prompts would run the plain model "
                     "(an error here).")
flags.DEFINE_integer("new_tokens", 8, "Tokens generated after the prefill.")
flags.DEFINE_integer("first_call_len", 6000, "Prompt length of the first-call timing (0: skip).")
flags.DEFINE_integer("agreement_seeds", 5, "Passkey prompts for fast-vs-exact agreement (0: skip).")
flags.DEFINE_integer("agreement_len", 6000, "Passkey prompt length for the agreement check.")
flags.DEFINE_string("checkpoint", None, "HF folder or .gguf (default: the embedded SmolLM2).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_string("worker", None, "Internal: run one measurement (json spec) and print it.")


def _spec_cmd(spec: dict) -> list[str]:
  return [sys.executable, os.path.abspath(__file__), f"--worker={json.dumps(spec)}"]


def run_worker(spec: dict) -> dict:
  """Runs one measurement in a fresh process; returns its JSON result."""
  t0 = time.time()
  proc = subprocess.run(_spec_cmd(spec), capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode != 0 or not lines:
    tail = (proc.stdout + proc.stderr)[-3000:]
    return {**spec, "error": f"exit {proc.returncode}: {tail}"}
  out = json.loads(lines[-1])
  out["process_s"] = round(time.time() - t0, 1)
  print(json.dumps(out), flush=True)
  return out


def main(argv):
  del argv
  if FLAGS.worker:
    from bench.focus_worker import work   # heavy imports only in workers
    print(json.dumps(work(json.loads(FLAGS.worker))), flush=True)
    return
  common = dict(S=FLAGS.chunk_size, Wl=FLAGS.local_window, F=FLAGS.fragment_len,
                T=FLAGS.min_focus_len,
                chunk_batch=FLAGS.chunk_batch, checkpoint=FLAGS.checkpoint, dtype=FLAGS.dtype)
  results = {"settings": {**common, "new_tokens": FLAGS.new_tokens}, "focus": {}, "plain": {}}
  lengths = sorted(int(x) for x in FLAGS.lengths if x)
  for length in lengths:
    results["focus"][length] = run_worker(
        dict(common, task="focus", length=length, new_tokens=FLAGS.new_tokens))
    if length <= FLAGS.plain_max:
      results["plain"][length] = run_worker(
          dict(common, task="plain", length=length, new_tokens=FLAGS.new_tokens))
  for kind in ("focus", "plain"):
    r = results[kind]
    results[f"{kind}_ratio_t2L_over_tL"] = {
        f"{b}/{a}": round(r[b]["warm_s"] / r[a]["warm_s"], 2)
        for a, b in zip(lengths, lengths[1:])
        if a in r and b in r and b == 2 * a and "warm_s" in r[a] and "warm_s" in r[b]}
  if FLAGS.first_call_len:
    results["first_call"] = {d: run_worker(dict(common, task="first", decode=d,
                                                length=FLAGS.first_call_len,
                                                new_tokens=FLAGS.new_tokens))
                             for d in ("exact", "fast")}
  if FLAGS.agreement_seeds:
    results["agreement"] = run_worker(dict(common, task="agree", length=FLAGS.agreement_len,
                                           seeds=FLAGS.agreement_seeds))
  print(json.dumps(results, default=str))


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  app.run(main)
