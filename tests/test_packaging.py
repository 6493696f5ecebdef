"""pyproject.toml: its pins are requirements.txt's, and `pip install .` (non-editable, into a
fresh folder that reuses the installed dependencies, no network, no build isolation) gives
focus_jax, the launch package, one console command per launcher and the configs by name."""
import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = ("convert", "export_hf", "generate", "evaluate", "train", "plan", "demo_memory")


def _pins(lines):
  return sorted(x.split("#")[0].strip() for x in lines
                if x.split("#")[0].strip() and not x.startswith("focus-jax"))


def test_pyproject_pins_are_requirements():
  meta = tomllib.loads(open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read())
  project = meta["project"]
  declared = list(project["dependencies"])
  for extra in project["optional-dependencies"].values():
    declared += extra
  with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
    assert _pins(declared) == _pins(f.readlines())
  scripts = project["scripts"]
  assert sorted(scripts) == sorted("focus-jax-" + n.replace("_", "-") for n in LAUNCHERS)
  for name, target in scripts.items():
    module, fn = target.split(":")
    assert module == "launch.console" and fn == name[len("focus-jax-"):].replace("-", "_")
    assert os.path.isfile(os.path.join(ROOT, "launch", fn + ".py"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """`pip install --target` of a copy of the source tree (the checkout stays clean)."""
  pytest.importorskip("setuptools")
  tmp = tmp_path_factory.mktemp("pkg")
  src = tmp / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  for name in ("focus_jax", "launch", "configs"):
    shutil.copytree(os.path.join(ROOT, name), src / name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  site = tmp / "site"
  r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                      "--no-build-isolation", f"--target={site}", str(src)],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  env = dict(os.environ, PYTHONPATH=str(site))   # the installed copy, not the checkout
  work = tmp / "elsewhere"
  work.mkdir()
  return site, env, work


def test_installed_copy_and_console_commands(installed):
  site, env, work = installed
  for name in LAUNCHERS:
    assert os.access(site / "bin" / ("focus-jax-" + name.replace("_", "-")), os.X_OK)
  r = subprocess.run([str(site / "bin" / "focus-jax-train"), "--help"], cwd=work, env=env,
                     capture_output=True, text=True, timeout=120)
  assert "Traceback" not in r.stderr, r.stderr[-2000:]   # absl's --help exits with status 1
  assert r.stdout.startswith("Trains FocusLLM's candidate projections.")
  for flag in ("--config", "--workdir", "--export_only", "--eval"):
    assert flag in r.stdout
  # the installed modules are the ones imported; shipped data came along
  code = ("import focus_jax, launch, json; from launch.console import resolve_config; "
          "from pathlib import Path; import importlib.util as u; "
          "spec = u.spec_from_file_location('c', resolve_config('smollm2_memory')); "
          "m = u.module_from_spec(spec); spec.loader.exec_module(m); "
          "t = Path(focus_jax.__file__).parent / 'trained' / 'smollm2_memory'; "
          "print(json.dumps([focus_jax.__file__, launch.__file__, resolve_config('tiny.py'), "
          "sorted(p.name for p in t.iterdir()), m.get_config().to_dict()], default=str))")
  r = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  fj, la, tiny, trained, cfg = json.loads(r.stdout)
  assert fj.startswith(str(site)) and la.startswith(str(site))
  assert tiny == str(site / "configs" / "tiny.py")
  assert trained == ["focus_candidate.safetensors", "focus_config.json"]
  from configs import smollm2_memory   # the source tree's config
  assert cfg == json.loads(json.dumps(smollm2_memory.get_config().to_dict(), default=str))


def test_installed_train_finds_config_by_name(installed):
  site, env, work = installed
  train = str(site / "bin" / "focus-jax-train")
  r = subprocess.run([train, "--config=tiny", f"--workdir={work / 'w'}", "--export_only"],
                     cwd=work, env=env, capture_output=True, text=True, timeout=120)
  # the config loaded (by name, from the installed copy): the run got as far as the workdir
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1] == f"train: error: no checkpoint in {work / 'w'}/checkpoints to export"
  r = subprocess.run([train, "--config=no_such_config", f"--workdir={work / 'w'}"], cwd=work,
                     env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1] == "train: error: --config=no_such_config: no such file"
