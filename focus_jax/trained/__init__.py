"""Trained FocusLLM candidates that ship with focus_jax (one bfloat16 safetensors file each).

  smollm2_memory/   candidate q/k/v/o projections of the embedded SmolLM2-135M-
                    Instruct trained by `make train-smollm2` (configs/
                    smollm2_memory.py), HF names, + the focus_config.json they
                    were trained with.

  python -m focus_jax.trained --out=out/smollm2_memory_hf   # HF folder: base + candidates
  python -m focus_jax.trained --write=RUN/model             # replace the shipped file

The folder written by --out is the embedded SmolLM2 HF copy (files linked, not
copied) plus the shipped focus_candidate.safetensors and focus_config.json:
`launch.convert --hf_model=` reads it like any FocusLLM export. The file's
sha256 is pinned here and checked before use. --out onto an existing folder
needs --overwrite, which replaces only a folder of this kind.

--write validates everything first (a focus_jax checkpoint with candidate
projections and a readable focus_config.json; finite float candidates with the
names and shapes of the shipped file, or of the embedded SmolLM2 where none
ships yet), then replaces both shipped files atomically. --name is a plain
identifier (a folder of this package).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys

from focus_jax.assets import sha256_file

HERE = Path(__file__).resolve().parent
SHIPPED = {"smollm2_memory": "f056332ce43a570a135d6e2eb76e62013e72fc292b2b08e7c15db837f43544a4"}   # name -> sha256 of focus_candidate.safetensors
CANDIDATE_FILE = "focus_candidate.safetensors"
FOCUS_CONFIG = "focus_config.json"


class TrainedError(RuntimeError):
  """A shipped file is missing or does not match its pinned sha256."""


def _check_name(name: str) -> None:
  if not name.isidentifier():
    raise TrainedError(f"--name={name!r} is not a plain name (letters, digits and _, as in "
                       f"{sorted(SHIPPED)})")


def folder(name: str = "smollm2_memory") -> Path:
  """The shipped folder of `name`, after checking its candidate file's sha256."""
  _check_name(name)
  if name not in SHIPPED:
    raise TrainedError(f"no shipped candidates named {name!r}; available: {sorted(SHIPPED)}")
  d = HERE / name
  f = d / CANDIDATE_FILE
  if SHIPPED[name] is None or not f.is_file():
    raise TrainedError(f"{name}: no trained candidates ship with this version")
  got = sha256_file(f)
  if got != SHIPPED[name]:
    raise TrainedError(f"{f}: sha256 {got} does not match the pinned {SHIPPED[name]}")
  return d


def hf_folder(out, name: str = "smollm2_memory", overwrite: bool = False) -> Path:
  """Writes OUT: the embedded SmolLM2 HF copy (linked) + the shipped candidates."""
  from focus_jax import assets
  from focus_jax.checkpoint.atomic import EXPORT, atomic_dir
  src = folder(name)
  base = assets.smollm2_hf_dir()
  with atomic_dir(out, overwrite, owner=EXPORT) as tmp:
    for p in base.iterdir():
      if p.is_file() and p.name not in (CANDIDATE_FILE, FOCUS_CONFIG):
        os.symlink(p.resolve(), tmp / p.name)
    for n in (CANDIDATE_FILE, FOCUS_CONFIG):
      os.symlink(src / n, tmp / n)
  return Path(out)


def _expected_shapes(name: str) -> tuple[dict, str]:
  """{HF name: shape} the candidates of `name` must have, and where that comes from."""
  shipped = HERE / name / CANDIDATE_FILE
  if shipped.is_file():
    from focus_jax.checkpoint.safetensors_io import SafetensorsReader
    with SafetensorsReader([shipped]) as r:
      return {n: r.shape(n) for n in r.names}, f"the shipped {shipped}"
  from focus_jax import assets
  from focus_jax.checkpoint import layout
  from focus_jax.config import CANDIDATE_PROJS, ModelConfig
  base = assets.smollm2_hf_dir()
  cfg = ModelConfig.from_hf(json.loads((base / "config.json").read_text()))
  shapes = {}
  for t in layout.tensors(cfg, CANDIDATE_PROJS):
    if t.candidate:
      for i in range(cfg.num_layers) if t.stacked else (None,):
        shapes[t.hf(i) if i is not None else t.hf()] = tuple(t.hf_shape())
  return shapes, f"the embedded SmolLM2 ({base})"


