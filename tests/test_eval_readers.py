"""LongBench / InfiniteBench readers and prompts on fixture files; truncation; result files."""
import json

import pytest

from focus_jax.eval import infinitebench as IB
from focus_jax.eval import longbench as LB
from focus_jax.eval.driver import run_cases
from focus_jax.eval.results import DataError, read_jsonl, read_results
from focus_jax.text import ByteTokenizer as ByteTok


def _write(path, rows):
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                  encoding="utf-8")


LB_ROW = {"input": "Who?", "context": "Ann met Bob.", "answers": ["Ann"], "all_classes": None,
          "length": 3, "dataset": "hotpotqa", "language": "en", "_id": "x"}


def test_longbench_reader_and_prompt(tmp_path):
  _write(tmp_path / "hotpotqa.jsonl", [LB_ROW, dict(LB_ROW, input="Whom?")])
  rows = LB.read_dataset(tmp_path, "hotpotqa")
  assert [r["input"] for r in rows] == ["Who?", "Whom?"]
  assert LB.build_prompt("hotpotqa", rows[0]) == (
      "Answer the question based on the given passages. Only give me the answer and do not "
      "output any other words.\n\nThe following are given passages.\nAnn met Bob.\n\nAnswer "
      "the question based on the given passages. Only give me the answer and do not output "
      "any other words.\n\nQuestion: Who?\nAnswer:")
  assert LB.build_prompt("lcc", {"context": "x = 1\n", "input": ""}) == \
      "Please complete the code given below. \nx = 1\nNext line of code:\n"
  assert LB.MAX_NEW_TOKENS["gov_report"] == 512 and LB.MAX_NEW_TOKENS["hotpotqa"] == 32
  assert LB.pred_row("Ann", rows[0]) == {"pred": "Ann", "answers": ["Ann"], "all_classes": None,
                                         "length": 3}
  ids = LB.prompt_ids(ByteTok(), "hotpotqa", rows[0], max_length=40)
  full = ByteTok()(LB.build_prompt("hotpotqa", rows[0]))["input_ids"]
  assert ids == full[:20] + full[-20:]


def test_longbench_reader_errors(tmp_path):
  with pytest.raises(DataError, match="qasper.jsonl: no such file"):
    LB.read_dataset(tmp_path, "qasper")
  bad = dict(LB_ROW)
  del bad["answers"]
  _write(tmp_path / "hotpotqa.jsonl", [LB_ROW, bad])
  with pytest.raises(DataError, match=r"hotpotqa.jsonl:2: missing field\(s\) answers"):
    LB.read_dataset(tmp_path, "hotpotqa")
  (tmp_path / "musique.jsonl").write_text(json.dumps(LB_ROW) + "\n{not json\n")
  with pytest.raises(DataError, match=r"musique.jsonl:2: malformed JSON"):
    LB.read_dataset(tmp_path, "musique")
  with pytest.raises(ValueError, match="unknown LongBench dataset"):
    LB.read_dataset(tmp_path, "nosuch")


def test_truncate_middle_exact():
  ids = list(range(10))
  assert LB.truncate_middle(ids, 6) == [0, 1, 2, 7, 8, 9]
  assert LB.truncate_middle(ids, 7) == [0, 1, 2, 7, 8, 9]     # official: 2 x (7 // 2)
  assert LB.truncate_middle(ids, 10) == ids
  assert LB.truncate_middle(ids, 50) == ids


def test_infinitebench_reader_prompts_labels(tmp_path):
  choice = {"id": 0, "context": "BOOK", "input": "Who?", "answer": ["Bob"],
            "options": ["Ann", "Bob", "Cy", "Di"]}
  _write(tmp_path / "longbook_choice_eng.jsonl", [choice])
  rows = IB.read_task(tmp_path, "longbook_choice_eng")
  assert IB.label("longbook_choice_eng", rows[0]) == ["Bob", "B"]
  assert IB.build_prompt("longbook_choice_eng", rows[0]) == (
      "Read the book and answer the question.\n\nBOOK\n\nQuestion: Who?\nA. Ann\nB. Bob\nC. Cy"
      "\nD. Di\n\nThe letter of the correct answer is")
  mf = {"context": "1, 5, 3", "input": "The largest number of the list is: ", "answer": 5}
  assert IB.build_prompt("math_find", mf) == (
      "What is the largest number in the following list?\n\n1, 5, 3\n\n"
      "The largest number of the list is: ")
  pk = {"context": "noise", "input": "What is the pass key?", "answer": ["123"]}
  assert IB.build_prompt("passkey", pk).endswith("noise\n\nWhat is the pass key?\n\nThe pass key is")
  assert IB.pred_row("passkey", pk, " 123", 7) == {"id": 7, "prediction": " 123",
                                                   "ground_truth": ["123"]}
  _write(tmp_path / "code_debug.jsonl", [dict(choice, answer=["Zed"])])
  with pytest.raises(DataError, match="code_debug.jsonl: sample 1: answer"):
    IB.read_task(tmp_path, "code_debug")


