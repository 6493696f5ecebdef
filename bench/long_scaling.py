r"""Long-input scaling on SmolLM2-135M with the shipped trained candidates (S=128, F=64,
Wl=128): wall time and peak RSS of the first call and per generated token, FLOP rates.

  # one cell (a fresh process; its JSON line is appended to --out):
  .venv/bin/python bench/long_scaling.py --out=runs/long.jsonl --cells=focus_exact:131072
  # several cells; cells already in --out are skipped (resumable), --redo runs them again:
  .venv/bin/python bench/long_scaling.py --out=runs/long.jsonl \
      --cells=plain:8192,selfextend:8192,selfextend:32768,focus_exact:8192,focus_fast:8192
  # end to end through launch.generate (load + compile included), peak RSS of that process:
  .venv/bin/python bench/long_scaling.py --out=runs/long.jsonl --cells=generate:409600
  # exact decoding with a bfloat16 against a float32 chunk cache, on the same tokens:
  .venv/bin/python bench/long_scaling.py --out=runs/cache.jsonl --cells=cache_diff:8192
  # the same with everything in bfloat16 (weights, activations, every cache):
  .venv/bin/python bench/long_scaling.py --out=runs/cache.jsonl --cells=bf16_diff:32768
  # the log-log figure of every cell in --out:
  .venv/bin/python bench/long_scaling.py --out=runs/long.jsonl --plot=docs/figures/long_scaling.png

Cell kinds: focus_exact, focus_fast (generation.modes.generate in-process), selfextend
(W=1024, G the smallest covering size), plain, generate (python -m
launch.generate --mode=focus, exact, on a checkpoint converted once to
OUT.ckpt; the cell's time is that process's, load and compile included), cache_diff (exact decoding with the float32
and the bfloat16 chunk cache, the second forced onto the first's tokens: max
abs logit difference per step), bf16_diff (the same, the second run with
bfloat16 weights and compute: activations, chunk caches and memory in
bfloat16, softmax statistics and accumulation in float32). Every cell decodes an official passkey
prompt (key at depth 0.5, seed 0) for as many tokens as the answer and
records whether it is right. Figures: first_call_s (process start -> first
logits: load, compile, chunk encoding, local step), step_s (mean per later
token; step_s_last the last one, past any compile), peak_rss_mb (ru_maxrss of the cell's process), chunk_gflops_per_s (the
chunk encoding's model FLOPs per wall second, compile taken out) and, for
selfextend and plain, forward_gflops_per_s; matmul_peak_gflops is a jitted
2048x2048 float32 matmul measured in the same process before and after, and
loadavg the 1-minute load then (the machine may be shared). --cache_dtype is
the exact decoder's chunk cache storage (bfloat16: half the bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("focus_exact", "focus_fast", "selfextend", "plain", "generate", "cache_diff",
         "bf16_diff")
T0 = time.perf_counter()


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_flops(cfg, n_tokens: int, causal_pairs: float) -> float:
  """Matmul FLOPs of a forward: the projections and MLP per token, one logit product and
  one value product per visible (query, key) pair."""
  d, hq, hk = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  per_tok = 2 * (d * (hq + 2 * hk) + hq * d + 3 * d * cfg.intermediate_size)
  return cfg.num_layers * (per_tok * n_tokens + 4 * hq * causal_pairs)


def _focus_config(folder):
  from focus_jax.checkpoint.hf import read_focus_config
  return read_focus_config(folder)


def cell(kind: str, length: int, args) -> dict:
  """Runs one cell in this process and returns its record."""
  sys.path.insert(0, ROOT)
  import numpy as np
  from bench.focus_worker import chunk_flops, compile_s, matmul_peak
  from focus_jax import trained
  from focus_jax.checkpoint.hf import load_hf
  from focus_jax.eval.passkey import answer_token_count, is_correct, make_passkey_prompt
  from focus_jax.model import device_put
  from transformers import AutoTokenizer
  peak0 = matmul_peak()
  load0 = os.getloadavg()[0]
  t_start = time.perf_counter()
  tmp = tempfile.mkdtemp(prefix="long_scaling_")
  folder = trained.hf_folder(os.path.join(tmp, "hf"))
  tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
  ids, answer = make_passkey_prompt(tok, length, depth=0.5, seed=0)
  steps = answer_token_count(tok, answer)
  rec = dict(kind=kind, length=length, tokens=int(ids.size), answer=answer, new_tokens=steps)
  if kind in ("cache_diff", "bf16_diff"):
    return {**rec, **cache_diff(folder, ids, steps, args, full=kind == "bf16_diff"),
            "loadavg": (load0, os.getloadavg()[0])}
  if kind == "generate":
    np.save(os.path.join(tmp, "ids.npy"), ids.astype(np.int64))
    ckpt = os.path.abspath(args.out) + ".ckpt"   # converted once, shared by later cells
    if not os.path.isdir(ckpt):
      subprocess.run([sys.executable, "-m", "launch.convert", f"--hf_model={folder}",
                      f"--out={ckpt}"], cwd=ROOT, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "launch.generate", f"--checkpoint={ckpt}",
           f"--input_ids={tmp}/ids.npy", "--mode=focus", f"--max_new_tokens={steps}",
           "--ignore_eos", f"--logits_out={tmp}/out.npz", f"--chunk_batch={args.chunk_batch}"]
    if args.cache_dtype:
      cmd.append(f"--chunk_cache_dtype={args.cache_dtype}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"launch.generate failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = np.load(os.path.join(tmp, "out.npz"))
    rec.update(total_s=time.perf_counter() - t0, command=" ".join(cmd[1:]),
               peak_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
               output=tok.decode(out["tokens"].tolist()),
               phases=[l.split("] ", 1)[-1] for l in proc.stderr.splitlines()
                       if "] load: " in l or "] compile + prefill: " in l],
               correct=is_correct(tok, out["tokens"], answer))
  else:
    model, _ = load_hf(folder)
    model = device_put(model)
    cfg = model.config
    tm, timed = {}, _Timed()
    t0, c0 = time.perf_counter(), time.process_time()
    if kind.startswith("focus"):
      from focus_jax.focus.plan import make_plan
      from focus_jax.generation.modes import ModeSetup, generate
      fc = _focus_config(folder)
      setup = ModeSetup("focus", model, focus=fc, focus_decode=kind.split("_")[1],
                        chunk_batch=args.chunk_batch, chunk_cache_dtype=args.cache_dtype or None)
      gen = generate(setup, ids, steps, timed, stop_at_eos=False, timings=tm)
      plan = make_plan(ids, cfg, fc, args.chunk_batch)
      chunk_compile = compile_s(t0, t0 + tm["chunks"])
      rec.update(chunks_s=tm["chunks"], chunks_cpu_s=tm["chunks_cpu"],
                 chunks_compile_s=chunk_compile, n_chunks=tm["n_chunks"], n_rows=tm["n_rows"],
                 cache_bytes=tm.get("cache_bytes"), cache_dtype=args.cache_dtype or "float32",
                 chunk_gflops_per_s=chunk_flops(cfg, plan) / 1e9
                 / max(tm["chunks"] - chunk_compile, 1e-9))
    else:
      from focus_jax.generation.modes import ModeSetup, generate
      from focus_jax.selfextend import resolve
      if kind == "selfextend":
        se = resolve(cfg, ids.size + steps)
        rec.update(group_size=se.group_size, neighbor_window=se.neighbor_window)
      gen = generate(ModeSetup(kind, model), ids, steps, timed, stop_at_eos=False)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    comp = compile_s(t0)
    first, gaps = timed.times[0] - t0, np.diff(timed.times)
    rec.update(total_s=total, cpu_s=cpu, compile_s=comp, prefill_s=first,
               step_s=float(gaps.mean()) if gaps.size else None,
               step_s_last=float(gaps[-1]) if gaps.size else None,
               output=tok.decode(gen.tokens.tolist()),
               correct=is_correct(tok, gen.tokens, answer))
    if not kind.startswith("focus"):   # the prefill forward (its compile taken out)
      rec["forward_gflops_per_s"] = (model_flops(cfg, ids.size, ids.size * (ids.size + 1) / 2)
                                     / 1e9 / max(first - compile_s(t0, timed.times[0]), 1e-9))
    rec["first_call_s"] = (t0 - t_start) + first
    rec["peak_rss_mb"] = _rss_mb()
  peak1 = matmul_peak()
  rec.update(matmul_peak_gflops=max(peak0[0], peak1[0]), loadavg=(load0, os.getloadavg()[0]))
  return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()}


class _Timed:
  """Greedy picks that record when each step's logits arrived (every mode calls pick once
  per generated token, with that step's logits already computed)."""

  def __init__(self):
    from focus_jax.sampling import Sampler
    self.sampler, self.times = Sampler(), []

  def pick(self, logits, step):
    self.times.append(time.perf_counter())
    return self.sampler.pick(logits, step)


