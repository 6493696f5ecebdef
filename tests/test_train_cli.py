"""launch.train as a user meets it: train -> WORKDIR/model -> launch.generate, --eval and
--export_only on a run with clipping off, resume with a changed config refused before
anything is written, resume=False into a run refused, a damaged newest step set aside."""
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# clip_norm=0 and weight_decay=0.1: an optimiser unlike the defaults (evaluate must cope).
BASE = ["--config=configs/tiny.py", "--config.steps=2", "--config.checkpoint_every=1",
        "--config.keep_checkpoints=3", "--config.async_checkpoints=False",
        "--config.tensorboard=False", "--config.clip_norm=0.0", "--config.weight_decay=0.1"]


def run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def one_line_error(r, prog, *needles):
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
  assert lines[-1].startswith(f"{prog}: error:"), r.stderr[-3000:]
  for n in needles:
    assert n in lines[-1], (n, lines[-1])


def snapshot(d: Path):
  return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
          for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A 2-step run. The workdir holds what a killed earlier attempt left without any
  checkpoint (its marker, its config.json with another lr, metrics of steps 1-2): a fresh
  run replaces both, so metrics.jsonl has each step once."""
  w = tmp_path_factory.mktemp("train_cli") / "w"
  w.mkdir()
  (w / ".focus_jax_run").write_text('{"written_by": "focus_jax", "pid": 1}\n')
  (w / "config.json").write_text(json.dumps({"lr": 123.0}))
  (w / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
  r = run("launch.train", *BASE, f"--workdir={w}")
  assert r.returncode == 0, r.stderr[-3000:]
  return w, r.stderr


def test_fresh_run_replaces_what_a_checkpointless_attempt_left(run_dir):
  w, log = run_dir
  steps = [json.loads(ln)["step"] for ln in (w / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2]
  assert json.loads((w / "config.json").read_text())["lr"] == 1e-2
  assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["1", "2"]
  assert "Unable to initialize backend" not in log


def test_trained_model_generates(run_dir, tmp_path):
  w, _ = run_dir
  np.save(tmp_path / "ids.npy", np.arange(3, 40))
  r = run("launch.generate", f"--checkpoint={w / 'model'}", f"--input_ids={tmp_path / 'ids.npy'}",
          "--max_new_tokens=3", "--ignore_eos", "--mode=focus", "--chunk_size=16",
          "--local_window=16", "--min_focus_len=0", f"--logits_out={tmp_path / 'l.npz'}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "no candidate projections" not in r.stderr  # the trained ones were exported
  toks = np.load(tmp_path / "l.npz")["tokens"]
  assert r.stdout.split() == [str(t) for t in toks] and len(toks) == 3


def test_eval_and_export_only(run_dir):
  w, _ = run_dir
  r = run("launch.train", *BASE, f"--workdir={w}", "--eval=2")
  assert r.returncode == 0, r.stderr[-3000:]
  ev = json.loads(r.stdout.strip().splitlines()[-1])
  assert ev["step"] == 2 and np.isfinite(ev["loss"]) and np.isfinite(ev["loss_no_memory"])
  before = (w / "model" / "model_config.json").stat().st_mtime_ns
  ckpts = snapshot(w / "checkpoints")
  r = run("launch.train", *BASE, f"--workdir={w}", "--export_only")
  assert r.returncode == 0, r.stderr[-3000:]
  assert (w / "model" / "model_config.json").stat().st_mtime_ns != before
  assert snapshot(w / "checkpoints") == ckpts


def test_resume_with_changed_lr_refuses_and_writes_nothing(run_dir):
  w, _ = run_dir
  before = snapshot(w)
  r = run("launch.train", *BASE, f"--workdir={w}", "--config.lr=0.5", "--config.steps=3")
  one_line_error(r, "train", "lr: 0.01 -> 0.5", "steps: 2 -> 3", "--allow_config_change")
  r = run("launch.train", *BASE, f"--workdir={w}", "--config.resume=False")
  one_line_error(r, "train", "already holds checkpoints", "new --workdir")
  assert snapshot(w) == before  # config.json byte-identical, nothing else touched


def test_damaged_newest_step_falls_back_and_changes_are_recorded(run_dir, tmp_path):
  w = tmp_path / "w"
  shutil.copytree(run_dir[0], w)
  config_bytes = (w / "config.json").read_bytes()
  for f in (w / "checkpoints" / "2" / "state").rglob("*"):
    if f.is_file() and f.parent.name == "d":  # the array data files
      f.write_bytes(b"\0" * 8)
  r = run("launch.train", *BASE, f"--workdir={w}", "--config.steps=3", "--allow_config_change")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "checkpoint step 2 is damaged" in r.stderr and "resuming from step 1" in r.stderr
  assert (w / "checkpoints_damaged" / "step_2" / "state").is_dir()  # set aside, not deleted
  assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["1", "2", "3"]
  steps = [json.loads(ln)["step"] for ln in (w / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3]
  assert (w / "config.json").read_bytes() == config_bytes
  hist = [json.loads(ln) for ln in (w / "config_history.jsonl").read_text().splitlines()]
  assert len(hist) == 1 and hist[0]["changes"] == {"steps": [2, 3]}
