"""Console commands of an installed focus_jax (pyproject.toml [project.scripts]) and the
lookup of training configs by name.

  focus-jax-train --config=smollm2_memory --workdir=out/run1    # = python -m launch.train
  focus-jax-convert, -export-hf, -generate, -evaluate, -plan, -demo-memory

Each command runs its launcher as `python -m launch.NAME` does, with the same flags.
--config: a path that exists is used as given; otherwise a bare name ("tiny",
"smollm2_memory.py") is looked up among the configs shipped with the package
(the `configs` package: configs/*.py of the source tree).
"""
from __future__ import annotations

import importlib.util
import os
import runpy


def config_dirs() -> list[str]:
  """The folders of the `configs` package (the installed copy, or the source tree's)."""
  spec = importlib.util.find_spec("configs")
  return list(spec.submodule_search_locations or []) if spec else []


def resolve_config(value: str) -> str:
  """--config's value, with a missing path replaced by the shipped config of that name."""
  path, sep, rest = value.partition(":")   # ml_collections: path[:argument]
  if not path or os.path.exists(path) or os.sep in path.rstrip(os.sep):
    return value
  name = path if path.endswith(".py") else path + ".py"
  for folder in config_dirs():
    candidate = os.path.join(folder, name)
    if os.path.isfile(candidate):
      return candidate + sep + rest
  return value


def resolve_config_argv(argv: list[str]) -> list[str]:
  out, i = list(argv), 1
  while i < len(out):
    if out[i].startswith("--config="):
      out[i] = "--config=" + resolve_config(out[i][len("--config="):])
    elif out[i] == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
      i += 1
    i += 1
  return out


def _run(name: str) -> None:
  runpy.run_module(f"launch.{name}", run_name="__main__", alter_sys=True)


def convert():
  _run("convert")


def export_hf():
  _run("export_hf")


def generate():
  _run("generate")


def evaluate():
  _run("evaluate")


def train():
  _run("train")


def plan():
  _run("plan")


def demo_memory():
  _run("demo_memory")
