"""InfiniteBench's synthetic tasks: the strings of OpenBMB/InfiniteBench
data/construct_synthetic_dataset.py are in the rows, kv_retrieval's context is a JSON object
of uuid4 pairs, math_find's answers equal plain loops, the files are read by the existing
reader, and the existing scorer gives the hand-expected scores on hand-made predictions."""
import json
import re
import uuid

import pytest

from focus_jax.eval import infinitebench as IB
from focus_jax.eval import infinitebench_synth as S
from focus_jax.eval import metrics
from focus_jax.text import ByteTokenizer as ByteTok

TOK = ByteTok()
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"


def test_passkey_and_number_string_rows():
  rows = S.make_task(TOK, "passkey", 3000, 3)
  for i, r in enumerate(rows):
    key = r["answer"][0]
    assert re.fullmatch(r"\d{5}", key) and r["input"] == "What is the pass key?"
    needle = f"The pass key is {key}. Remember it. {key} is the pass key.\n"
    before, after = r["context"].split(needle)
    assert before == NOISE * (len(before) // len(NOISE)) and after == NOISE * (len(after) // len(NOISE))
    depth = len(before) / (len(before) + len(after))      # samples 0, 1, 2 of 3: 0, 1/2, 1
    assert abs(depth - i / 2) <= 1 / (len(r["context"]) // len(NOISE))
    n = len(IB.prompt_ids(TOK, "passkey", r, 10 ** 6))
    assert n + 6 <= 3000 < n + 6 + len(NOISE)            # the most noise that fits
    assert set(r) == {"id", "context", "input", "answer", "options"} and r["id"] == i
  ns = S.make_task(TOK, "number_string", 2000, 2)
  for r in ns:
    key = r["answer"][0]
    assert len(key) == 10 and r["input"] == "What is the sequence of digits?"
    assert f"The sequence of digits is {key}. Remember it. {key} is the sequence of digits.\n" in r["context"]
    # build_number_string: 5 digits, then 5 times a digit doubled in place -> >= 5 repeats
    assert sum(a == b for a, b in zip(key, key[1:])) >= 1
  assert S.make_task(TOK, "passkey", 3000, 3) == rows      # seeded


def test_kv_retrieval_is_json_of_uuid4_pairs():
  rows = S.make_task(TOK, "kv_retrieval", 3000, 2)
  for i, r in enumerate(rows):
    assert r["context"].startswith("JSON data:\n{")
    obj = json.loads(r["context"][len("JSON data:\n"):])
    assert len(obj) > 10
    for k, v in obj.items():
      assert uuid.UUID(k).version == 4 and uuid.UUID(v).version == 4 and str(uuid.UUID(k)) == k
    key = re.fullmatch(r'\nKey: "(\S+)"\nThe value associated with the specified key is: ',
                       r["input"]).group(1)
    assert r["answer"] == [obj[key]] and list(obj).index(key) == int(i * len(obj) / 2)
    prompt = IB.build_prompt("kv_retrieval", r)
    assert prompt.startswith("Extract the value corresponding to the specified key in the JSON "
                             "object below.\n\nJSON data:\n{")


def test_math_find_answers():
  rows = S.make_task(TOK, "math_find", 1500, 7)
  for i, r in enumerate(rows):
    task = S.MATH_FIND[i]
    assert r["input"] == ("You should answer with only one number, no other words. The "
                          f"{task} of the list is: ")
    values = json.loads(r["context"])
    distinct = sorted(set(values))
    want = {"largest number": distinct[-1], "second largest number": distinct[-2],
            "third largest number": distinct[-3], "smallest number": distinct[0],
            "second smallest number": distinct[1], "third smallest number": distinct[2]}
    if task == "median":
      s, n = sorted(values), len(values)
      want[task] = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    assert r["answer"] == [want[task]]
    assert IB.build_prompt("math_find", r).startswith(f"What is the {task} in the following "
                                                      "list?\n\n[")


def test_written_files_read_and_scored(tmp_path):
  S.write_tasks(tmp_path, TOK, S.TASKS, 2000, 2)
  S.write_tasks(tmp_path, TOK, S.TASKS, 2000, 2)          # the same rows: nothing to do
  pk = IB.read_task(tmp_path, "passkey")
  kv = IB.read_task(tmp_path, "kv_retrieval")
  mf = IB.read_task(tmp_path, "math_find")
  one = metrics.infinitebench_score_one
  key = pk[0]["answer"][0]
  assert one("passkey", f" {key}. Remember", IB.label("passkey", pk[0])) == 1.0
  assert one("passkey", f" 0{key}", IB.label("passkey", pk[0])) == 0.0
  value = kv[1]["answer"][0]
  assert one("kv_retrieval", f' "{value}".', IB.label("kv_retrieval", kv[1])) == 1.0
  assert one("kv_retrieval", value[:-1], IB.label("kv_retrieval", kv[1])) == 0.0
  ans = mf[0]["answer"][0]
  assert one("math_find", f" {ans}", IB.label("math_find", mf[0])) == 1.0
  assert one("math_find", f" {ans + 1}", IB.label("math_find", mf[0])) == 0.0
  (tmp_path / "passkey.jsonl").write_text("{}\n")
  with pytest.raises(ValueError, match="other data"):
    S.write_tasks(tmp_path, TOK, ["passkey"], 2000, 2)
  with pytest.raises(ValueError, match="no synthetic InfiniteBench task"):
    S.make_task(TOK, "code_debug", 2000, 1)


def test_synthetic_cli_end_to_end(tmp_path):
  """launch.evaluate --task=infinitebench --synthetic on a tiny random checkpoint: the data
  files in OUT are the generator's, the pred files carry the predictions, the scores are the
  official scorer's over them."""
  import os
  import subprocess
  import sys
  from flax import nnx
  from focus_jax.checkpoint.orbax import save_checkpoint
  from focus_jax.config import ModelConfig
  from focus_jax.model import LlamaForCausalLM
  cfg = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, bos_token_id=1, eos_token_ids=(2,))
  save_checkpoint(tmp_path / "ckpt", LlamaForCausalLM(cfg, nnx.Rngs(0), std=0.3))
  out = tmp_path / "run"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [sys.executable, "-m", "launch.evaluate", f"--checkpoint={tmp_path / 'ckpt'}",
          "--tokenizer=byte", "--task=infinitebench", "--synthetic", f"--out={out}",
          "--lengths=1024", "--datasets=passkey,kv_retrieval", "--seeds=2"]
  bad = subprocess.run(args + ["--datasets=passkey,code_debug"], cwd=root, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
      "launch.evaluate: error: --synthetic has no task code_debug; known: passkey, "
      "number_string, kv_retrieval, math_find"]
  r = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  scores = json.loads(r.stdout.strip().splitlines()[-1])["scores"]
  for task in ("passkey", "kv_retrieval"):
    rows = IB.read_task(out / "infinitebench_data" / "1024", task)
    assert rows == S.make_task(TOK, task, 1024, 2)
    preds = [json.loads(x) for x in
             (out / "infinitebench" / "1024" / f"preds_{task}.jsonl").read_text().splitlines()]
    assert [p["ground_truth"] for p in preds] == [r["answer"] for r in rows]
    hand = [metrics.infinitebench_score_one(task, p["prediction"], p["ground_truth"])
            for p in preds]
    assert scores[task] == {"1024": round(100 * sum(hand) / 2, 2)}
  from focus_jax.eval.report import table
  assert "| IB passkey 1024 | IB kv_retrieval 1024 |" in table([out])
