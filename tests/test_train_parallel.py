"""Training in subprocesses: exact resume after SIGKILL/SIGTERM, 8-device mesh, 2 processes.

The runs share a persistent compilation cache and use XLA's lowest CPU
optimisation level: the programs are tiny and compile time dominates.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/tiny.py", "--config.tensorboard=false", "--config.export_model=false"]
SMALL = ["--config.steps=3", "--config.batch_size=2", "--config.accum=2",
         "--config.checkpoint_every=1000"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
           XLA_FLAGS="--xla_backend_optimization_level=0",
           JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return e


def _train(workdir, *flags):
  return [sys.executable, "-m", "launch.train", *TINY, f"--workdir={workdir}", *flags]


def _rows(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for ln in f:
      try:
        out.append(json.loads(ln))
      except ValueError:
        pass  # a line being written
  return out


def _run_until(cmd, env, workdir, step, sig):
  """Starts cmd, sends `sig` once metrics.jsonl reaches `step`; returns the exit code."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    rows = _rows(workdir)
    if rows and rows[-1]["step"] >= step:
      proc.send_signal(sig)
      break
    time.sleep(0.01)
  _, err = proc.communicate(timeout=240)
  assert proc.returncode is not None
  return proc.returncode, err


def test_killed_and_resumed_run_repeats_the_uninterrupted_run(tmp_path, env):
  flags = ["--config.steps=40", "--config.checkpoint_every=4"]
  ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
  subprocess.run(_train(ref, *flags), cwd=ROOT, env=env, check=True, capture_output=True)
  rc, err = _run_until(_train(run, *flags), env, run, 10, signal.SIGKILL)
  assert rc == -signal.SIGKILL, f"the run ended before it was killed (rc {rc}): {err[-2000:]}"
  killed_at = _rows(run)[-1]["step"]
  assert killed_at < 40
  rc, err = _run_until(_train(run, *flags), env, run, killed_at + 8, signal.SIGTERM)
  assert rc == 0, err[-2000:]
  stopped_at = _rows(run)[-1]["step"]
  assert stopped_at < 40, "the run ended before SIGTERM"
  ckpts = sorted(int(p) for p in os.listdir(os.path.join(run, "checkpoints")) if p.isdigit())
  assert ckpts[-1] == stopped_at  # SIGTERM saved the step it stopped at
  subprocess.run(_train(run, *flags), cwd=ROOT, env=env, check=True, capture_output=True)
  a, b = _rows(ref), _rows(run)
  assert [r["step"] for r in b] == list(range(1, 41))
  np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=0, atol=1e-6)
  assert [r["data_crc"] for r in b] == [r["data_crc"] for r in a]


def _mesh_main(workdir):
  """Subprocess body: the same 3 steps on one device and on a data:2,chunk:4 mesh.

  Batch 2 leaves 2 tasks per data shard for 4 chunk devices: each repeats all
  of them (all_gather); batch 4 gives 4 tasks: each takes one (all_to_all).
  """
  from configs import tiny
  from focus_jax.train.loop import train
  from focus_jax.train.metrics import read_metrics
  out = {}
  for name, mesh, batch, accum, sizes in (("single", "", 2, 2, (16, 32)),
                                          ("gather", "data:2,chunk:4", 2, 2, (16, 32)),
                                          ("single_b4", "", 4, 1, (16,)),
                                          ("split", "data:2,chunk:4", 4, 1, (16,))):
    c = tiny.get_config()
    c.steps, c.batch_size, c.accum, c.checkpoint_every = 3, batch, accum, 1000
    c.tensorboard = c.export_model = False
    c.chunk_sizes = sizes
    c.mesh = mesh
    wd = os.path.join(workdir, name)
    train(c, wd)
    out[name] = read_metrics(wd)
  print("RESULT " + json.dumps(out))


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory, env):
  wd = str(tmp_path_factory.mktemp("mesh"))
  e = dict(env, XLA_FLAGS=env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
  p = subprocess.run([sys.executable, __file__, "mesh", wd], cwd=ROOT, env=e,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("one,eight", [("single", "gather"), ("single_b4", "split")])
def test_eight_device_data_chunk_mesh_equals_one_device(mesh_runs, one, eight):
  one, eight = mesh_runs[one], mesh_runs[eight]
  assert len(one) == len(eight) == 3
  for a, b in zip(one, eight):
    assert a["data_crc"] == b["data_crc"]
    for k in ("loss", "loss_continuation", "loss_repetition", "grad_norm"):
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("mesh", ["data:2", "fsdp:2"])
def test_two_processes_agree_with_each_other_and_one_device(tmp_path, env, mesh_runs, mesh):
  """jax.distributed on 127.0.0.1, one CPU device per process; data:2 (samples) or fsdp:2
  (parameters, gradients and AdamW state split too) spans both processes."""
  import portpicker
  port = portpicker.pick_unused_port()
  wd = str(tmp_path / "run")
  procs = [subprocess.Popen(
      _train(wd, *SMALL, f"--config.mesh={mesh}", "--config.chunk_sizes=(16,32)",
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  logs = [p.communicate(timeout=400)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  logged = [[float(ln.split("| loss ")[1].split()[0]) for ln in log.splitlines()
             if "| loss " in ln] for log in logs]
  assert len(logged[0]) == 3 and logged[0] == logged[1]
  rows = _rows(wd)  # written by process 0
  assert [r["step"] for r in rows] == [1, 2, 3]
  np.testing.assert_allclose([r["loss"] for r in rows],
                             [r["loss"] for r in mesh_runs["single"]], rtol=1e-5)


if __name__ == "__main__":
  if sys.argv[1] == "mesh":
    _mesh_main(sys.argv[2])