def _read_focus_config(model_dir: Path):
  from focus_jax.config import FocusConfig
  path = model_dir / FOCUS_CONFIG
  if not path.is_file():
    raise TrainedError(f"{path}: no such file; --write needs a trained run's model folder "
                       "(RUN/model), which holds the settings its candidates were trained with")
  try:
    return FocusConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise TrainedError(f"{path} is broken ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from None


def write(model_dir, name: str = "smollm2_memory") -> str:
  """Writes the shipped files from a trained focus_jax checkpoint (bfloat16 candidates +
  focus_config.json) once every check passed; returns the candidate file's sha256."""
  import ml_dtypes
  import numpy as np
  from focus_jax.checkpoint import layout
  from focus_jax.checkpoint.atomic import atomic_file
  from focus_jax.checkpoint.orbax import load_checkpoint
  from focus_jax.checkpoint.safetensors_io import write_safetensors
  _check_name(name)
  model_dir = Path(model_dir)
  fc = _read_focus_config(model_dir)
  try:
    model, _ = load_checkpoint(model_dir)
  except (ValueError, TypeError, KeyError, OSError) as e:
    raise TrainedError(f"{model_dir}: not a readable focus_jax checkpoint ("
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
  if not model.has_candidates:
    raise TrainedError(f"{model_dir} has no candidate projections")
  want, where = _expected_shapes(name)
  bf16 = np.dtype(ml_dtypes.bfloat16)
  arrays = {}
  for n, get, shape, dtype in layout.iter_hf_tensors(model, candidates=True):
    if not np.issubdtype(np.dtype(dtype), np.floating) and np.dtype(dtype) != bf16:
      raise TrainedError(f"{model_dir}: candidate {n} has dtype {dtype}, not a float type")
    if n not in want or tuple(shape) != tuple(want[n]):
      raise TrainedError(f"{model_dir}: candidate {n} of shape {tuple(shape)} does not match "
                         f"{where} ({tuple(want[n]) if n in want else 'no such tensor'}); "
                         "candidates of another model cannot ship as these")
    x = np.asarray(get(), np.float32)
    if not np.isfinite(x).all():
      raise TrainedError(f"{model_dir}: candidate {n} holds NaN or Inf")
    arrays[n] = x.astype(bf16)
  missing = sorted(set(want) - set(arrays))
  if missing:
    raise TrainedError(f"{model_dir}: candidates {missing[:3]} of {where} are missing")
  items = [(n, (lambda a=a: a), a.shape, bf16) for n, a in arrays.items()]
  d = HERE / name
  d.mkdir(exist_ok=True)
  with atomic_file(d / CANDIDATE_FILE, True, "--write") as tmp_c, \
       atomic_file(d / FOCUS_CONFIG, True, "--write") as tmp_f:
    write_safetensors(tmp_c, items)
    tmp_f.write_text(json.dumps(fc.to_dict(), indent=2) + "\n")
  return sha256_file(d / CANDIDATE_FILE)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--name", default="smollm2_memory")
  ap.add_argument("--out", help="write an HF folder: base model + shipped candidates")
  ap.add_argument("--overwrite", action="store_true", help="replace an earlier --out folder")
  ap.add_argument("--write", metavar="MODEL_DIR", help="replace the shipped file from a "
                  "trained checkpoint (then pin the printed sha256 in SHIPPED)")
  a = ap.parse_args(argv)
  try:
    if a.write:
      print(f"{a.name}: sha256 {write(a.write, a.name)}")
    if a.out:
      print(hf_folder(a.out, a.name, a.overwrite))
  except (TrainedError, ValueError, OSError) as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"focus_jax.trained: error: {msg}", file=sys.stderr)
    return 1
  return 0

