"""The resumable case loop shared by every task.

  rows = run_cases(out_dir, cases, fn, desc="passkey")

`cases` is a list of dicts with a unique "case" id; cases already in
OUT/results.jsonl are skipped, the others run through fn(case) -> dict (the
result row, which gets the case id and the wall seconds) and are appended one
line each as they finish. Returns the rows of every requested case, in order.
A progress bar with ETA goes to stderr.
"""
from __future__ import annotations

import time
from typing import Callable

from focus_jax.eval.results import append_result, read_results


def run_cases(out_dir, cases: list[dict], fn: Callable[[dict], dict], desc: str = "cases",
              progress: bool = True) -> list[dict]:
  ids = [c["case"] for c in cases]
  if len(set(ids)) != len(ids):
    raise ValueError("case ids must be unique")
  done = read_results(out_dir)
  todo = [c for c in cases if c["case"] not in done]
  bar = None
  if progress and todo:
    from tqdm import tqdm
    bar = tqdm(total=len(cases), initial=len(cases) - len(todo), desc=desc, unit="case",
               dynamic_ncols=True)
  try:
    for case in todo:
      t0 = time.time()
      row = dict(fn(case))
      row["case"] = case["case"]
      row["seconds"] = round(time.time() - t0, 3)
      append_result(out_dir, row)
      done[case["case"]] = row
      if bar is not None:
        bar.update(1)
  finally:
    if bar is not None:
      bar.close()
  return [done[i] for i in ids]
