"""RULER's synthetic tasks (github.com/NVIDIA/RULER), generated offline, scored by its metric.

From the repository's files:
  scripts/data/synthetic/constants.py    TEMPLATES: templates, answer prefixes, tokens to generate
  scripts/synthetic.yaml                 TASKS: niah_single_1..3, niah_multikey_1..3,
                                         niah_multivalue, niah_multiquery, vt, cwe, fwe
  scripts/data/synthetic/niah.py         NEEDLE, the noise / essay / needle haystacks, DEPTHS,
                                         the query and the single-needle wording
  scripts/data/synthetic/variable_tracking.py    chains "VAR X = 12345", "VAR Y = VAR X ",
                                         one in-context example (3-letter names, 500 tokens)
  scripts/data/synthetic/common_words_extraction.py  numbered list, common x30 / uncommon x3,
                                         one few-shot example
  scripts/data/synthetic/freq_words_extraction.py    coded 6-letter words with zeta(alpha)
                                         counts, '...' the most frequent (noise) word
  scripts/eval/synthetic/constants.py    string_match_all (every synthetic task), string_match_part
  scripts/eval/evaluate.py               postprocess_pred
  scripts/pred/call_api.py               the model reads input + answer_prefix

The prompt is a task's template with its answer prefix (RULER's `base` model
template); the model continues it for at most `tokens_to_generate` tokens.
Length budget as in RULER: the haystack size is the largest for which
tokens(prompt) + tokens_to_generate <= length (a search over the size), counted
with the evaluated model's tokenizer, BOS included.

Offline differences, all forced by what is not here:
- Words (niah keys, cwe) are RULER's: the noun, adjective and verb lists of
  `wonderwords` (requirements.txt). cwe lists longer than those words draw from
  niah's adjective-noun keys (RULER: json/english_words.json, a Git LFS object).
- Essay haystack: the Paul Graham essays are not here; any text takes their place
  (--haystack; default the embedded Shakespeare plays), split into sentences at
  ". ", "! ", "? " (RULER: nltk's sent_tokenize, whose model is not here either).
- Randomness: sample i of a task at length L draws from random.Random("task/L/i")
  and its haystack size is searched alone (RULER: one seeded stream per file);
  RULER's fixed-seed shuffles (random.Random(42)) are kept.
"""
from __future__ import annotations

import bisect
import collections.abc
import functools
import random
import re
import string
import uuid

import numpy as np

SEED = 42   # RULER's --random_seed default: its fixed-seed shuffles use it
TEMPLATES = {   # scripts/data/synthetic/constants.py
    "niah": {
        "tokens_to_generate": 128,
        "template": "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        "answer_prefix": " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    },
    "variable_tracking": {
        "tokens_to_generate": 30,
        "template": "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.",
        "answer_prefix": " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned the value {query}, they are: ",
    },
    "common_words_extraction": {
        "tokens_to_generate": 120,
        "template": "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
        "answer_prefix": " Answer: The top 10 words that appear most often in the list are:",
    },
    "freq_words_extraction": {
        "tokens_to_generate": 50,
        "template": "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?",
        "answer_prefix": " Answer: According to the coded text above, the three most frequently appeared words are:",
    },
}


def _niah(hay, k, v, nk=1, nv=1, nq=1):
  return ("niah", dict(type_haystack=hay, type_needle_k=k, type_needle_v=v, num_needle_k=nk,
                       num_needle_v=nv, num_needle_q=nq))


TASKS = {   # scripts/synthetic.yaml
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", nk=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", nv=4),
    "niah_multiquery": _niah("essay", "words", "numbers", nq=4),
    "vt": ("variable_tracking", dict(type_haystack="noise", num_chains=1, num_hops=4)),
    "cwe": ("common_words_extraction", dict(freq_cw=30, freq_ucw=3, num_cw=10)),
    "fwe": ("freq_words_extraction", dict(alpha=2.0)),
}
NIAH_TASKS = tuple(t for t in TASKS if t.startswith("niah"))
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DEPTHS = list(np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int))


