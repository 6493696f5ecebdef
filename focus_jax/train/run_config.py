"""The training config: typed, checked once, checked on resume, never silently rewritten.

TrainConfig.from_config(configs/*.py) refuses an unknown or missing field or a bad value.

  WORKDIR/config.json           the config the run started with (written once)
  WORKDIR/config_history.jsonl  one line per resume whose config differed:
                                {"time", "step", "changes": {field: [old, new]}}

A resume whose config differs in a field that changes what the run means
(model, data, learning-rate schedule, losses, chunk sizes, shapes: every field
not in HARMLESS) is refused with the list of differences, unless
allow_change. Nothing is written to WORKDIR before this check passes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training run's settings (configs/tiny.py documents them); build with from_config."""
  model: str
  tiny: dict
  candidate_projs: tuple
  dtype: str
  data: str
  synthetic: dict
  jsonl_field: str
  tokenizer: str
  min_len: int
  max_len: int
  local_window: int
  chunk_sizes: tuple
  fragment_max: int
  span_min: int
  target_tokens: int
  loss_mix: str
  row_buckets: str
  seed: int
  steps: int
  batch_size: int
  accum: int
  lr: float
  warmup_steps: int
  decay: str
  end_lr_factor: float
  weight_decay: float
  b1: float
  b2: float
  eps: float
  clip_norm: float
  stop_gradient_prefix: bool
  mesh: str
  checkpoint_every: int
  keep_checkpoints: int
  async_checkpoints: bool
  resume: bool
  tensorboard: bool
  export_model: bool
  focus: dict
  # Added after runs were started: absent (config, older config.json), these values.
  eval_data: str = ""              # "": the training data
  retrieval_frac: float = 0.0
  bos_sees_memory: bool = True
  base_dtype: str = ""             # "": as loaded
  remat: str = "none"
  fused_chunks: bool = False
  fused_groups: int = 0
  model_shape: dict | None = None
  synthetic_kv: dict | None = None

  @classmethod
  def from_config(cls, config) -> "TrainConfig":
    """The TrainConfig of an ml_collections config (a TrainConfig is returned as is)."""
    if isinstance(config, cls):
      return config
    d = check_values(config)
    unknown = sorted(set(d) - set(_FIELDS))
    missing = [n for n, f in _FIELDS.items() if n not in d and f.default is dataclasses.MISSING]
    if unknown or missing:
      raise ValueError(f"config.{(unknown or missing)[0]} is "
                       f"{'not a training setting' if unknown else 'missing'} (configs/tiny.py "
                       "lists every training setting)")
    return cls(**d)

  def to_dict(self) -> dict:
    """The fields as JSON values (config.json's content)."""
    return json.loads(json.dumps(dataclasses.asdict(self)))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


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


# field: (lowest allowed value, whether the lowest is excluded) of the numeric training
# settings; checked before a run writes anything.
_BOUNDS = {"steps": (1, False), "batch_size": (1, False), "accum": (1, False),
           "warmup_steps": (0, False), "checkpoint_every": (1, False),
           "keep_checkpoints": (1, False), "local_window": (1, False), "min_len": (1, False),
           "max_len": (1, False), "span_min": (1, False), "target_tokens": (1, False),
           "fragment_max": (1, False), "fused_groups": (0, False), "lr": (0, True),
           "weight_decay": (0, False), "clip_norm": (0, False), "end_lr_factor": (0, False),
           "eps": (0, True), "b1": (0, False), "b2": (0, False), "retrieval_frac": (0, False)}
_BELOW_ONE = ("b1", "b2")
_AT_MOST_ONE = ("retrieval_frac",)


def check_values(config) -> dict:
  """The fields of an ml_collections config, typed as TrainConfig's. Refuses (ValueError
  naming the field) a numeric training setting that is not a finite number in its range:
  steps <= 0, a negative lr or weight_decay, clip_norm < 0 or NaN (0 turns clipping off),
  b1 >= 1, ..."""
  from focus_jax.config import as_int
  d = json.loads(config.to_json())
  for name, v in d.items():
    kind = _FIELDS[name].type if name in _FIELDS else None
    if kind == "int":
      v = d[name] = as_int(v, f"config.{name}")
    elif kind == "tuple":
      d[name] = tuple(v)
    elif kind == "float":
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"config.{name} must be a finite number, got {v!r}")
      v = d[name] = float(v)
    low, strict = _BOUNDS.get(name, (None, False))
    if low is not None and (v < low or (strict and v == low)):
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


ADDED_DEFAULTS = {n: f.default for n, f in _FIELDS.items() if f.default is not dataclasses.MISSING}


def diff(old: dict, new: dict) -> dict:
  """{field: [old, new]} for every (dotted) field that differs."""
  a, b = {**ADDED_DEFAULTS, **_flat(old)}, _flat(new)
  return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def meaningful(changes: dict) -> dict:
  return {k: v for k, v in changes.items() if k.split(".")[0] not in HARMLESS}


def check_config(config: TrainConfig, workdir: str, allow_change: bool = False) -> dict:
  """Compares `config` with WORKDIR/config.json; returns the differences.

  Raises ConfigChanged (one line: the differences and the flag that accepts
  them) when a meaningful field differs and not allow_change.
  """
  old = saved_config(workdir)
  if old is None:
    return {}
  changes = diff(old, config.to_dict())
  bad = meaningful(changes)
  if bad and not allow_change:
    listed = "; ".join(f"{k}: {json.dumps(o)} -> {json.dumps(n)}" for k, (o, n) in bad.items())
    raise ConfigChanged(f"the config differs from {os.path.join(workdir, CONFIG_FILE)} in "
                        f"{listed}; resume with the saved values, use a new --workdir, or pass "
                        "--allow_config_change to continue this run with the change")
  return changes


def record_config(config: TrainConfig, workdir: str, changes: dict, step: int | None,
                  fresh: bool = False) -> None:
  """Writes config.json for a new run (fresh: no checkpoint yet); appends the changes of a
  resume to the history."""
  path = os.path.join(workdir, CONFIG_FILE)
  if fresh or not os.path.exists(path):
    text = json.dumps(config.to_dict(), indent=2)  # before the file is opened
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  elif changes:
    with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
      f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step,
                          "changes": changes}) + "\n")
