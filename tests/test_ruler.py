"""RULER's synthetic tasks: the generated prompts carry the strings of NVIDIA/RULER's files
(scripts/data/synthetic/constants.py, niah.py, variable_tracking.py, ...), the answers are
what the haystack says (counted by plain loops here), the length budget holds, and the
scores equal RULER's string_match_all / string_match_part on hand-made predictions."""
import collections
import json
import re

import pytest

from focus_jax.eval import ruler as R

count = lambda text: len(text.split()) + 1   # a word "tokenizer" (+1: BOS)
NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
         "There and back again.")
ESSAY = "It was a dark night. Rain fell on the town! Who knew? The end came soon. " * 20


def test_niah_single_noise_template():
  s = R.make_sample("niah_single_1", 2048, 0, count)
  key, value = re.search(r"One of the special magic numbers for (\S+) is: (\d{7})\.",
                         s["prompt"]).groups()
  assert s["answers"] == [value]
  # the single-needle wording of niah.py: Some -> A, are -> is, numbers -> number
  assert s["prompt"].startswith(
      "A special magic number is hidden within the following text. Make sure to memorize it. "
      "I will quiz you about the number afterwards.\n" )
  assert s["prompt"].endswith(
      f"\nWhat is the special magic number for {key} mentioned in the provided text? "
      f"The special magic number for {key} mentioned in the provided text is")
  lines = s["prompt"].split("\n")
  assert lines.count(NOISE) == s["haystack_size"] and s["haystack_size"] > 50
  assert count(s["prompt"]) + 128 <= 2048 < count(s["prompt"]) + 128 + count(NOISE)
  assert R.make_sample("niah_single_1", 2048, 0, count) == s      # seeded
  assert R.make_sample("niah_single_1", 2048, 1, count)["answers"] != s["answers"]


def test_niah_multi_templates():
  s = R.make_sample("niah_multivalue", 2048, 0, count, ESSAY)
  assert s["prompt"].startswith("Some special magic numbers are hidden within the following "
                                "text. Make sure to memorize it. I will quiz you about the "
                                "numbers afterwards.\n")
  key = re.search(r"What are all the special magic numbers for (\S+) mentioned in the "
                  r"provided text\? The special magic numbers for \1 mentioned in the provided "
                  r"text are$", s["prompt"]).group(1)
  found = re.findall(rf"One of the special magic numbers for {key} is: (\d+)\.", s["prompt"])
  assert sorted(found) == sorted(s["answers"]) and len(found) == 4
  assert "It was a dark night. Rain fell on the town!" in s["prompt"]
  q = R.make_sample("niah_multiquery", 2048, 0, count, ESSAY)
  keys = re.search(r"What are all the special magic numbers for (\S+), (\S+), (\S+), and (\S+) "
                   r"mentioned in the provided text\?", q["prompt"]).groups()
  want = [re.search(rf"One of the special magic numbers for {k} is: (\d+)\.", q["prompt"]).group(1)
          for k in keys]
  assert q["answers"] == want
  u = R.make_sample("niah_multikey_3", 2048, 0, count)
  uuid4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
  needles = re.findall(rf"One of the special magic uuids for ({uuid4}) is: ({uuid4})\.",
                       u["prompt"])
  assert len(needles) == u["haystack_size"] + 1        # distractors + the needle
  key = re.search(r"What is the special magic uuid for (\S+) mentioned", u["prompt"]).group(1)
  assert dict(needles)[key] == u["answers"][0]
  with pytest.raises(ValueError, match="needs an essay haystack"):
    R.make_sample("niah_single_2", 2048, 0, count)


