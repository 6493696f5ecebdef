"""InfiniteBench's synthetic tasks at any length (github.com/OpenBMB/InfiniteBench,
data/construct_synthetic_dataset.py), in its published jsonl format (id, context, input,
answer, options), so that focus_jax.eval.infinitebench reads, prompts and scores them.

  passkey        noise * j + "The pass key is {key}. Remember it. {key} is the pass key.\\n"
                 + noise * (N - j); a key of 5 random digits; input "What is the pass key?"
  number_string  the same with "The sequence of digits is {key}. ..." and build_number_string's
                 10-digit key (5 random digits, then 5 times a digit doubled at a random place)
  kv_retrieval   'JSON data:\\n{"key": "value", ...}' of uuid4 pairs (the generator reads
                 lost-in-the-middle's kv records, uuid4 keys and values); input
                 '\\nKey: "K"\\nThe value associated with the specified key is: '
  math_find      str(list) of random integers in [0, 99] with generate_random_list's ranges for
                 the seven find tasks (largest ... median) and generate_math_qa's inputs

Size: the generator fixes the noise lines per target length for LLaMA's tokenizer (326 for 8K,
...); here the noise lines, pairs or list entries are the most for which the prompt
(focus_jax.eval.infinitebench's template, BOS included) plus the task's new tokens fit the
length in the evaluated model's tokenizer. Depth: sample i of n puts the needle after
round(N i / (n - 1)) noise lines (the generator: every `step` lines from 0 to N); kv_retrieval
asks pair int(i N / n) (its ans_id = int(cnt * nnoise / nsample)); math_find sample i is
task i mod 7. Randomness: random.Random("task/length/i") per sample.
"""
from __future__ import annotations

import json
from pathlib import Path
import random
import uuid

from focus_jax.eval import infinitebench as IB
from focus_jax.eval.ruler import fit

TASKS = ("passkey", "number_string", "kv_retrieval", "math_find")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
NEEDLES = {"passkey": "The pass key is {key}. Remember it. {key} is the pass key.\n",
           "number_string": "The sequence of digits is {key}. Remember it. {key} is the sequence "
                            "of digits.\n"}
QUESTIONS = {"passkey": "What is the pass key?", "number_string": "What is the sequence of digits?"}
MATH_FIND = ("largest number", "second largest number", "third largest number", "smallest number",
             "second smallest number", "third smallest number", "median")
MATH_INPUT = "You should answer with only one number, no other words. The {task} of the list is: "


def _key(rng, task: str) -> str:
  keys = [str(rng.randint(0, 9)) for _ in range(5)]
  if task == "number_string":
    for k in range(5):
      pos = rng.randint(0, 5 + k - 1)
      keys.insert(pos, keys[pos])
  return "".join(keys)


def _remove_top(values, top, times):
  """generate_random_list: the largest (or smallest) value removed `times` times over."""
  values = list(values)
  for _ in range(times):
    target = top(values)
    while target == top(values):
      values.remove(top(values))
  return top(values)


def math_find_list(rng, n: int, task: str, lo: int = 0, hi: int = 99):
  """(answer, list) of generate_random_list for a find task."""
  if task == "median":
    if rng.random() > 0.5:
      lo = rng.randint(lo, int(hi * 0.2))
    else:
      hi = rng.randint(int(hi * 0.8), hi)
  elif "largest" in task:
    hi = rng.randint(int(hi * 0.8), hi)
  else:
    lo = rng.randint(lo, int(hi * 0.2))
  values = [rng.randint(lo, hi) for _ in range(n)]
  if task == "median":
    s = sorted(values)
    ans = s[n // 2] if n % 2 == 1 else (s[n // 2] + s[n // 2 - 1]) / 2
  else:
    times = {"second": 1, "third": 2}.get(task.split()[0], 0)
    ans = _remove_top(values, max if "largest" in task else min, times)
  return ans, values


def _builder(task: str, seed: str, index: int, samples: int):
  def build(n):
    rng = random.Random(seed)
    if task in NEEDLES:
      key = _key(rng, task)
      j = n // 2 if samples == 1 else round(n * index / (samples - 1))
      context = NOISE * j + NEEDLES[task].replace("{key}", key) + NOISE * (n - j)
      eg = {"context": context, "input": QUESTIONS[task], "answer": [key]}
    elif task == "kv_retrieval":
      pairs = [(str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                str(uuid.UUID(int=rng.getrandbits(128), version=4))) for _ in range(n)]
      text = "JSON data:\n{"
      for k, v in pairs:
        text += "\"" + k + "\": \"" + v + "\", "
      key, value = pairs[min(int(index * n / samples), n - 1)]
      eg = {"context": text[:-2] + "}", "answer": [value],
            "input": "\nKey: \"" + key + "\"\nThe value associated with the specified key is: "}
    else:
      sub = MATH_FIND[index % len(MATH_FIND)]
      ans, values = math_find_list(rng, n, sub)
      eg = {"context": str(values), "input": MATH_INPUT.format(task=sub), "answer": [ans]}
    eg = {"id": index, **eg, "options": []}
    return IB.build_prompt(task, eg), eg
  return build


def make_task(tokenizer, task: str, length: int, samples: int) -> list[dict]:
  """`samples` rows of a task whose prompts fit `length` tokens (with the new tokens)."""
  if task not in TASKS:
    raise ValueError(f"no synthetic InfiniteBench task {task!r}; known: {', '.join(TASKS)}")
  if samples < 1:
    raise ValueError(f"samples per task and length must be >= 1, got {samples}")
  count = lambda text: len(tokenizer(text)["input_ids"])
  rows = []
  for i in range(samples):
    build = _builder(task, f"{task}/{length}/{i}", i, samples)
    try:
      n = fit(build, count, length - IB.MAX_NEW_TOKENS[task], lo=16 if task == "math_find" else 1)
    except ValueError as e:
      raise ValueError(f"InfiniteBench {task} does not fit {length} tokens: {e}") from None
    rows.append(build(n)[1])
  return rows


def write_tasks(data_dir, tokenizer, tasks, length: int, samples: int) -> None:
  """DATA_DIR/<task>.jsonl for each task; a file already there must hold the same rows."""
  from focus_jax.eval.results import write_jsonl
  for task in tasks:
    rows = make_task(tokenizer, task, length, samples)
    path = Path(data_dir) / f"{task}.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if path.exists():
      if path.read_text(encoding="utf-8") != text:
        raise ValueError(f"{path} holds other data than the generator gives; use another --out")
      continue
    write_jsonl(path, rows)