def needs_essay(task: str) -> bool:
  return TASKS[task][1].get("type_haystack") == "essay"


def max_new_tokens(task: str) -> int:
  return TEMPLATES[TASKS[task][0]]["tokens_to_generate"]


def _full_template(kind: str) -> str:
  return TEMPLATES[kind]["template"] + TEMPLATES[kind]["answer_prefix"]


# ----------------------------------------------------------------------------- words

@functools.lru_cache(maxsize=None)
def _wonderwords():
  from wonderwords import random_word as rw
  read = rw._get_words_from_text_file   # what RULER calls
  return read("nounlist.txt"), read("adjectivelist.txt"), read("verblist.txt")


class PairWords(collections.abc.Sequence):
  """sorted({f"{a}-{n}" for a in adjs for n in nouns}) as a sequence, without building it.

  The pairs of one adjective are one sorted run; runs whose ranges overlap (e.g. "blue"
  and "blue-eyed") are merged and sorted together; the runs, in order, are the list."""

  def __init__(self, adjs, nouns):
    nouns = sorted(set(nouns))
    spans = sorted((f"{a}-{nouns[0]}", f"{a}-{nouns[-1]}", a) for a in set(adjs))
    groups = []
    for lo, hi, a in spans:
      if groups and lo <= groups[-1][1]:
        groups[-1][1] = max(groups[-1][1], hi)
        groups[-1][2].append(a)
      else:
        groups.append([lo, hi, [a]])
    self._nouns, self._blocks, self._starts, total = nouns, [], [], 0
    for _, _, group in groups:
      block = group[0] if len(group) == 1 else sorted({f"{a}-{n}" for a in group for n in nouns})
      self._blocks.append(block)
      self._starts.append(total)
      total += len(nouns) if len(group) == 1 else len(block)
    self._len = total

  def __len__(self):
    return self._len

  def __getitem__(self, i):
    if not 0 <= i < self._len:
      raise IndexError(i)
    b = bisect.bisect_right(self._starts, i) - 1
    block, j = self._blocks[b], i - self._starts[b]
    return f"{block}-{self._nouns[j]}" if isinstance(block, str) else block[j]


@functools.lru_cache(maxsize=None)
def niah_words() -> PairWords:
  """niah.py: every adjective-noun pair, sorted (6.2M strings, indexed lazily)."""
  nouns, adjs, _ = _wonderwords()
  return PairWords(adjs, nouns)


@functools.lru_cache(maxsize=None)
def cwe_words() -> list[str]:
  """common_words_extraction.py: nouns + adjectives + verbs, sorted, shuffled by the seed."""
  nouns, adjs, verbs = _wonderwords()
  words = sorted(set(nouns + adjs + verbs))
  random.Random(SEED).shuffle(words)
  return words


def _random(rng, kind: str) -> str:
  if kind == "numbers":
    return str(rng.randint(10 ** 6, 10 ** 7 - 1))
  if kind == "words":
    return rng.choice(niah_words())
  if kind == "uuids":
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
  raise ValueError(f"unknown needle type {kind!r}")


def split_sentences(text: str) -> list[str]:
  return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


# ----------------------------------------------------------------------------- generators
# Each returns build(n) -> (prompt text, answers): deterministic in n (a fresh rng per call).

