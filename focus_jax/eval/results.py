"""Reading inputs and writing results: clear errors (file and line), atomic writes.

results.jsonl holds one JSON object per finished case (key "case"); a case is
appended as one whole line with a single write and flushed, so a killed run
leaves finished cases only (a torn last line, if the OS ever leaves one, is
reported with its line number). Whole files (summary.json, pred files) are
written to a temporary file beside the target, then renamed over it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import tempfile


class DataError(ValueError):
  """Missing or malformed input data (the message names the file and line)."""


def read_jsonl(path, required: tuple = ()) -> list[dict]:
  """Every non-blank line of a jsonl file as a dict (with `required` keys)."""
  path = Path(path)
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(row, dict):
        raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
      missing = [k for k in required if k not in row]
      if missing:
        raise DataError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
      rows.append(row)
  return rows


def read_results(out_dir) -> dict[str, dict]:
  """The finished cases of OUT/results.jsonl by case id ({} when there is none)."""
  path = Path(out_dir) / "results.jsonl"
  if not path.exists():
    return {}
  return {r["case"]: r for r in read_jsonl(path, required=("case",))}


def append_result(out_dir, row: dict) -> None:
  """Appends one case as one line (one write, flushed and synced)."""
  if "case" not in row:
    raise ValueError("a result row needs a 'case' id")
  line = json.dumps(row, ensure_ascii=False) + "\n"
  path = Path(out_dir) / "results.jsonl"
  with open(path, "a", encoding="utf-8") as f:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())


def write_atomic(path, text: str) -> None:
  """Writes text to path via a temporary file in the same folder and a rename."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path, obj) -> None:
  write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path, rows) -> None:
  write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def check_run(out_dir, settings: dict) -> None:
  """Records the run's settings in OUT/run.json; refuses to resume a different run."""
  path = Path(out_dir) / "run.json"
  if path.exists():
    try:
      old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if old != settings:
      diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
      raise ValueError(f"{out_dir} holds a run with other settings ({', '.join(diff)}); "
                       "use another --out")
    return
  write_json(path, settings)
