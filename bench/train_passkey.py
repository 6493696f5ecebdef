r"""Passkey retrieval with FocusLLM before and after training the candidate projections.

  .venv/bin/python bench/train_passkey.py --trained=out/train_smollm2/model \
      [--base=out/smollm2] [--lengths=1024,2048] [--seeds=5] \
      [--chunk_size=256 --local_window=256 --fragment_len=128]

The official protocol (focus_jax.eval.passkey): prompt of the given length
with the key at a random depth, greedy decoding of exactly as many tokens as
the answer, exact match. Three models on the same prompts:
  plain     the base model on the whole prompt (no FocusLLM; reference),
  initial   FocusLLM with candidate projections copied from the base (untrained),
  trained   FocusLLM with the trained candidate projections (--trained).
FocusLLM decodes exactly (memory rebuilt at every token). One line per prompt,
then one JSON object with the accuracies.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--base", default="out/smollm2", help="focus_jax checkpoint of the base model")
  ap.add_argument("--trained", help="focus_jax checkpoint with trained candidates (needed "
                  "when --models has 'trained')")
  ap.add_argument("--lengths", default="1024,2048")
  ap.add_argument("--seeds", type=int, default=5)
  ap.add_argument("--chunk_size", type=int, default=256)
  ap.add_argument("--local_window", type=int, default=256)
  ap.add_argument("--fragment_len", type=int, default=128)
  ap.add_argument("--models", default="plain,initial,trained", help="which of the three to run")
  args = ap.parse_args()

  from flax import nnx
  from transformers import AutoTokenizer
  from focus_jax.checkpoint.orbax import load_checkpoint
  from focus_jax.config import FocusConfig
  from focus_jax.eval.passkey import answer_token_count, is_correct, make_passkey_prompt
  from focus_jax.generation.modes import ModeSetup, generate
  from focus_jax.model import add_candidates, remove_candidates

  base, extras = load_checkpoint(args.base)
  tok = AutoTokenizer.from_pretrained(extras["tokenizer_dir"],
                                      local_files_only=True, trust_remote_code=False)
  models = args.models.split(",")
  if unknown := set(models) - {"plain", "initial", "trained"}:
    raise SystemExit(f"--models: unknown {sorted(unknown)}; choose from plain, initial, trained")
  trained = None
  if "trained" in models:
    if not args.trained:
      raise SystemExit("--trained is needed when --models has 'trained'")
    trained, _ = load_checkpoint(args.trained)
    if not trained.has_candidates:
      raise SystemExit(f"{args.trained} has no candidate projections")
  initial = add_candidates(remove_candidates(nnx.clone(base)))
  focus = FocusConfig(chunk_size=args.chunk_size, local_window=args.local_window,
                      fragment_len=args.fragment_len, min_focus_len=0)
  runs = {
      "plain": lambda ids, n: generate(ModeSetup("plain", base), ids, n, stop_at_eos=False),
      "initial": lambda ids, n: generate(ModeSetup("focus", initial, focus=focus), ids, n,
                                         stop_at_eos=False),
      "trained": lambda ids, n: generate(ModeSetup("focus", trained, focus=focus), ids, n,
                                         stop_at_eos=False)}
  runs = {k: v for k, v in runs.items() if k in models}
  correct = {name: {} for name in runs}
  for length in [int(x) for x in args.lengths.split(",")]:
    for seed in range(args.seeds):
      ids, answer = make_passkey_prompt(tok, length, seed=seed)
      n = answer_token_count(tok, answer)
      for name, run in runs.items():
        t0 = time.time()
        gen = run(ids, n)
        ok = is_correct(tok, gen.tokens[:n], answer)
        correct[name].setdefault(length, []).append(bool(ok))
        print(json.dumps({"model": name, "tokens": int(ids.size), "seed": seed, "answer": answer,
                          "output": tok.decode(gen.tokens[:n]), "correct": bool(ok),
                          "seconds": round(time.time() - t0, 1)}), flush=True)
  summary = {name: {str(k): f"{sum(v)}/{len(v)}" for k, v in per.items()}
             for name, per in correct.items()}
  summary["settings"] = dict(vars(args))
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