def _niah_builder(a: dict, seed: str, haystack_words):
  nk, nv, nq = max(a["num_needle_k"], a["num_needle_q"]), a["num_needle_v"], a["num_needle_q"]
  tv = a["type_needle_v"]

  def build(n):
    rng = random.Random(seed)
    keys, values, needles = [], [], []
    for _ in range(nk):
      keys.append(_random(rng, a["type_needle_k"]))
      values.append([])
      for _ in range(nv):
        values[-1].append(_random(rng, tv))
        needles.append(NEEDLE.format(type_needle_v=tv, key=keys[-1], value=values[-1][-1]))
    random.Random(SEED).shuffle(needles)
    if a["type_haystack"] == "essay":
      words = haystack_words * (n // len(haystack_words) + 1)
      sents = split_sentences(" ".join(words[:n]))
      cuts = ([0] + sorted(int(len(sents) * (d / 100)) for d in rng.sample(DEPTHS, len(needles)))
              + [len(sents)])
      parts = []
      for i in range(1, len(cuts)):
        parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
        if i - 1 < len(needles):
          parts.append(needles[i - 1])
      context = " ".join(parts)
    else:
      if a["type_haystack"] == "noise":
        sentences = [NOISE] * n
      else:   # "needle": distractor needles
        sentences = [NEEDLE.format(type_needle_v=tv, key=_random(rng, a["type_needle_k"]),
                                   value=_random(rng, tv)) for _ in range(n)]
      for index, needle in zip(sorted(rng.sample(range(n), len(needles)), reverse=True), needles):
        sentences.insert(index, needle)
      context = "\n".join(sentences)
    picked = rng.sample(range(nk), nq)
    queries = [keys[i] for i in picked]
    answers = [x for i in picked for x in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, type_v = _full_template("niah"), tv
    if nq * nv == 1:
      for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        template = template.replace(old, new)
      type_v = type_v[:-1]
    return template.format(type_needle_v=type_v, context=context, query=query), answers
  return build


def _vt_sample(rng, n, num_chains, num_hops, is_icl=False):
  k = 3 if is_icl else 5
  num_hops = min(10, num_hops) if is_icl else num_hops
  names = ["".join(rng.choices(string.ascii_uppercase, k=k)) for _ in range((num_hops + 1)
                                                                           * num_chains)]
  while len(set(names)) < num_chains * (num_hops + 1):
    names.append("".join(rng.choices(string.ascii_uppercase, k=k)))
  var_sets, chains = [], []
  for i in range(0, len(names), num_hops + 1):
    v = names[i:i + num_hops + 1]
    var_sets.append(v)
    value = "12345" if is_icl else str(rng.randrange(10000, 99999))
    chains.append([f"VAR {v[0]} = {value}"] + [f"VAR {v[j + 1]} = VAR {v[j]} "
                                               for j in range(num_hops)])
  value = chains[0][0].split("=")[-1].strip()
  sentences = [NOISE] * n
  for chain in chains:
    positions = sorted(rng.sample(range(len(sentences)), len(chain)))
    for j, pos in enumerate(positions):
      sentences.insert(pos + j, chain[j])
  context = "\n".join(sentences).replace(". \n", ".\n")
  text = _full_template("variable_tracking").format(context=context, query=value,
                                                    num_v=num_hops + 1)
  return text, var_sets[0]


def _vt_builder(a: dict, seed: str, count):
  hops, chains = a["num_hops"], a["num_chains"]
  icl_seed = seed + "/icl"
  icl_build = lambda n: _vt_sample(random.Random(icl_seed), n, chains, hops, is_icl=True)
  n_icl = fit(icl_build, count, 500, lo=5, strict=False)   # RULER: a 500-token example
  text, answer = icl_build(n_icl)
  icl = text + " " + " ".join(answer) + "\n"

  def build(n):
    rng = random.Random(seed)
    example = icl
    for item in icl.strip().split()[-hops - 1:]:   # randomize_icl
      example = example.replace(item, "".join(rng.choices(string.ascii_uppercase, k=len(item))))
    example = example.replace("12345", str(rng.randrange(10000, 99999)))
    text, answer = _vt_sample(rng, n, chains, hops)
    return example + "\n" + text, answer
  return build


def _cwe_example(rng, num_words, common_repeats, uncommon_repeats, common_nums):
  pool = cwe_words() if num_words <= len(cwe_words()) else niah_words()
  full = rng.sample(pool, num_words)
  common, uncommon = full[:common_nums], full[common_nums:]
  word_list = common * int(common_repeats) + uncommon * int(uncommon_repeats)
  random.Random(SEED).shuffle(word_list)
  return " ".join(f"{i + 1}. {w}" for i, w in enumerate(word_list)), common


def _cwe_builder(a: dict, seed: str, length: int):
  cn, template = a["num_cw"], _full_template("common_words_extraction")

  def build(n):
    rng = random.Random(seed)
    if length < 4096:
      shots = [_cwe_example(rng, 20, 3, 1, cn)]
      context, answer = _cwe_example(rng, n, 6, 1, cn)
    else:
      shots = [_cwe_example(rng, 40, 10, 3, cn)]
      context, answer = _cwe_example(rng, n, a["freq_cw"], a["freq_ucw"], cn)
    shots = "\n".join(template.format(num_cw=cn, context=c, query="") + " "
                      + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ans)) for c, ans in shots)
    return shots + "\n" + template.format(num_cw=cn, context=context, query=""), answer
  return build


