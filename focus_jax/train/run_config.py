"""The config of a run folder: checked on resume, never silently rewritten.

  WORKDIR/config.json           the config the run started with (written once)
  WORKDIR/config_history.jsonl  one line per resume whose config differed:
                                {"time", "step", "changes": {field: [old, new]}}

A resume whose config differs in a field that changes what the run means
(model, data, learning-rate schedule, losses, chunk sizes, shapes: every field
not in HARMLESS) is refused with the list of differences, unless
allow_change. Nothing is written to WORKDIR before this check passes.
"""
from __future__ import annotations

import json
import os
import time

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
# Fields that change how a run is executed or logged, not what it computes.
HARMLESS = frozenset({"mesh", "checkpoint_every", "keep_checkpoints", "async_checkpoints",
                      "resume", "tensorboard", "export_model", "eval_data", "focus",
                      "fused_chunks", "fused_groups"})


class ConfigChanged(ValueError):
  """A resume with a config that changes the run's meaning."""


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_dict(config) -> dict:
  return json.loads(config.to_json())


def saved_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); restore it or start a new --workdir") \
        from None


# Fields added after runs were started: absent from an older config.json they
# mean this value (the behaviour those runs had).
ADDED_DEFAULTS = {"retrieval_frac": 0.0}


def diff(old: dict, new: dict) -> dict:
  """{field: [old, new]} for every (dotted) field that differs."""
  a, b = {**ADDED_DEFAULTS, **_flat(old)}, _flat(new)
  return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def meaningful(changes: dict) -> dict:
  return {k: v for k, v in changes.items() if k.split(".")[0] not in HARMLESS}


def check_config(config, workdir: str, allow_change: bool = False) -> dict:
  """Compares `config` with WORKDIR/config.json; returns the differences.

  Raises ConfigChanged (one line: the differences and the flag that accepts
  them) when a meaningful field differs and not allow_change.
  """
  old = saved_config(workdir)
  if old is None:
    return {}
  changes = diff(old, config_dict(config))
  bad = meaningful(changes)
  if bad and not allow_change:
    listed = "; ".join(f"{k}: {json.dumps(o)} -> {json.dumps(n)}" for k, (o, n) in bad.items())
    raise ConfigChanged(f"the config differs from {os.path.join(workdir, CONFIG_FILE)} in "
                        f"{listed}; resume with the saved values, use a new --workdir, or pass "
                        "--allow_config_change to continue this run with the change")
  return changes


def record_config(config, workdir: str, changes: dict, step: int | None,
                  fresh: bool = False) -> None:
  """Writes config.json for a new run (fresh: no checkpoint yet); appends the changes of a
  resume to the history."""
  path = os.path.join(workdir, CONFIG_FILE)
  if fresh or not os.path.exists(path):
    text = config.to_json(indent=2)  # before the file is opened
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  elif changes:
    with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
      f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step,
                          "changes": changes}) + "\n")
