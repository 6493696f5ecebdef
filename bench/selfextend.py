r"""SelfExtend on the real SmolLM2-135M (trained context 8192): memory, time, passkey.

  .venv/bin/python bench/selfextend.py speed --lengths=16384,32768,65536
  .venv/bin/python bench/selfextend.py speed --lengths=4096,8192 --group_size=4 \
      --blocks=256x256,512x512
  .venv/bin/python bench/selfextend.py passkey --lengths=16384,32768 --seeds=3 \
      [--plain_lengths=16384]

speed: one prefill forward over Shakespeare tokens, logits at the last position
only, in a fresh subprocess per length; reports peak RSS (ru_maxrss of that
process: model load, compilation and the forward), compile and run wall seconds
and the run's CPU seconds (all threads; steadier than wall time on a shared
machine). --blocks: attention block sizes QxK (default the library's 256x256);
with several, each length runs once per setting, alternately, and the summary
gives each setting's run CPU seconds over the first's.
passkey: the official protocol (focus_jax.eval.passkey): prompt of the given
length, greedy decoding of exactly as many tokens as the answer (KV cache,
SelfExtend in prefill and decoding), exact match; the plain model (no
SelfExtend, positions past its 8192 window) for comparison.

G defaults to the smallest covering group size (focus_jax.selfextend); W to
1024. Every child prints one JSON line; the parent ends with one JSON object.
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


def _load():
  from transformers import AutoTokenizer
  from focus_jax import assets
  from focus_jax.checkpoint.hf import load_hf
  from focus_jax.model import device_put
  hf_dir = assets.smollm2_hf_dir()
  model, _ = load_hf(hf_dir)
  tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True, trust_remote_code=False)
  return device_put(model), tok


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setting(cfg, n, args):
  from focus_jax.selfextend import resolve
  se = resolve(cfg, n, args.group_size, args.neighbor_window)
  return se.group_size, se.neighbor_window


def child_speed(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from focus_jax import assets
  from focus_jax.model import AttnOptions
  n = args.length
  model, tok = _load()
  cfg = model.config
  graphdef, params = nnx.split(model)
  ids = tok(assets.shakespeare_text(n_chars=n * 6))["input_ids"]
  if len(ids) < n:
    raise SystemExit(f"not enough text for {n} tokens")
  ids = jnp.asarray(np.asarray(ids[:n], np.int32)[None])
  se = _setting(cfg, n, args) if args.mode == "selfextend" else None

  attn = AttnOptions(block_q=args.block_q, block_k=args.block_k, selfextend=se)

  def f(params, ids):
    pos = jnp.arange(ids.shape[1])[None]
    return nnx.merge(graphdef, params)(ids, pos, attn=attn, logits="last").logits
  t0 = time.time()
  compiled = jax.jit(f).lower(params, ids).compile()
  compile_s = time.time() - t0
  t0, c0 = time.time(), time.process_time()
  logits = np.asarray(compiled(params, ids))
  run_s, run_cpu_s = time.time() - t0, time.process_time() - c0
  print(json.dumps({"what": "speed", "mode": args.mode, "tokens": n, "selfextend": se,
                    "block_q": args.block_q, "block_k": args.block_k, "compile_s": compile_s,
                    "run_s": run_s, "run_cpu_s": run_cpu_s, "tokens_per_s": n / run_s,
                    "peak_rss_mib": _rss_mib(),
                    "next_token": tok.decode([int(logits[0, -1].argmax())]),
                    "finite": bool(np.isfinite(logits).all())}))


def child_passkey(args):
  from focus_jax.eval.passkey import answer_token_count, is_correct, make_passkey_prompt
  from focus_jax.generation.modes import ModeSetup, generate
  n = args.length
  model, tok = _load()
  cfg = model.config
  for seed in range(args.seed0, args.seed0 + args.seeds):
    ids, answer = make_passkey_prompt(tok, n, seed=seed)
    steps = answer_token_count(tok, answer)
    t0 = time.time()
    if args.mode == "selfextend":
      setup = ModeSetup("selfextend", model, group_size=args.group_size,
                        neighbor_window=args.neighbor_window)
      gen = generate(setup, ids, steps, stop_at_eos=False)
      se = _setting(cfg, ids.size + steps, args)
    else:
      gen = generate(ModeSetup("plain", model), ids, steps, stop_at_eos=False)
      se = None
    print(json.dumps({"what": "passkey", "mode": args.mode, "length": n, "tokens": int(ids.size),
                      "seed": seed, "selfextend": se, "answer": answer,
                      "output": tok.decode(gen.tokens.tolist()),
                      "correct": is_correct(tok, gen.tokens, answer),
                      "seconds": time.time() - t0, "peak_rss_mib": _rss_mib()}), flush=True)


def _run_child(what, length, mode, args):
  cmd = [sys.executable, os.path.abspath(__file__), what, f"--child", f"--length={length}",
         f"--mode={mode}", f"--neighbor_window={args.neighbor_window}",
         f"--block_q={args.block_q}", f"--block_k={args.block_k}", f"--seeds={args.seeds}",
         f"--seed0={args.seed0}"]
  if args.group_size:
    cmd.append(f"--group_size={args.group_size}")
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"child {what} {mode} {length} failed ({proc.returncode})")
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  for r in rows:
    print(json.dumps(r), flush=True)
  return rows


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("what", choices=["speed", "passkey"])
  ap.add_argument("--lengths", default="16384,32768,65536")
  ap.add_argument("--plain_lengths", default="", help="lengths also run with the plain model")
  ap.add_argument("--group_size", type=int, default=None)
  ap.add_argument("--neighbor_window", type=int, default=1024)
  ap.add_argument("--blocks", default="256x256", help="attention blocks QxK, comma separated")
  ap.add_argument("--block_q", type=int, default=256, help=argparse.SUPPRESS)
  ap.add_argument("--block_k", type=int, default=256, help=argparse.SUPPRESS)
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--seed0", type=int, default=0)
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
  ap.add_argument("--mode", default="selfextend", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    return (child_speed if args.what == "speed" else child_passkey)(args)
  runs = [(int(n), "selfextend") for n in args.lengths.split(",") if n]
  runs += [(int(n), "plain") for n in args.plain_lengths.split(",") if n]
  blocks = [tuple(int(v) for v in b.split("x")) for b in args.blocks.split(",") if b]
  rows = []
  for n, mode in runs:
    for args.block_q, args.block_k in blocks:
      rows += _run_child(args.what, n, mode, args)
  summary = {"what": args.what, "neighbor_window": args.neighbor_window,
             "blocks": args.blocks, "rows": rows}
  if args.what == "speed" and len(blocks) > 1:
    cpu = {(r["mode"], r["tokens"], r["block_q"], r["block_k"]): r["run_cpu_s"] for r in rows}
    summary["run_cpu_ratio_vs_first_blocks"] = {
        f"{m}@{n} {bq}x{bk}": round(c / cpu[(m, n) + blocks[0]], 3)
        for (m, n, bq, bk), c in cpu.items() if (bq, bk) != blocks[0]}
  if args.what == "passkey":
    acc = {}
    for r in rows:
      acc.setdefault(f"{r['mode']}@{r['length']}", []).append(r["correct"])
    summary["accuracy"] = {k: f"{sum(v)}/{len(v)}" for k, v in acc.items()}
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
