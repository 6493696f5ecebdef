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
import math
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


# (field, lowest allowed value, whether the lowest is excluded, integer) of the numeric
# training settings; checked before a run writes anything.
_BOUNDS = (("steps", 1, False, True), ("batch_size", 1, False, True), ("accum", 1, False, True),
           ("warmup_steps", 0, False, True), ("checkpoint_every", 1, False, True),
           ("keep_checkpoints", 1, False, True), ("local_window", 1, False, True),
           ("min_len", 1, False, True), ("max_len", 1, False, True),
           ("span_min", 1, False, True), ("target_tokens", 1, False, True),
           ("fragment_max", 1, False, True), ("fused_groups", 0, False, True),
           ("lr", 0, True, False), ("weight_decay", 0, False, False),
           ("clip_norm", 0, False, False), ("end_lr_factor", 0, False, False),
           ("eps", 0, True, False), ("b1", 0, False, False), ("b2", 0, False, False),
           ("retrieval_frac", 0, False, False))
_BELOW_ONE = ("b1", "b2")
_AT_MOST_ONE = ("retrieval_frac",)


def check_values(config) -> dict:
  """Refuses (ValueError naming the field) a numeric training setting that is not a finite
  number in its range: steps <= 0, a negative lr or weight_decay, clip_norm < 0 or NaN
  (0 turns clipping off), b1 >= 1, ... Returns config_dict(config)."""
  from focus_jax.config import as_int
  d = config_dict(config)
  for name, low, strict, integer in _BOUNDS:
    if name not in d:
      continue
    v = d[name]
    if integer:
      v = as_int(v, f"config.{name}")
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      raise ValueError(f"config.{name} must be a finite number, got {v!r}")
    if v < low or (strict and v == low):
      raise ValueError(f"config.{name} must be {'>' if strict else '>='} {low}, got {v}"
                       + (" (0 disables clipping)" if name == "clip_norm" else ""))
    if (name in _BELOW_ONE and v >= 1) or (name in _AT_MOST_ONE and v > 1):
      raise ValueError(f"config.{name} must be {'< 1' if name in _BELOW_ONE else '<= 1'}, "
                       f"got {v}")
  if "min_len" in d and "max_len" in d and d["max_len"] < d["min_len"]:
    raise ValueError(f"config.max_len ({d['max_len']}) must be >= config.min_len "
                     f"({d['min_len']})")
  for s in d.get("chunk_sizes") or ():
    if as_int(s, "config.chunk_sizes") < 1:
      raise ValueError(f"config.chunk_sizes must be >= 1, got {d['chunk_sizes']}")
  return d


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