def test_variable_tracking_template_and_chain():
  s = R.make_sample("vt", 4096, 0, count)
  p = s["prompt"]
  assert p.count("Memorize and track the chain(s) of variable assignment hidden in the following "
                 "text.\n\n") == 2                      # the in-context example and the task
  value = re.search(r"Question: Find all variables that are assigned the value (\d{5}) in the "
                    r"text above\. Answer: According to the chain\(s\) of variable assignment "
                    r"in the text above, 5 variables are assigned the value \1, they are: $",
                    p).group(1)
  task = p[p.rindex("Memorize and track"):]
  # follow the chain by hand: VAR A = value, then VAR B = VAR A ...
  assign = dict(re.findall(r"VAR (\w+) = (VAR \w+|\d+)\s", task))
  chain = [v for v, rhs in assign.items() if rhs == value]
  while len(chain) < 5:
    chain += [v for v, rhs in assign.items() if rhs == f"VAR {chain[-1]}"]
  assert s["answers"] == chain
  assert len(chain[0]) == 5 and "12345" not in p       # the example's value is re-drawn
  icl = p[:p.rindex("Memorize and track")]
  assert re.search(r"they are:  [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3}\n\n$", icl)


def test_common_words_counts():
  s = R.make_sample("cwe", 8192, 0, count)
  p = s["prompt"]
  assert p.endswith("\nQuestion: What are the 10 most common words in the above list? Answer: "
                    "The top 10 words that appear most often in the list are:")
  assert p.count("Below is a numbered list of words. In these words, some appear more often "
                 "than others. Memorize the ones that appear most often.\n") == 2
  task = p[p.rindex("Below is a numbered list"):].split("\n")[1]
  words = re.findall(r"\d+\. (\S+)", task)
  assert [int(n) for n in re.findall(r"(\d+)\. ", task)] == list(range(1, len(words) + 1))
  counts = collections.Counter(words)
  assert {w: counts[w] for w in s["answers"]} == {w: 30 for w in s["answers"]}
  assert set(counts.values()) == {30, 3} and len(counts) == s["haystack_size"]


def test_frequent_words_counts():
  s = R.make_sample("fwe", 4096, 0, count)
  p = s["prompt"]
  head = ("Read the following coded text and track the frequency of each coded word. Find the "
          "three most frequently appeared coded words. ")
  tail = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are "
          "the three most frequently appeared words in the above coded text? Answer: According "
          "to the coded text above, the three most frequently appeared words are:")
  assert p.startswith(head) and p.endswith(tail)
  ranked = collections.Counter(p[len(head):-len(tail)].split()).most_common(4)
  assert ranked[0][0] == "..." and [w for w, _ in ranked[1:]] == s["answers"]
  assert count(p) + 50 <= 4096


def test_fit_is_the_largest_that_fits():
  build = lambda n: ("w " * (3 * n + 7), None)          # 3n + 8 "tokens"
  for budget in (11, 100, 1000, 54321):
    n = R.fit(build, count, budget)
    assert 3 * n + 8 <= budget < 3 * (n + 1) + 8
  with pytest.raises(ValueError, match="too few"):
    R.fit(build, count, 10)
  with pytest.raises(ValueError, match="RULER vt does not fit 600 tokens"):
    R.make_sample("vt", 600, 0, count)
  assert R.fit(build, count, 10, strict=False) == 1


def test_pair_words_are_the_sorted_set():
  adjs = ["blue", "blue-eyed", "ad hoc", "ad", "zany", "high", "high-pitched", "red"]
  nouns = ["eyed-fox", "ant", "zebra", "ant", "eyebrow", "CD", "pitched-tent"]
  want = sorted({f"{a}-{n}" for a in adjs for n in nouns})
  got = R.PairWords(adjs, nouns)
  assert len(got) == len(want) and list(got) == want


