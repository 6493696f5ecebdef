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
sha256 is pinned here and checked before use.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys

from focus_jax.assets import sha256_file

HERE = Path(__file__).resolve().parent
SHIPPED = {"smollm2_memory": "67789a6a87a04b8a33afb42c69fd8eda0ab09aee749e58407c2e68895bd51246"}   # name -> sha256 of focus_candidate.safetensors
CANDIDATE_FILE = "focus_candidate.safetensors"
FOCUS_CONFIG = "focus_config.json"


class TrainedError(RuntimeError):
  """A shipped file is missing or does not match its pinned sha256."""


def folder(name: str = "smollm2_memory") -> Path:
  """The shipped folder of `name`, after checking its candidate file's sha256."""
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


def write(model_dir, name: str = "smollm2_memory") -> str:
  """Writes the shipped file from a trained focus_jax checkpoint (bfloat16); returns its sha256."""
  import ml_dtypes
  import numpy as np
  from focus_jax.checkpoint import layout
  from focus_jax.checkpoint.orbax import load_checkpoint
  from focus_jax.checkpoint.safetensors_io import write_safetensors
  model, extras = load_checkpoint(model_dir)
  if not model.has_candidates:
    raise TrainedError(f"{model_dir} has no candidate projections")
  bf16 = np.dtype(ml_dtypes.bfloat16)
  items = [(n, (lambda t=t: np.asarray(t(), np.float32).astype(bf16)), shape, bf16)
           for n, t, shape, _ in layout.iter_hf_tensors(model, candidates=True)]
  d = HERE / name
  d.mkdir(exist_ok=True)
  tmp = d / (CANDIDATE_FILE + ".tmp")
  write_safetensors(tmp, items)
  os.replace(tmp, d / CANDIDATE_FILE)
  fc = extras["focus_config"]
  (d / FOCUS_CONFIG).write_text(json.dumps(fc.to_dict(), indent=2) + "\n")
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
  except TrainedError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0

