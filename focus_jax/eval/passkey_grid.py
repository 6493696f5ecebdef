"""The passkey grid: every (length, depth, seed) case of the official protocol.

Case (L, d, s): the official prompt of at most L tokens (focus_jax.eval
.passkey) with the key drawn from seed s (the same key at every length and
depth) and the key line after a share d of the filler; greedy decoding of
exactly as many tokens as the answer takes; exact match.

With a haystack text (--haystack) the filler is that text instead: its
tokens, repeated when too short, are cut at the depth and the needle line
(--needle_template, "{key}" replaced by the key) is put between the halves:

  TASK \\n haystack[:a] \\n needle \\n haystack[a:n] \\n QUESTION
"""
from __future__ import annotations

import random

import numpy as np

from focus_jax.eval import passkey as P


def make_cases(lengths, depths, seeds: int) -> list[dict]:
  for d in depths:
    if not 0.0 <= d <= 1.0:
      raise ValueError(f"depths must lie in [0, 1], got {d}")
  return [{"case": f"L={n}/depth={d:g}/seed={s}", "length": int(n), "depth": float(d),
           "seed": int(s)} for n in lengths for d in depths for s in range(seeds)]


def key_for_seed(seed: int) -> int:
  return random.Random(seed).randint(*P.KEY_RANGE)


def haystack_prompt(tokenizer, haystack: str, n_tokens: int, depth: float, key: int,
                    needle_template: str = P.key_line("{key}")):
  """Prompt ids (exactly n_tokens, BOS as the tokenizer adds it) with the needle at depth."""
  enc = lambda t, special=False: list(tokenizer(t, add_special_tokens=special)["input_ids"])
  head = enc(P.TASK + "\n", special=True)
  needle = enc("\n" + needle_template.replace("{key}", str(key)) + "\n")
  tail = enc("\n" + P.QUESTION)
  hay = enc(haystack)
  room = n_tokens - len(head) - len(needle) - len(tail)
  if room < 1:
    raise ValueError(f"length {n_tokens} leaves no room for the haystack")
  if not hay:
    raise ValueError("the haystack text has no tokens")
  hay = (hay * (room // len(hay) + 1))[:room]
  cut = int(round(room * depth))
  return np.asarray(head + hay[:cut] + needle + hay[cut:] + tail, np.int32), str(key)


def case_prompt(tokenizer, case: dict, haystack: str | None = None,
                needle_template: str | None = None):
  key = key_for_seed(case["seed"])
  if haystack is None and needle_template is None:
    return P.make_passkey_prompt(tokenizer, case["length"], depth=case["depth"], key=key)
  if haystack is None:
    raise ValueError("--needle_template needs --haystack (the official filler keeps its line)")
  return haystack_prompt(tokenizer, haystack, case["length"], case["depth"], key,
                         needle_template or P.key_line("{key}"))


def run_case(setup, tokenizer, case: dict, haystack=None, needle_template=None) -> dict:
  from focus_jax.generation.modes import generate
  ids, answer = case_prompt(tokenizer, case, haystack, needle_template)
  n = P.answer_token_count(tokenizer, answer)
  gen = generate(setup, ids, n, stop_at_eos=False)
  out = tokenizer.decode([int(t) for t in gen.tokens[:n]], skip_special_tokens=True)
  return {"length": case["length"], "depth": case["depth"], "seed": case["seed"],
          "tokens": int(len(ids)), "key": answer, "output": out,
          "correct": bool(P.is_correct(tokenizer, gen.tokens[:n], answer))}


def summarize(rows) -> dict:
  """Accuracy overall, per length and per (length, depth)."""
  by_len, grid = {}, {}
  for r in rows:
    by_len.setdefault(str(r["length"]), []).append(r["correct"])
    grid.setdefault(f"{r['length']}@{r['depth']:g}", []).append(r["correct"])
  mean = lambda v: sum(v) / len(v)
  return {"accuracy": mean([r["correct"] for r in rows]) if rows else None,
          "by_length": {k: mean(v) for k, v in by_len.items()},
          "grid": {k: mean(v) for k, v in grid.items()}}
