r"""SmolLM2-135M forward throughput: focus_jax against HF transformers (PyTorch) on this CPU.

  .venv/bin/python bench/prefill.py [--lengths=2048,8192] [--rss_length=32768] [--repeats=2]

Process CPU time is reported beside wall time (it is less sensitive to other
load on the machine). Both run a forward over the same Shakespeare tokens and keep only the last
position's logits. focus_jax's compile time is reported apart from its
steady-state time. The peak RSS of a long forward is measured in a fresh
subprocess. The last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tokens(n):
  from transformers import AutoTokenizer
  from focus_jax import assets
  tok = AutoTokenizer.from_pretrained(assets.smollm2_hf_dir(),
                                      local_files_only=True, trust_remote_code=False)
  ids = tok(assets.shakespeare_text(n_chars=n * 6))["input_ids"]
  if len(ids) < n:
    raise SystemExit(f"not enough text for {n} tokens")
  return ids[:n]


def _cpu_s():
  t = os.times()
  return t.user + t.system


def _timed(fn, repeats):
  """Best wall time and process CPU time of `repeats` calls."""
  best = (float("inf"), float("inf"))
  for _ in range(repeats):
    c0, t0 = _cpu_s(), time.time()
    out = fn()
    best = min(best, (time.time() - t0, _cpu_s() - c0))
  return out, best


def _load_model():
  """(graphdef, state on the device) of the embedded SmolLM2."""
  from flax import nnx
  from focus_jax import assets
  from focus_jax.checkpoint.hf import load_hf
  from focus_jax.model import device_put
  model, _ = load_hf(assets.smollm2_hf_dir())
  return nnx.split(device_put(model))


def _jax_forward(graphdef):
  """f(state, ids) -> last-position logits, jitted."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  @jax.jit
  def f(state, ids):
    pos = jnp.arange(ids.shape[1])[None]
    return nnx.merge(graphdef, state)(ids, pos, logits="last").logits
  return f


def rss_child(n):
  """Runs one n-token forward and prints peak RSS (MiB) and wall time."""
  import jax.numpy as jnp
  import numpy as np
  graphdef, params = _load_model()
  ids = np.asarray(_tokens(n), np.int32)[None]
  f = _jax_forward(graphdef)
  t0 = time.time()
  f(params, jnp.asarray(ids)).block_until_ready()
  dt = time.time() - t0
  print(json.dumps({"n": n, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "seconds": dt}))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--lengths", default="2048,8192")
  ap.add_argument("--rss_length", type=int, default=32768)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--rss_child", type=int, default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.rss_child:
    return rss_child(args.rss_child)

  import jax.numpy as jnp
  import numpy as np
  import torch
  from transformers import AutoModelForCausalLM
  from focus_jax import assets

  torch.set_num_threads(os.cpu_count() or 1)
  hf_dir = assets.smollm2_hf_dir()
  graphdef, params = _load_model()
  model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True,
                                               trust_remote_code=False).eval()
  f = _jax_forward(graphdef)
  lengths = [int(x) for x in args.lengths.split(",")]
  all_ids = _tokens(max(lengths))
  result = {"device": "cpu", "threads": os.cpu_count(), "lengths": {}}
  for n in lengths:
    ids = np.asarray(all_ids[:n], np.int32)[None]
    t0 = time.time()
    out = f(params, jnp.asarray(ids))
    out.block_until_ready()
    first = time.time() - t0
    out, (jax_s, jax_cpu) = _timed(lambda: f(params, jnp.asarray(ids)).block_until_ready(),
                                   args.repeats)
    with torch.no_grad():
      tids = torch.from_numpy(ids.astype(np.int64))
      ref, (hf_s, hf_cpu) = _timed(lambda: model(tids, logits_to_keep=1).logits, args.repeats)
    diff = float(np.abs(np.asarray(out)[0, -1] - ref[0, -1].numpy()).max())
    row = {"jax_s": jax_s, "jax_compile_s": first - jax_s, "hf_s": hf_s,
           "speedup_vs_hf": hf_s / jax_s,
           "jax_cpu_s": jax_cpu, "hf_cpu_s": hf_cpu, "cpu_time_ratio_hf_over_jax": hf_cpu / jax_cpu, "jax_tok_per_s": n / jax_s, "hf_tok_per_s": n / hf_s,
           "last_logit_max_abs_diff": diff}
    result["lengths"][str(n)] = row
    print(f"{n:6d} tokens: focus_jax {jax_s:.2f} s (compile {first - jax_s:.1f} s), "
          f"HF {hf_s:.2f} s, speedup {hf_s / jax_s:.2f}x (CPU time {hf_cpu / jax_cpu:.2f}x), last-logit diff {diff:.2e}", flush=True)
  if args.rss_length:
    del model
    proc = subprocess.run([sys.executable, __file__, f"--rss_child={args.rss_length}"],
                          capture_output=True, text=True, check=True)
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    result["long_forward"] = child
    print(f"{args.rss_length} tokens: peak RSS {child['peak_rss_mib']:.0f} MiB, "
          f"{child['seconds']:.1f} s (incl. compile)", flush=True)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