def _fwe_builder(a: dict, seed: str, length: int):
  from scipy.special import zeta
  alpha, size = a["alpha"], (length - max_new_tokens("fwe")) // 50
  if size < 4:
    raise ValueError(f"length {length} is too short for fwe (a vocabulary of {size} words)")
  rng = random.Random(seed)
  vocab = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(size)]
  while len(set(vocab)) < size:
    vocab.append("".join(rng.choices(string.ascii_lowercase, k=6)))
  vocab = sorted(set(vocab))
  random.Random(SEED).shuffle(vocab)
  vocab[0] = "..."   # the top-ranked word is noise
  template = _full_template("freq_words_extraction")

  def build(n):
    counts = (n * (np.arange(1, len(vocab) + 1) ** -alpha) / zeta(alpha)).astype(int)
    words = [w for w, c in zip(vocab, counts) for _ in range(c)]
    random.Random(SEED).shuffle(words)
    return template.format(context=" ".join(words), query=""), vocab[1:4]
  return build


# ----------------------------------------------------------------------------- budget

def fit(build, count, budget: int, lo: int = 1, strict: bool = True) -> int:
  """The largest n >= lo with count(build(n)[0]) <= budget (RULER's haystack search).

  With strict, a budget that even n = lo exceeds is a ValueError; otherwise lo."""
  tokens = lambda n: count(build(n)[0])
  t_lo = tokens(lo)
  if t_lo > budget:
    if strict:
      raise ValueError(f"{budget} tokens are too few for this task ({t_lo} with the "
                       "smallest haystack)")
    return lo
  per = max((tokens(lo + 8) - t_lo) / 8, 1e-3)
  good, bad = lo, lo + int((budget - t_lo) / per) + 2   # just past the linear estimate
  step = max(bad // 64, 1)
  while tokens(bad) <= budget:   # the estimate fell short: widen upwards
    good, bad, step = bad, bad + step, 2 * step
  probe = max(good, bad - step)
  while probe > good and tokens(probe) > budget:   # close in from above
    bad, probe, step = probe, max(good, probe - 2 * step), 2 * step
  good = max(good, probe)
  while bad - good > 1:
    mid = (good + bad) // 2
    good, bad = (mid, bad) if tokens(mid) <= budget else (good, mid)
  return good


def make_sample(task: str, length: int, index: int, count, haystack: str | None = None) -> dict:
  """Sample `index` of a task at `length` tokens: {"prompt", "answers", "max_new_tokens"}.

  count(text) -> tokens of the prompt as the model gets it; haystack: the essay text."""
  if task not in TASKS:
    raise ValueError(f"unknown RULER task {task!r}; known: {', '.join(TASKS)}")
  kind, a = TASKS[task]
  seed = f"{task}/{length}/{index}"
  gen = max_new_tokens(task)
  if kind == "niah":
    words = None
    if a["type_haystack"] == "essay":
      if not haystack or not haystack.strip():
        raise ValueError(f"{task} needs an essay haystack text")
      words = re.sub(r"\s+", " ", haystack).split(" ")
    build = _niah_builder(a, seed, words)
    lo = a["num_needle_k"] * a["num_needle_v"] if a["type_haystack"] != "essay" else 1
  elif kind == "variable_tracking":
    build, lo = _vt_builder(a, seed, count), a["num_hops"] + 1
  elif kind == "common_words_extraction":
    build, lo = _cwe_builder(a, seed, length), a["num_cw"]
  else:
    build, lo = _fwe_builder(a, seed, length), 1
  try:
    n = fit(build, count, length - gen, lo=max(lo, 1))
  except ValueError as e:
    raise ValueError(f"RULER {task} does not fit {length} tokens: {e}") from None
  prompt, answers = build(n)
  return {"task": task, "length": length, "index": index, "prompt": prompt,
          "answers": list(answers), "max_new_tokens": gen, "haystack_size": n}


# ----------------------------------------------------------------------------- scoring

def postprocess_pred(pred: str) -> str:
  """scripts/eval/evaluate.py: strip, control characters to newlines."""
  return re.sub(r"[\x00-\x1f]", "\n", pred.strip()).strip()


def string_match_part(preds, refs) -> float:
  score = sum(max(1.0 if r.lower() in p.lower() else 0.0 for r in ref)
              for p, ref in zip(preds, refs)) / len(preds) * 100
  return round(score, 2)


def string_match_all(preds, refs) -> float:
  score = sum(sum(1.0 if r.lower() in p.lower() else 0.0 for r in ref) / len(ref)
              for p, ref in zip(preds, refs)) / len(preds) * 100
  return round(score, 2)


METRIC = {"niah": string_match_all, "variable_tracking": string_match_all,
          "common_words_extraction": string_match_all, "freq_words_extraction": string_match_all}


def score(task: str, preds, refs) -> float:
  return METRIC[TASKS[task][0]]([postprocess_pred(p) for p in preds], refs)


# ----------------------------------------------------------------------------- evaluation

def parse_tasks(names) -> list[str]:
  names = list(names or TASKS)
  bad = [n for n in names if n not in TASKS]
  if bad:
    raise ValueError(f"unknown --ruler_tasks {', '.join(bad)}; known: {', '.join(TASKS)}")
  return names


def make_cases(tasks, lengths, samples: int) -> list[dict]:
  if samples < 1:
    raise ValueError(f"samples per task and length must be >= 1, got {samples}")
  return [{"case": f"{t}/L={n}/i={i}", "task": t, "length": int(n), "index": i}
          for t in tasks for n in lengths for i in range(samples)]


def run_case(setup, tokenizer, case: dict, haystack: str | None = None) -> dict:
  from focus_jax.generation.modes import generate
  s = make_sample(case["task"], case["length"], case["index"],
                  lambda t: len(tokenizer(t)["input_ids"]), haystack)
  ids = tokenizer(s["prompt"])["input_ids"]
  gen = generate(setup, ids, s["max_new_tokens"], eos_ids=list(setup.cfg.eos_token_ids))
  pred = tokenizer.decode([int(t) for t in gen.tokens], skip_special_tokens=True)
  return {"task": case["task"], "length": case["length"], "index": case["index"],
          "tokens": len(ids), "answers": s["answers"], "pred": pred,
          "score": score(case["task"], [pred], [s["answers"]])}


def summarize(rows) -> dict:
  """by_task[task][length]: the official metric over the cell's samples (0-100);
  by_length[length]: the mean over tasks; average: the mean of by_length."""
  cells = {}
  for r in rows:
    cells.setdefault(r["task"], {}).setdefault(str(r["length"]), []).append(r)
  by_task = {t: {n: score(t, [r["pred"] for r in rs], [r["answers"] for r in rs])
                 for n, rs in sorted(c.items(), key=lambda kv: int(kv[0]))}
             for t, c in cells.items()}
  lengths = sorted({n for c in by_task.values() for n in c}, key=int)
  by_length = {n: round(float(np.mean([c[n] for c in by_task.values() if n in c])), 2)
               for n in lengths}
  return {"by_task": by_task, "by_length": by_length,
          "average": round(float(np.mean(list(by_length.values()))), 2) if by_length else None}
