"""One Markdown table of evaluation runs.

  python -m focus_jax.eval.report OUT_DIR...

Rows: checkpoint and mode (with its settings, and the haystack or data when not the
default); the runs of one row fill its columns, two runs may not give the same one.
Columns: the task scores found
in each run's summary.json (passkey accuracy per length and overall,
perplexity per window length, LongBench / InfiniteBench per dataset (and length, when
synthetic), RULER's mean over its tasks per length). RULER runs also get a second table,
one row per task, one column per length.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys


def columns(summary: dict) -> dict:
  """Flat {column: value} of one run."""
  task, scores = summary["task"], summary.get("scores", {})
  cols = {}
  if task == "passkey":
    for n, v in sorted(scores.get("by_length", {}).items(), key=lambda kv: int(kv[0])):
      cols[f"passkey {n}"] = v
    cols["passkey all"] = scores.get("accuracy")
  elif task == "perplexity":
    for n, v in sorted(scores.items(), key=lambda kv: int(kv[0])):
      cols[f"ppl {n}"] = v["ppl"]
  elif task == "ruler":   # the mean over tasks per length; by_task_table has each task
    for n, v in scores.get("by_length", {}).items():
      cols[f"RULER {n}"] = v
    cols["RULER avg"] = scores.get("average")
  else:
    short = "LB" if task == "longbench" else "IB"
    for name, v in scores.items():
      if isinstance(v, dict):   # synthetic InfiniteBench: per length
        for n, x in sorted(v.items(), key=lambda kv: int(kv[0])):
          cols[f"{short} {name} {n}"] = x
      else:
        cols[f"{short} {name}"] = v
  return cols


def _fmt(v, col: str) -> str:
  if v is None:
    return ""
  if col.startswith("passkey"):
    return f"{100 * v:.0f}%"
  if isinstance(v, float):
    return f"{v:.2f}"
  return str(v)


def _summary(d) -> dict:
  path = Path(d) / "summary.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file (has launch.evaluate finished there?)")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def by_task_table(run_dirs) -> str:
  """RULER runs: one row per run and task, one column per length (scores 0-100); "" if none."""
  from focus_jax.eval.plots import run_label
  lines, lengths = [], set()
  runs = [s for s in map(_summary, run_dirs) if s["task"] == "ruler"]
  for s in runs:
    lengths |= {int(n) for c in s["scores"]["by_task"].values() for n in c}
  if not runs:
    return ""
  order = sorted(lengths)
  lines = ["| run | task | " + " | ".join(str(n) for n in order) + " |",
           "|---" * (len(order) + 2) + "|"]
  for s in runs:
    label = run_label(s)
    for task, cells in s["scores"]["by_task"].items():
      lines.append(f"| {label} | {task} | " + " | ".join(
          "" if cells.get(str(n)) is None else f"{cells[str(n)]:.1f}" for n in order) + " |")
  return "\n".join(lines)


def table(run_dirs) -> str:
  from focus_jax.eval.plots import run_label
  rows, order = {}, []
  for d in run_dirs:
    summary = _summary(d)
    label = run_label(summary)
    row = rows.setdefault(label, {})
    for col, v in columns(summary).items():
      if col in row:
        raise ValueError(f"{row[col][1]} and {d} both give '{col}' for '{label}' "
                         "(the same checkpoint, mode and settings): report one of them")
      row[col] = (v, d)
      if col not in order:
        order.append(col)
  lines = ["| run | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
  for label, row in rows.items():
    lines.append(f"| {label} | " + " | ".join(_fmt(row.get(c, (None,))[0], c) for c in order)
                 + " |")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m focus_jax.eval.report", description=__doc__)
  ap.add_argument("runs", nargs="+")
  args = ap.parse_args(argv)
  try:
    print(table(args.runs))
    per_task = by_task_table(args.runs)
    if per_task:
      print("\n" + per_task)
  except (ValueError, OSError) as e:
    print(f"report: error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
