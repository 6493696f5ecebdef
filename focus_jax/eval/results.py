"""Reading inputs and writing results: clear errors (file and line), atomic writes.

results.jsonl holds one JSON object per finished case (key "case"); a case is
appended as one whole line with a single write and flushed, so a killed run
leaves finished cases only (a torn last line, if the OS ever leaves one, is
reported with its line number). Whole files (summary.json, pred files) are
written to a temporary file beside the target, then renamed over it.

OUT must be new, empty or an evaluation folder of its own (its run.json), so
no user file is replaced. run.json records the settings and the identity of the
model (checkpoint_identity); a resume whose settings or model differ is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MODEL_KEY = "model_sha256"   # run.json: checkpoint_identity of the evaluated checkpoint
_WHOLE = 1 << 20             # files up to this size are hashed whole, larger: head + tail


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
  from focus_jax.checkpoint.atomic import atomic_file
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with atomic_file(path, overwrite=True) as tmp:
    tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
  write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path, rows) -> None:
  write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def check_out(out_dir) -> Path:
  """Refuses an OUT that holds files and is not an evaluation folder (its run.json)."""
  from focus_jax.checkpoint.atomic import EVAL, check_own_folder
  return check_own_folder(out_dir, EVAL, "--out")


def checkpoint_identity(directory) -> str:
  """sha256 over a checkpoint's files (names, sizes, contents; files over 1 MiB by their
  first and last MiB): any rewrite of the checkpoint changes it (Orbax names its data
  files afresh on every save), reading a few MB whatever the model's size."""
  root = Path(directory)
  h = hashlib.sha256()
  for p in sorted(q for q in root.rglob("*") if q.is_file()):
    rel = p.relative_to(root).as_posix()
    if rel.startswith("tokenizer/"):
      continue
    size = p.stat().st_size
    h.update(f"{rel}\0{size}\0".encode())
    with open(p, "rb") as f:
      if size <= 2 * _WHOLE:
        h.update(f.read())
      else:
        h.update(f.read(_WHOLE))
        f.seek(size - _WHOLE)
        h.update(f.read(_WHOLE))
  return h.hexdigest()


def check_run(out_dir, settings: dict, model_id: str | None = None) -> None:
  """Records the run's settings (and model_id) in OUT/run.json; refuses to resume a
  different run or one of another model. A run.json without model_id gets it."""
  check_out(out_dir)
  path = Path(out_dir) / "run.json"
  new = dict(settings, **({MODEL_KEY: model_id} if model_id else {}))
  if path.exists():
    try:
      old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(old, dict):
      raise DataError(f"{path}: expected a JSON object, got {type(old).__name__}")
    mine = {k: v for k, v in old.items() if k != MODEL_KEY}
    if mine != settings:
      diff = sorted(k for k in set(mine) | set(settings) if mine.get(k) != settings.get(k))
      raise ValueError(f"{out_dir} holds a run with other settings ({', '.join(diff)}); "
                       "use another --out")
    if model_id and old.get(MODEL_KEY) not in (None, model_id):
      raise ValueError(f"{out_dir} holds a run of another model: the checkpoint "
                       f"{settings.get('checkpoint', '')} was rewritten since that run began "
                       f"({MODEL_KEY} {old[MODEL_KEY][:12]}... -> {model_id[:12]}...); "
                       "evaluate it into a new --out")
    if model_id and MODEL_KEY not in old:
      write_json(path, new)   # a run from before the field: accepted, and recorded
    return
  write_json(path, new)
