"""Passkey retrieval, the official protocol of SelfExtend / FocusLLM.

A pass key line is hidden at some depth of repeated filler text, between the
task line and the question:

  {task}\n{filler prefix}\n{pass key line}\n{filler suffix}\n{question}

The model greedily decodes exactly as many tokens as the answer takes in
context (for most tokenizers a space token plus the digits) and is right on an
exact match. Keys are random integers in [1, 50000].

  ids, answer = make_passkey_prompt(tokenizer, 16384, depth=0.5, key=None, seed=0)
  n = answer_token_count(tokenizer, answer)
  correct = is_correct(tokenizer, generated_ids[:n], answer)
"""
from __future__ import annotations

import random

import numpy as np

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize them. I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
KEY_RANGE = (1, 50000)


def key_line(key: int) -> str:
  return f"The pass key is {key}. Remember it. {key} is the pass key."


def passkey_text(n_filler: int, depth: float, key: int) -> str:
  """The prompt text with n_filler filler sentences, the key line after a `depth` share."""
  before = int(round(n_filler * depth))
  prefix = " ".join([FILLER] * before)
  suffix = " ".join([FILLER] * (n_filler - before))
  return "\n".join([TASK, prefix, key_line(key), suffix, QUESTION])


def _encode(tokenizer, text: str) -> list[int]:
  return list(tokenizer(text)["input_ids"])


def make_passkey_prompt(tokenizer, n_tokens: int, depth: float | None = None,
                        key: int | None = None, seed: int = 0):
  """Prompt ids (int32, at most n_tokens, within one filler sentence of it) and the answer.

  depth: share of the filler before the key line, in [0, 1]; key: the pass key.
  Either drawn from `seed` when None (depth uniform, key uniform in [1, 50000]).
  The tokenizer's own defaults apply (a BOS is added only if it adds one).
  Returns (ids, answer) with answer the key as a string.
  """
  rng = random.Random(seed)
  if key is None:
    key = rng.randint(*KEY_RANGE)
  if depth is None:
    depth = rng.random()
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth must lie in [0, 1], got {depth}")
  fixed = len(_encode(tokenizer, passkey_text(0, depth, key)))
  if n_tokens <= fixed:
    raise ValueError(f"n_tokens={n_tokens} leaves no room for filler (the bare prompt takes "
                     f"{fixed} tokens)")
  per = len(_encode(tokenizer, passkey_text(64, 0.0, key))) - fixed
  per = max(per / 64, 1.0)
  n = int((n_tokens - fixed) / per)
  ids = _encode(tokenizer, passkey_text(n, depth, key))
  while len(ids) > n_tokens and n > 0:  # the estimate overshot: step down
    n -= max(1, int((len(ids) - n_tokens) / per))
    ids = _encode(tokenizer, passkey_text(n, depth, key))
  while True:  # grow while the next sentence still fits
    more = _encode(tokenizer, passkey_text(n + 1, depth, key))
    if len(more) > n_tokens:
      break
    n, ids = n + 1, more
  return np.asarray(ids, np.int32), str(key)


def answer_token_count(tokenizer, answer: str) -> int:
  """Tokens the answer takes right after the question (e.g. ' ' + digits)."""
  return len(_encode(tokenizer, f"{QUESTION} {answer}")) - len(_encode(tokenizer, QUESTION))


def is_correct(tokenizer, generated, answer: str) -> bool:
  """Exact match of the decoded generation (surrounding spaces dropped) with the key."""
  return tokenizer.decode([int(t) for t in generated], skip_special_tokens=True).strip() == answer
