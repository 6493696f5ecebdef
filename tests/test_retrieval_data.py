"""Fact-retrieval documents (data.retrieval) mixed into FocusLLM training samples.

Checked by decoding the byte-tokenised tasks: the target is one digit of the
asked fact's number, the local input ends with the question up to that
digit, the fact with the whole number is in the memory rows and nowhere in
the local input, and samples that are not turned into fact documents are
exactly the samples built without the mechanism.
"""
import re

import numpy as np
import pytest

from focus_jax.data.retrieval import FactInserter
from focus_jax.data.samples import CONTINUATION, REPETITION, SampleSpec, make_tasks
from focus_jax.text import ByteTokenizer

TOK = ByteTokenizer()
FACTS = FactInserter(lambda s: TOK.encode(s, add_special_tokens=False))
PROSE = ("Now is the winter of our discontent made glorious summer by this sun of York; "
         "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried. ")


def _spec(frac, span_min=30):
  return SampleSpec(local_window=128, chunk_sizes=(64,), fragment_max=32, span_min=span_min,
                    max_len=768, bos_id=TOK.bos_token_id, retrieval_frac=frac)


def _window(n=700):
  return np.asarray(TOK.encode(PROSE * 10)[1:n + 1], np.int32)


def _text(ids):
  return TOK.decode([i for i in np.asarray(ids).tolist() if i != TOK.bos_token_id])


def test_fact_documents_put_the_answer_only_in_the_memory():
  spec = _spec(1.0, span_min=118)   # spans long enough to hold the whole question
  checked = spaces = 0
  for index in range(40):
    tasks = make_tasks(_window(), spec, 0, index, 1, FACTS)
    cont, rep = tasks
    assert cont["kind"] == CONTINUATION and rep["kind"] == REPETITION
    local = _text(cont["local"])
    target = TOK.decode([int(cont["targets"][0])])
    m = re.search(r"(?:[Tt]he ([a-z ]+) of (\w+)|(\w+)'s ([a-z ]+)) is( ?)(\d*)$", local)
    assert m, local[-80:]
    # the target is a digit of the number, or the space before it (then no digit is local)
    assert target.isdigit() or (target == " " and not m.group(5) and not m.group(6))
    attr, name = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
    memory = "".join(_text(r[:64]) for r in cont["rows"])   # the rows' chunk part
    facts = re.findall(r"(?:[Tt]he %s of %s|%s's %s) is (\d+)\." % (attr, name, name, attr), memory)
    assert len(facts) == 1, (attr, name)
    value, prefix = facts[0], m.group(6)
    assert value.startswith(prefix) and (value[len(prefix)] == target or target == " ")
    assert value not in local
    assert len(cont["local"]) <= spec.local_len
    checked += 1
    spaces += target == " "
  assert checked == 40 and spaces > 0


def test_samples_without_facts_are_unchanged():
  x = _window()
  half = _spec(0.5)
  plain = _spec(0.0)
  changed = 0
  for index in range(30):
    ref = make_tasks(x, plain, 3, index, 2)
    got = make_tasks(x, half, 3, index, 2, FACTS)
    same = all(np.array_equal(a["local"], b["local"]) and len(a["rows"]) == len(b["rows"])
               and all(np.array_equal(r, s) for r, s in zip(a["rows"], b["rows"]))
               for a, b in zip(ref, got))
    changed += not same
  assert 5 <= changed <= 25   # about half of the 30 samples became fact documents
  for index in range(5):
    ref = make_tasks(x, plain, 3, index, 2)
    got = make_tasks(x, plain, 3, index, 2, FACTS)
    assert all(np.array_equal(a["local"], b["local"]) for a, b in zip(ref, got))


def test_bad_settings():
  with pytest.raises(ValueError, match="retrieval_frac"):
    _spec(1.5)
  # a fact document ends at its answer: K > 1 targets would run past its end
  with pytest.raises(ValueError, match="needs target_tokens = 1"):
    SampleSpec(local_window=128, chunk_sizes=(64,), span_min=30, target_tokens=4,
               max_len=768, retrieval_frac=0.5)
  with pytest.raises(ValueError, match="FactInserter"):
    make_tasks(_window(), _spec(1.0), 0, 0, 1)
  # too short to hold the facts a local window before the question: a plain sample
  short = _window(200)
  assert len(make_tasks(short, _spec(1.0), 0, 0, 1, FACTS)) == 2