def cache_diff(folder, ids, steps, args, full: bool = False) -> dict:
  """Exact decoding, float32 then a bfloat16 chunk cache on the float32 run's tokens;
  full: the second run's weights and compute in bfloat16 too."""
  import numpy as np
  from focus_jax.checkpoint.hf import load_hf
  from focus_jax.generation.modes import Forced, ModeSetup, generate
  from focus_jax.model import device_put
  fc = _focus_config(folder)
  steps = max(steps, args.diff_steps)
  runs = {}
  for dt in ("float32", "bfloat16"):
    model, _ = load_hf(folder, dtype="bfloat16" if full and dt == "bfloat16" else "float32")
    if full and dt == "bfloat16":
      model.set_config(model.config.replace(compute_dtype="bfloat16"))
    model = device_put(model)
    tm = {}
    t0 = time.perf_counter()
    sampler = None if dt == "float32" else Forced(runs["float32"][0].tokens)
    kw = {} if sampler is None else {"sampler": sampler}
    setup = ModeSetup("focus", model, focus=fc, chunk_batch=args.chunk_batch,
                      chunk_cache_dtype=dt)
    gen = generate(setup, ids, steps, stop_at_eos=False, timings=tm, **kw)
    runs[dt] = (gen, tm, time.perf_counter() - t0)
  a, b = runs["float32"][0].logits, runs["bfloat16"][0].logits
  diff = np.abs(a - b).max(-1)
  return dict(steps=steps, compared="bfloat16 weights+compute+caches" if full else
              "bfloat16 chunk cache", max_abs_logit_diff=float(diff.max()),
              per_step_max_abs_diff=[round(float(d), 6) for d in diff],
              max_abs_logit=float(np.abs(a).max()),
              argmax_agree=float((a.argmax(-1) == b.argmax(-1)).mean()),
              cache_bytes={dt: r[1]["cache_bytes"] for dt, r in runs.items()},
              wall_s={dt: round(r[2], 1) for dt, r in runs.items()},
              step_s={dt: round(float(np.mean(r[1]["steps"])), 3) for dt, r in runs.items()},
              n_chunks=runs["float32"][1]["n_chunks"], peak_rss_mb=_rss_mb())