def test_scores_are_rulers_metrics():
  preds = [" The numbers are 123 and 456.", "nothing here", "abc\x01"]
  refs = [["123", "456"], ["123", "789"], ["ABC", "def"]]
  # all: (2/2 + 0/2 + 1/2) / 3 * 100 = 50; part: (1 + 0 + 1) / 3 * 100 = 66.67
  assert R.string_match_all(preds, refs) == 50.0
  assert R.string_match_part(preds, refs) == 66.67
  assert R.score("niah_multivalue", ["7 and 1234567 x 89\x02"], [["1234567", "89", "0"]]) == 66.67
  assert R.postprocess_pred("  a\tb\x00 ") == "a\nb"
  rows = [{"task": "vt", "length": 64, "pred": "AB CD", "answers": ["AB", "CD"]},
          {"task": "vt", "length": 64, "pred": "AB", "answers": ["AB", "CD"]},
          {"task": "cwe", "length": 64, "pred": "x", "answers": ["y"]},
          {"task": "vt", "length": 128, "pred": "", "answers": ["Q"]}]
  s = R.summarize(rows)
  assert s["by_task"] == {"vt": {"64": 75.0, "128": 0.0}, "cwe": {"64": 0.0}}
  assert s["by_length"] == {"64": 37.5, "128": 0.0} and s["average"] == 18.75
  with pytest.raises(ValueError, match="unknown --ruler_tasks qa_1"):
    R.parse_tasks(["vt", "qa_1"])
  assert json.loads(json.dumps(R.make_cases(["vt"], [64], 2)))[1]["case"] == "vt/L=64/i=1"


def test_ruler_cli_end_to_end(tmp_path):
  """launch.evaluate --task=ruler on a tiny random checkpoint: one row per case, scores equal
  RULER's metric over the rows, the answers are the generator's (resuming is the driver's,
  tested with the other tasks)."""
  import os
  import subprocess
  import sys
  from flax import nnx
  from focus_jax.checkpoint.orbax import save_checkpoint
  from focus_jax.config import ModelConfig
  from focus_jax.text import ByteTokenizer as ByteTok
  from focus_jax.model import LlamaForCausalLM
  cfg = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, bos_token_id=1, eos_token_ids=(2,))
  save_checkpoint(tmp_path / "ckpt", LlamaForCausalLM(cfg, nnx.Rngs(0), std=0.3))
  (tmp_path / "essay.txt").write_text(ESSAY)
  out = tmp_path / "run"
  args = [sys.executable, "-m", "launch.evaluate", f"--checkpoint={tmp_path / 'ckpt'}",
          "--tokenizer=byte", "--task=ruler", f"--out={out}", "--lengths=1024",
          "--ruler_tasks=niah_single_2", f"--haystack={tmp_path / 'essay.txt'}"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
  assert [x["case"] for x in rows] == ["niah_single_2/L=1024/i=0"]
  tok = ByteTok()
  for x in rows:
    want = R.make_sample(x["task"], 1024, 0, lambda t: len(tok(t)["input_ids"]), ESSAY)
    assert x["answers"] == want["answers"] and x["tokens"] == len(tok(want["prompt"])["input_ids"])
    assert x["tokens"] + R.max_new_tokens(x["task"]) <= 1024
    # string_match_all of one sample, by hand: the share of answers found in the prediction
    pred = x["pred"].strip().lower()
    hand = round(100 * sum(a.lower() in pred for a in x["answers"]) / len(x["answers"]), 2)
    assert summary["scores"]["by_task"][x["task"]] == {"1024": hand}
  assert (out / "ruler.png").stat().st_size > 0
  from focus_jax.eval.report import by_task_table, table
  assert "| RULER 1024 | RULER avg |" in table([out])
  for bad, msg in (("--ruler_tasks=qa_1", "unknown --ruler_tasks qa_1"),
                   ("--seeds=0", "--seeds must be >= 1, got 0")):
    r = subprocess.run(args + [bad], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"launch.evaluate: error: {msg}" + ("; known: " + ", ".join(R.TASKS) if "qa" in bad
                                            else "")]
  assert by_task_table([out]).splitlines()[2].endswith(
      f"| niah_single_2 | {summary['scores']['by_task']['niah_single_2']['1024']:.1f} |")