def test_resume_skips_finished_cases(tmp_path):
  calls = []

  def fn(case):
    calls.append(case["case"])
    return {"value": case["x"] * 2}
  cases = [{"case": f"c{i}", "x": i} for i in range(3)]
  rows = run_cases(tmp_path, cases, fn, progress=False)
  assert [r["value"] for r in rows] == [0, 2, 4] and calls == ["c0", "c1", "c2"]
  rows = run_cases(tmp_path, cases + [{"case": "c3", "x": 3}], fn, progress=False)
  assert calls == ["c0", "c1", "c2", "c3"] and [r["value"] for r in rows] == [0, 2, 4, 6]
  assert len(read_jsonl(tmp_path / "results.jsonl")) == 4


def test_corrupt_results_line_is_named(tmp_path):
  (tmp_path / "results.jsonl").write_text('{"case": "a"}\n{"case": "b", "x\n')
  with pytest.raises(DataError, match=r"results.jsonl:2: malformed JSON"):
    read_results(tmp_path)


def test_report_table_and_heatmap(tmp_path):
  from focus_jax.eval.plots import passkey_heatmap
  from focus_jax.eval.report import table
  runs = {
      "a": {"task": "passkey", "settings": {"checkpoint": "/x/smol", "mode": "plain"},
            "scores": {"accuracy": 0.5, "by_length": {"8192": 0.0, "4096": 1.0}}},
      "b": {"task": "perplexity", "settings": {"checkpoint": "/x/smol", "mode": "plain"},
            "scores": {"4096": {"ppl": 12.345}}},
      "c": {"task": "longbench", "settings": {"checkpoint": "/x/smol", "mode": "selfextend",
                                               "neighbor_window": 1024, "group_size": None},
            "scores": {"qasper": 7.5}},
  }
  for name, s in runs.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "summary.json").write_text(json.dumps(s))
  assert table([tmp_path / n for n in "abc"]).splitlines() == [
      "| run | passkey 4096 | passkey 8192 | passkey all | ppl 4096 | LB qasper |",
      "|---|---|---|---|---|---|",
      "| smol plain | 100% | 0% | 50% | 12.35 |  |",
      "| smol selfextend W=1024 |  |  |  |  | 7.50 |"]
  # a haystack run of the same model and mode is its own row; a second run giving
  # the same cell is refused
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "summary.json").write_text(json.dumps(
      {"task": "passkey", "settings": {"checkpoint": "/x/smol", "mode": "plain",
                                        "haystack": "/h/play.txt"},
       "scores": {"accuracy": 0.0, "by_length": {"4096": 0.0}}}))
  assert table([tmp_path / n for n in "ad"]).splitlines()[2:] == [
      "| smol plain | 100% | 0% | 50% |", "| smol plain haystack=play.txt | 0% |  | 0% |"]
  with pytest.raises(ValueError, match="both give 'passkey 4096'"):
    table([tmp_path / "a", tmp_path / "a"])
  rows = [{"length": n, "depth": d, "correct": c} for n, d, c in
          [(4096, 0.0, True), (4096, 1.0, False), (8192, 0.0, True)]]
  passkey_heatmap(rows, tmp_path / "h.png")
  assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_plots_first_windows_compare_runs_on_the_same_text(tmp_path):
  """--windows=1 takes the first window of each length (document, then start)."""
  import math
  from focus_jax.eval import plots
  rows = [{"length": 8, "doc": 0, "start": 4, "nll": 9.0, "tokens": 2, "case": "a"},
          {"length": 8, "doc": 0, "start": 0, "nll": 1.0, "tokens": 2, "case": "b"},
          {"length": 4, "doc": 1, "start": 0, "nll": 5.0, "tokens": 2, "case": "c"},
          {"length": 4, "doc": 0, "start": 2, "nll": 3.0, "tokens": 2, "case": "d"}]
  assert [r["case"] for r in plots.first_windows(rows, 1)] == ["d", "b"]
  assert len(plots.first_windows(rows, None)) == 4
  with pytest.raises(ValueError, match="--windows"):
    plots.first_windows(rows, 0)
  run = tmp_path / "ppl"
  run.mkdir()
  (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (run / "summary.json").write_text(json.dumps(
      {"task": "perplexity", "settings": {"checkpoint": "/x/smol", "mode": "plain"},
       "scores": {"8": {"ppl": 99.0}, "4": {"ppl": 99.0}}}))
  seen = {}
  orig = plots.perplexity_plot
  plots.perplexity_plot = lambda series, path: seen.update(series)
  try:
    plots.main([str(run), "--out", str(tmp_path / "fig"), "--windows", "1"])
  finally:
    plots.perplexity_plot = orig
  assert seen["smol plain"]["8"] == pytest.approx(math.exp(1.0 / 2))
  assert seen["smol plain"]["4"] == pytest.approx(math.exp(3.0 / 2))
  assert plots.run_label({"settings": {"checkpoint": "/x/smol", "mode": "plain",
                                       "context": 128}}) == "smol plain context=128"
