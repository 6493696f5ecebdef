"""InfiniteBench: reader, prompts, new-token limits and labels (OpenBMB/InfiniteBench src/).

Data: DATA_DIR/<task>.jsonl in the published format (id, context, input,
answer, options). Prompts are the repository's templates for open
completion models (`yarn_mistral_templates` in src/prompt.py, the ones its
eval_yarn_mistral.py uses); new-token limits DATA_NAME_TO_MAX_NEW_TOKENS of
src/eval_utils.py; labels as its `get_answer` (choice tasks: [option text,
letter]); inputs cut from the middle to max_length tokens (`truncate_input`).
Pred files are OUT/infinitebench/preds_<task>.jsonl with the fields its
compute_scores.py reads (prediction, ground_truth).
"""
from __future__ import annotations

from pathlib import Path
import re

from focus_jax.eval.longbench import truncate_middle
from focus_jax.eval.results import DataError, read_jsonl

TEMPLATES = {
    "passkey": "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there.\n\n{context}\n\n{input}\n\nThe pass key is",
    "number_string": "There is an important info hidden inside a lot of irrelevant text. Find it. I will quiz you about the important information there.\n\n{context}\n\n{input}\n\nThe sequence of digits is",
    "kv_retrieval": "Extract the value corresponding to the specified key in the JSON object below.\n\n{context}\n\n{input}",
    "longbook_choice_eng": "Read the book and answer the question.\n\n{context}\n\nQuestion: {question}\nA. {OPTION_A}\nB. {OPTION_B}\nC. {OPTION_C}\nD. {OPTION_D}\n\nThe letter of the correct answer is",
    "longbook_qa_eng": "Read the book and answer the question. Be very concise in your answer.\n\n{context}\n\nQuestion: {question}\nAnswer:",
    "longbook_sum_eng": "Summarize the book below.\n\n{context}\n\nSummary:",
    "math_find": "{prefix}\n\n{context}\n\n{input}",
    "code_debug": "Following is a Python code where exactly one of the functions/methods has a deliberate error that makes it crash.\n\n{context}\n\nOptions:\nA. {OPTION_A}\nB. {OPTION_B}\nC. {OPTION_C}\nD. {OPTION_D}\n\nThe correct option is:",
}
MAX_NEW_TOKENS = {
    "passkey": 6, "number_string": 12, "kv_retrieval": 50, "longbook_choice_eng": 40,
    "longbook_qa_eng": 40, "longbook_sum_eng": 1200, "math_find": 3, "code_debug": 5,
}
DEFAULT_TASKS = ("passkey", "number_string", "kv_retrieval", "longbook_choice_eng", "math_find",
                 "code_debug")
CHOICE_TASKS = ("longbook_choice_eng", "code_debug")


def read_task(data_dir, task: str) -> list[dict]:
  if task not in TEMPLATES:
    raise ValueError(f"unknown InfiniteBench task {task!r}; known: {', '.join(TEMPLATES)}")
  path = Path(data_dir) / f"{task}.jsonl"
  need = ("context", "input", "answer") + (("options",) if task in CHOICE_TASKS else ())
  rows = read_jsonl(path, required=need)
  for n, row in enumerate(rows, 1):
    try:
      label(task, row)
      build_prompt(task, row)
    except (ValueError, IndexError, KeyError, TypeError) as e:
      raise DataError(f"{path}: sample {n}: {e}") from None
  return rows


def build_prompt(task: str, eg: dict) -> str:
  t = TEMPLATES[task]
  if task in CHOICE_TASKS:
    opts = eg["options"]
    if len(opts) != 4:
      raise ValueError(f"expected 4 options, got {len(opts)}")
    return t.format(context=eg["context"], question=eg["input"], OPTION_A=opts[0],
                    OPTION_B=opts[1], OPTION_C=opts[2], OPTION_D=opts[3])
  if task == "math_find":
    found = re.findall(r"The .+ of", eg["input"])
    if not found:
      raise ValueError(f"cannot find the target number in {eg['input']!r}")
    prefix = f"What is {found[0].lower()[:-3]} in the following list?"
    return t.format(prefix=prefix, context=eg["context"], input=eg["input"])
  if task in ("longbook_qa_eng",):
    return t.format(context=eg["context"], question=eg["input"])
  return t.format(context=eg["context"], input=eg["input"])


def label(task: str, eg: dict):
  """The official get_answer: choice tasks give [option text, letter]."""
  ans = eg["answer"]
  if task not in CHOICE_TASKS:
    return ans
  if isinstance(ans, str):
    ans = [ans]
  if not isinstance(ans, list):
    raise ValueError(f"'answer' must be a string or a list, got {type(ans).__name__}")
  if len(ans) == 2 and ans[1] in ("A", "B", "C", "D"):
    return ans
  if len(ans) == 1 and ans[0] in eg["options"]:
    return [ans[0], "ABCD"[eg["options"].index(ans[0])]]
  raise ValueError(f"answer {ans!r} is not one of the options")


def prompt_ids(tokenizer, task: str, eg: dict, max_length: int) -> list[int]:
  return truncate_middle(tokenizer(build_prompt(task, eg))["input_ids"], max_length)


def predict(setup, tokenizer, task: str, eg: dict, max_length: int) -> dict:
  """The model's answer to one sample: {"prompt_tokens", "pred"} (greedy, the task's limit)."""
  from focus_jax.generation.modes import generate
  ids = prompt_ids(tokenizer, task, eg, max_length)
  gen = generate(setup, ids, MAX_NEW_TOKENS[task], eos_ids=list(setup.cfg.eos_token_ids))
  return {"prompt_tokens": len(ids),
          "pred": tokenizer.decode([int(t) for t in gen.tokens], skip_special_tokens=True)}


def score(task: str, egs, preds):
  """The official score of a task's predictions (0-100; None without samples)."""
  from focus_jax.eval import metrics
  vals = [metrics.infinitebench_score_one(task, p, label(task, eg)) for p, eg in zip(preds, egs)]
  return round(100 * sum(vals) / len(vals), 2) if vals else None


def pred_row(task: str, eg: dict, prediction: str, index: int) -> dict:
  return {"id": eg.get("id", index), "prediction": prediction, "ground_truth": label(task, eg)}