def done_cells(path: str) -> set:
  if not os.path.exists(path):
    return set()
  out = set()
  with open(path) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        out.add((r["kind"], r["length"], r.get("cache_dtype_arg", "")))
  return out


def plot(path: str, fig_path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [json.loads(l) for l in open(path) if l.strip()]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  series = {}
  for r in rows:
    if "error" not in r and r["kind"] not in ("cache_diff", "bf16_diff"):
      dt = r.get("cache_dtype_arg", "") if r["kind"] in ("focus_exact", "generate") else ""
      series.setdefault((r["kind"], dt), []).append(r)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, ((kind, dt), rs) in enumerate(sorted(series.items())):
    rs.sort(key=lambda r: r["length"])
    x = [r["length"] for r in rs]
    label = kind + (f" ({dt} cache)" if dt else "")
    style = dict(color=colors[i % len(colors)], label=label)   # one colour per series
    first = [r.get("first_call_s", r.get("total_s")) for r in rs]
    axes[0].plot(x, first, "o-", **style)
    step = [(r["length"], r["step_s"]) for r in rs if r.get("step_s")]
    if step:
      axes[1].plot(*zip(*step), "o-", **style)
    axes[2].plot(x, [r["peak_rss_mb"] / 1024 for r in rs], "o-", **style)
  for ax, title in zip(axes, ("first call (s, load + compile + prefill)", "per generated token (s)",
                              "peak RSS (GiB)")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt tokens")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(fig_path)), exist_ok=True)
  tmp = fig_path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, fig_path)
  print(json.dumps({"figure": fig_path, "cells": len(rows)}))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", required=True, help="JSON lines file, one record per cell")
  ap.add_argument("--cells", default="", help="KIND:LENGTH,... (kinds: " + ", ".join(KINDS) + ")")
  ap.add_argument("--cache_dtype", default="", choices=["", "float32", "bfloat16", "int8"],
                  help="exact decoder's chunk cache storage (default the compute dtype)")
  ap.add_argument("--chunk_batch", type=int, default=1)
  ap.add_argument("--diff_steps", type=int, default=8, help="cache_diff: tokens generated")
  ap.add_argument("--redo", action="store_true", help="run cells already in --out again")
  ap.add_argument("--plot", default="", help="write the log-log figure of --out here")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    kind, length = args.child.split(":")
    print(json.dumps(cell(kind, int(length), args)), flush=True)
    return
  if args.plot:
    return plot(args.out, args.plot)
  done = set() if args.redo else done_cells(args.out)
  for spec in [c for c in args.cells.split(",") if c]:
    kind, _, length = spec.partition(":")
    if kind not in KINDS or not length.isdigit():
      raise SystemExit(f"long_scaling: error: bad cell {spec!r} (KIND:LENGTH, KIND in {KINDS})")
    if (kind, int(length), args.cache_dtype) in done:
      print(json.dumps({"skipped": spec, "cache_dtype": args.cache_dtype}), flush=True)
      continue
    cmd = [sys.executable, os.path.abspath(__file__), f"--out={args.out}", f"--child={spec}",
           f"--chunk_batch={args.chunk_batch}", f"--cache_dtype={args.cache_dtype}",
           f"--diff_steps={args.diff_steps}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
      rec = dict(kind=kind, length=int(length), error=(proc.stdout + proc.stderr)[-2000:])
    else:
      rec = json.loads(lines[-1])
    rec.update(cache_dtype_arg=args.cache_dtype, uptime=os.getloadavg())
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "a") as f:   # one line per finished cell: an interrupted run resumes
      f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  main()
