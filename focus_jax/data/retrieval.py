"""Synthetic fact retrieval mixed into prose windows (a training lever for the memory).

`FactInserter(encode)` turns a prose window x into a retrieval document of the
same length: 1-4 facts ("The locker code of Antonio is 48213.") inserted at
random depths of the part that will be memory, and at the end a question that
restates one fact up to its number. The task's target is one token of that
number (or the space before it), so its only source is the memory (the fact lies more than a local
window before it). The task is a continuation task (memory = the text before
the span), drawn by `samples.make_tasks` when `SampleSpec.retrieval_frac` > 0.

The wording shares nothing with the passkey evaluation (no "pass key", none
of its filler sentences or its question line): retrieval is tested there on
text that training never showed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

NAMES = ("Antonio", "Beatrice", "Cassio", "Desdemona", "Emilia", "Ferdinand", "Gonzalo",
         "Helena", "Imogen", "Julia", "Katharina", "Lorenzo", "Miranda", "Nerissa", "Orsino",
         "Portia", "Quince", "Rosalind", "Sebastian", "Titania", "Ursula", "Valentine",
         "Viola", "Angelo", "Bianca", "Claudio", "Duncan", "Edmund", "Francisco", "Gratiano")
ATTRS = ("locker code", "room number", "account number", "badge number", "order number",
         "ticket number", "safe combination", "phone extension", "serial number",
         "house number", "secret number", "access code", "seat number", "licence number")
FACTS = ("The {a} of {n} is {v}.", "{n}'s {a} is {v}.", "Note that the {a} of {n} is {v}.",
         "Write it down: the {a} of {n} is {v}.")
QUESTIONS = ("Question: what is the {a} of {n}? Answer: the {a} of {n} is {v}",
             "Recall the {a} of {n}. The {a} of {n} is {v}",
             "Tell me {n}'s {a}. {n}'s {a} is {v}")


class FactInserter:
  """Callable (x, rng, local_window) -> (document, target index) or None.

  encode: str -> token ids without special tokens. None is returned when x is
  too short to hold the facts a local window before the question.
  """

  def __init__(self, encode: Callable[[str], Sequence[int]]):
    self.encode = encode

  def _ids(self, text: str) -> np.ndarray:
    return np.asarray(self.encode(text), np.int32)

  def __call__(self, x: np.ndarray, rng: np.random.Generator, local_window: int):
    n_facts = int(rng.integers(1, 5))
    names = rng.choice(len(NAMES), n_facts, replace=False)
    attrs = rng.choice(len(ATTRS), n_facts, replace=True)
    values = [str(int(rng.integers(10 ** (d - 1), 10 ** d))) for d in rng.integers(3, 7, n_facts)]
    facts = [self._ids(" " + FACTS[rng.integers(len(FACTS))].format(
        a=ATTRS[a], n=NAMES[n], v=v) + " ") for n, a, v in zip(names, attrs, values)]
    ask = int(rng.integers(n_facts))
    q = QUESTIONS[rng.integers(len(QUESTIONS))].format(
        a=ATTRS[attrs[ask]], n=NAMES[names[ask]], v=values[ask])
    qa = self._ids(" " + q)
    head = self._ids(" " + q[:-len(values[ask])].rstrip())   # the question up to the number
    digits = len(qa) - len(head)
    if digits < 1 or not np.array_equal(qa[:len(head)], head):
      return None                                            # tokenizer merged across the cut
    body_len = len(x) - len(qa)
    room = body_len - local_window - sum(len(f) for f in facts)
    if room < 1:
      return None
    cuts = np.sort(rng.integers(0, room, n_facts))
    parts, prev = [], 0
    for c, f in zip(cuts, facts):
      parts += [x[prev:c], f]
      prev = c
    body = np.concatenate(parts + [x[prev:]])[:body_len]
    doc = np.concatenate([body, qa]).astype(np.int32)
    # any token of the answer as the tokenizer writes it after "is" (with SmolLM2's
    # tokenizer a lone space, then one token per digit): decoding must produce each
    target = len(body) + len(head) + int(rng.integers(digits))
    return doc, target
