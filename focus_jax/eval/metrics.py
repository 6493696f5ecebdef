"""LongBench and InfiniteBench metrics, as their official scripts define them.

LongBench (`metrics.py`, `eval.py`): every metric takes (prediction,
ground_truth, all_classes=...) and returns a float in [0, 1]; a sample scores
the max over its gold answers, a dataset 100 x the mean (`longbench_score`).

Libraries: ROUGE-L is the `rouge` package's summary-level ROUGE-L F (the
library LongBench calls: text split into sentences at ".", tokens at
whitespace, no lower-casing, and words counted once each: its n-gram
collections are sets); rouge-score's rougeL tokenises and counts differently
and would give other numbers. Code similarity is rapidfuzz's fuzz.ratio rounded to
an integer percent, i.e. fuzzywuzzy's fuzz.ratio with python-Levenshtein
(fuzzywuzzy's pure-difflib fallback can differ on some strings). Chinese
variants segment with jieba.

InfiniteBench (`src/compute_scores.py`): `infinitebench_score_one(task, pred,
label)` returns 0/1 for the retrieval, choice, math and code tasks (label as
the official `get_answer` gives it).
"""
from __future__ import annotations

from collections import Counter
import re
import string

ZH_PUNCTUATION = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】"
                  "〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")


def normalize_answer(s: str) -> str:
  """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def normalize_zh_answer(s: str) -> str:
  """Lower case, drop English and Chinese punctuation, drop all whitespace."""
  drop = set(string.punctuation + ZH_PUNCTUATION)
  return "".join("".join(ch for ch in s.lower() if ch not in drop).split())


def f1_tokens(prediction: list, ground_truth: list) -> float:
  common = Counter(prediction) & Counter(ground_truth)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision = same / len(prediction)
  recall = same / len(ground_truth)
  return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kw) -> float:
  return f1_tokens(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _jieba_cut(text: str) -> list[str]:
  import jieba
  jieba.setLogLevel(60)
  return list(jieba.cut(text, cut_all=False))


def qa_f1_zh_score(prediction: str, ground_truth: str, **kw) -> float:
  pred = [t for t in (normalize_zh_answer(w) for w in _jieba_cut(prediction)) if t]
  gold = [t for t in (normalize_zh_answer(w) for w in _jieba_cut(ground_truth)) if t]
  return f1_tokens(pred, gold)


def rouge_score(prediction: str, ground_truth: str, **kw) -> float:
  from rouge import Rouge
  try:
    return float(Rouge(metrics=["rouge-l"]).get_scores([prediction], [ground_truth],
                                                         avg=True)["rouge-l"]["f"])
  except (ValueError, RecursionError, ZeroDivisionError):  # empty hypothesis or reference
    return 0.0


def rouge_zh_score(prediction: str, ground_truth: str, **kw) -> float:
  return rouge_score(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(ground_truth)))


def classification_score(prediction: str, ground_truth: str, *, all_classes, **kw) -> float:
  """Classes found in the prediction, a class that is a proper substring of the
  gold dropped (with the official loop's skipping: it removes while iterating);
  1 / matches when the gold is among them."""
  matches = [c for c in all_classes if c in prediction]
  for term in matches:  # mutating while iterating, exactly as the official loop
    if term in ground_truth and term != ground_truth:
      matches.remove(term)
  return 1.0 / len(matches) if ground_truth in matches else 0.0


def _share_equal(prediction: str, target: str) -> float:
  numbers = re.findall(r"\d+", prediction)
  if not numbers:
    return 0.0
  return sum(n == str(target) for n in numbers) / len(numbers)


def count_score(prediction: str, ground_truth: str, **kw) -> float:
  return _share_equal(prediction, ground_truth)


def retrieval_score(prediction: str, ground_truth: str, **kw) -> float:
  return _share_equal(prediction, re.findall(r"Paragraph (\d+)", ground_truth)[0])


def retrieval_zh_score(prediction: str, ground_truth: str, **kw) -> float:
  return _share_equal(prediction, re.findall(r"段落(\d+)", ground_truth)[0])


def code_sim_score(prediction: str, ground_truth: str, **kw) -> float:
  """fuzz.ratio of the first line without ` # or // (the empty string when none)."""
  from rapidfuzz import fuzz
  line = ""
  for cand in prediction.lstrip("\n").split("\n"):
    if "`" not in cand and "#" not in cand and "//" not in cand:
      line = cand
      break
  return int(round(fuzz.ratio(line, ground_truth))) / 100


LONGBENCH_METRIC = {
    "narrativeqa": qa_f1_score, "qasper": qa_f1_score, "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score, "hotpotqa": qa_f1_score, "2wikimqa": qa_f1_score,
    "musique": qa_f1_score, "dureader": rouge_zh_score, "gov_report": rouge_score,
    "qmsum": rouge_score, "multi_news": rouge_score, "vcsum": rouge_zh_score,
    "trec": classification_score, "triviaqa": qa_f1_score, "samsum": rouge_score,
    "lsht": classification_score, "passage_retrieval_en": retrieval_score,
    "passage_count": count_score, "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score, "repobench-p": code_sim_score,
}
FIRST_LINE_ONLY = ("trec", "triviaqa", "samsum", "lsht")


def longbench_sample_score(dataset: str, prediction: str, answers, all_classes) -> float:
  """Max over the gold answers (first line of the prediction for the few-shot sets)."""
  if dataset in FIRST_LINE_ONLY:
    prediction = prediction.lstrip("\n").split("\n")[0]
  fn = LONGBENCH_METRIC[dataset]
  return max([0.0] + [fn(prediction, g, all_classes=all_classes) for g in answers])


def longbench_score(dataset: str, predictions, answers, all_classes) -> float:
  """100 x mean sample score, rounded to 2 decimals (LongBench eval.py `scorer`)."""
  scores = [longbench_sample_score(dataset, p, a, all_classes)
            for p, a in zip(predictions, answers)]
  return round(100 * sum(scores) / len(scores), 2)


# ----------------------------------------------------------------------------- InfiniteBench

def first_int_match(prediction: str) -> str:
  for item in re.split("[^0-9]", prediction):
    if item:
      return item
  return ""


def _first(label):
  return label[0] if isinstance(label, list) else label


def _ib_passkey(pred, label):
  return _first(label) == first_int_match(pred)


def _ib_kv_retrieval(pred, label):
  for c in ["\n", ":", '"', "'", ".", ",", "?", "!", "{", "}"]:
    pred = pred.replace(c, " ")
  return _first(label) in pred.split()


def _ib_math_find(pred, label):
  label = _first(label)
  found = re.search(r"\d+\.\d+|\d+", pred)
  if found is None:
    return False
  if isinstance(label, int):
    return int(float(found.group(0))) == label if "." not in found.group(0) else False
  return float(found.group(0)) == float(label)


def _ib_choice(pred, label):
  """longbook_choice_eng; label = [option text, letter]."""
  if pred and pred[0] in "ABCD":
    return pred[0] in label
  for c in ["\n", '"', "'", ".", ",", "?", "!", "{", "}"]:
    pred = pred.replace(c, " ")
  while "  " in pred:
    pred = pred.replace("  ", " ")
  for prefix in ["answer is:", "answer:", "answer is", "option is"]:
    idx = pred.find(prefix)
    if idx == -1:
      continue
    if len(pred) < idx + len(prefix) + 1:
      return False
    after = pred[idx + len(prefix) + 1:]
    return any(after.startswith(s) for s in label)
  for word in pred.split():
    if word in "ABCD":
      return word in label
  return False


def _ib_code_debug(pred, label):
  """label = [function name, letter]."""
  fn_name, letter = label[0], label[1]
  if pred[:2] in [f"{letter}.", f"{letter}:"]:
    return True
  pred = pred.strip()
  for c in ["\n", "`", "'", '"', "-", "*", "Option", "option"]:
    pred = pred.replace(c, " ")
  while "  " in pred:
    pred = pred.replace("  ", " ")
  for prefix in ["answer is:", "is:", "answer:"]:
    idx = pred.find(prefix)
    if idx == -1:
      continue
    if len(pred) < idx + len(prefix) + 1:
      return False
    pred = pred[idx + len(prefix) + 1:]
    return pred.startswith(letter) or pred.startswith(fn_name)
  return False


def _ib_qa_f1(pred, label):
  labels = [label] if isinstance(label, str) else label
  return max([0.0] + [qa_f1_score(pred, g) for g in labels])


def _ib_sum(pred, label):
  from rouge_score import rouge_scorer
  label = _first(label)
  return rouge_scorer.RougeScorer(["rougeLsum"]).score(label, pred)["rougeLsum"].fmeasure


INFINITEBENCH_SCORE = {
    "passkey": _ib_passkey, "number_string": _ib_passkey, "kv_retrieval": _ib_kv_retrieval,
    "longbook_choice_eng": _ib_choice, "math_find": _ib_math_find,
    "code_debug": _ib_code_debug, "longbook_qa_eng": _ib_qa_f1, "longbook_sum_eng": _ib_sum,
}


def infinitebench_score_one(task: str, prediction: str, label) -> float:
  if task not in INFINITEBENCH_SCORE:
    raise ValueError(f"no InfiniteBench scorer for {task!r}; known: {sorted(INFINITEBENCH_SCORE)}")
  return float(INFINITEBENCH_SCORE[task](prediction, label))
