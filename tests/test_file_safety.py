"""No user file is lost on any path: --overwrite never deletes its input, a symlinked
output keeps its link, training and evaluation write only into folders of their own,
a workdir in use is locked (and a crash never leaves the lock stuck), focus_jax.trained
validates before it replaces, --logits_out replaces a file only with --overwrite, and an
evaluation refuses to resume after its checkpoint was rewritten."""
import contextlib
import hashlib
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from configs import tiny
from focus_jax import trained
from focus_jax.checkpoint import atomic
from focus_jax.checkpoint.hf import export_hf, load_hf
from focus_jax.checkpoint.orbax import load_checkpoint, save_checkpoint
from focus_jax.config import ModelConfig
from focus_jax.eval import results
from focus_jax.model import LlamaForCausalLM, add_candidates
from focus_jax.train import loop
from test_cli_safety import ROOT, make_hf, one_line_error, run_cli

CFG = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, bos_token_id=1, eos_token_ids=(2,))


def _tree(path):
  return sorted((str(p.relative_to(path)), p.is_symlink(),
                 p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
                for p in Path(path).rglob("*"))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  """An HF folder, its checkpoint and export (written in-process), a plain tiny checkpoint
  and an id file."""
  d = tmp_path_factory.mktemp("safety")
  make_hf(d / "hf")
  model, hf_cfg = load_hf(d / "hf")
  save_checkpoint(d / "ckpt", model, hf_cfg)
  export_hf(model, hf_cfg, d / "export")
  save_checkpoint(d / "small", LlamaForCausalLM(CFG, nnx.Rngs(0), std=0.3))
  np.save(d / "ids.npy", np.asarray([5, 6, 7]))
  return d


# 1. --overwrite never deletes its input -------------------------------------------------

def test_overwrite_refuses_an_output_that_holds_the_input(made, tmp_path):
  c = tmp_path / "C"
  shutil.copytree(made / "ckpt", c)
  shutil.copytree(made / "hf", c / "my_source")
  before = _tree(c)
  r = run_cli("launch.convert", f"--hf_model={c / 'my_source'}", f"--out={c}", "--overwrite")
  one_line_error(r, "convert", "lies inside", str(c / "my_source"))
  e = tmp_path / "E"
  shutil.copytree(made / "export", e)
  shutil.copytree(made / "ckpt", e / "ckpt")
  before_e = _tree(e)
  r = run_cli("launch.export_hf", f"--checkpoint={e / 'ckpt'}", f"--out={e}", "--overwrite")
  one_line_error(r, "export_hf", "lies inside")
  assert _tree(c) == before and _tree(e) == before_e
  # One folder that is both an HF folder and a checkpoint, named as is or through a link.
  both = tmp_path / "both"
  shutil.copytree(made / "ckpt", both)
  for f in ("config.json", "model.safetensors"):
    shutil.copy(made / "hf" / f, both / f)
  (tmp_path / "link").symlink_to(both)
  for src, out in [(both, both), (tmp_path / "link", both), (both, tmp_path / "link"),
                   (tmp_path / "link" / "params", both), (c / "my_source", c)]:
    # Without --overwrite too: not told to pass --overwrite, which would then refuse.
    for overwrite in (True, False):
      with pytest.raises(FileExistsError, match="lies inside") as err:
        atomic.check_target(out, overwrite, sources=[src])
      assert "pass overwrite" not in str(err.value)
  # An input beside the output, or the output inside the input, is fine.
  assert atomic.check_target(c, True, sources=[made / "hf"]) == c
  assert atomic.check_target(made / "hf" / "new", True, sources=[made / "hf"]).name == "new"


def test_a_foreign_folder_is_not_told_to_pass_overwrite(tmp_path):
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError) as e:
    atomic.check_target(mine, False)
  assert "not a focus_jax checkpoint" in str(e.value) and "pass overwrite" not in str(e.value)
  assert (mine / "notes.txt").read_text() == "mine"


# 12. a symlinked output ------------------------------------------------------------------

def test_symlinked_out_replaces_the_target_and_keeps_the_link(made, tmp_path):
  real = tmp_path / "store" / "ckpt"
  real.parent.mkdir()
  shutil.copytree(made / "small", real)
  link = tmp_path / "link"
  link.symlink_to(real)
  new = LlamaForCausalLM(CFG, nnx.Rngs(7), std=0.3)
  save_checkpoint(link, new, overwrite=True)
  assert link.is_symlink() and os.readlink(link) == str(real)
  assert sorted(os.listdir(tmp_path)) == ["link", "store"]
  assert sorted(os.listdir(real.parent)) == ["ckpt"]          # no .ckpt.tmp-* left behind
  got, _ = load_checkpoint(real)
  np.testing.assert_array_equal(got.model.embed_tokens.embedding[...],
                                new.model.embed_tokens.embedding[...])
  dangling = tmp_path / "dangling"
  dangling.symlink_to(tmp_path / "nowhere")
  with pytest.raises(FileExistsError, match="symbolic link to a missing path"):
    save_checkpoint(dangling, new, overwrite=True)
  assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()


# 2. and 6. the training workdir ------------------------------------------------------------

def _config():
  c = tiny.get_config()
  c.tensorboard = False
  c.export_model = False
  return c


def test_train_refuses_a_workdir_that_is_not_its_own(made, tmp_path, monkeypatch):
  users = tmp_path / "users"
  users.mkdir()
  (users / "metrics.jsonl").write_text("my own metrics\n")
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.setenv("HOME", str(home))
  work = tmp_path / "work"
  work.mkdir()
  monkeypatch.chdir(work)
  cases = {str(made / "hf"): "holds other files", str(made / "ckpt"): "holds other files",
           str(users): "holds other files", ".": "working folder", str(home): "home folder"}
  before = {p: _tree(p) for p in cases}
  for w, why in cases.items():
    with pytest.raises(FileExistsError, match=why):
      loop.train(_config(), w)
    assert _tree(w) == before[w], w
  r = run_cli("launch.train", "--config=configs/tiny.py", f"--workdir={made / 'hf'}")
  one_line_error(r, "train", "--workdir=", "holds other files", "config.json")
  assert _tree(made / "hf") == before[str(made / "hf")]
  # New, empty, marked, or a run from before the marker (config.json + checkpoints/): its own.
  (tmp_path / "old_run" / "checkpoints").mkdir(parents=True)
  (tmp_path / "old_run" / "config.json").write_text("{}")
  (tmp_path / "marked").mkdir()
  (tmp_path / "marked" / atomic.RUN_MARKER).write_text("{}")
  (tmp_path / "marked" / "anything.txt").write_text("x")
  (tmp_path / "empty").mkdir()
  for w in ("old_run", "marked", "empty", "new"):
    atomic.check_own_folder(tmp_path / w, atomic.RUN, "--workdir")


HOLDER = """
import sys, time
from focus_jax.checkpoint.atomic import exclusive_lock
with exclusive_lock(sys.argv[1], "w"):
  print("held", flush=True)
  time.sleep(600)
"""


def test_a_workdir_in_use_is_locked_and_a_crash_frees_it(tmp_path):
  w = tmp_path / "run"
  w.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(w / atomic.RUN_MARKER)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(atomic.LockHeld, match=f"process {holder.pid}"):
      loop.train(_config(), str(w))
    assert sorted(os.listdir(w)) == [atomic.RUN_MARKER]   # nothing written by the refused
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The holder died without releasing anything: the lock is free again.
  with contextlib.ExitStack() as hold:
    loop.prepare_workdir(_config(), str(w), hold=hold)
    marker = json.loads((w / atomic.RUN_MARKER).read_text())
    assert marker["pid"] == os.getpid() and (w / "config.json").is_file()
    with pytest.raises(atomic.LockHeld, match=f"process {os.getpid()}"):
      with contextlib.ExitStack() as second:   # a second trainer, while this one holds it
        loop.prepare_workdir(_config(), str(w), hold=second)
  with contextlib.ExitStack() as hold:       # released when the first one finished
    loop.prepare_workdir(_config(), str(w), hold=hold)


def test_every_process_of_a_run_stops_when_its_workdir_is_locked(tmp_path):
  """Two processes (jax.distributed on 127.0.0.1): process 0 cannot take the lock, and
  process 1 stops too instead of waiting for it."""
  import portpicker
  w = tmp_path / "run"
  w.mkdir()
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(w / atomic.RUN_MARKER)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
  try:
    assert holder.stdout.readline().strip() == "held"
    port = portpicker.pick_unused_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "launch.train", "--config=configs/tiny.py", f"--workdir={w}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    holder.kill()
    holder.wait()
  for p, (_, err) in zip(procs, outs):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 1 and "Traceback" not in err, err[-2000:]
    assert lines[-1].startswith("train: error:") and "is in use by" in lines[-1], err[-2000:]
    assert sum(ln.startswith("train: error:") for ln in lines) == 1
  assert f"in use by process {holder.pid}" in outs[0][1]
  assert sorted(os.listdir(w)) == [atomic.RUN_MARKER]


# 3. and 10. evaluation OUT ------------------------------------------------------------------

def _evaluate(*args):
  return subprocess.run([sys.executable, "-m", "launch.evaluate", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_evaluate_writes_only_into_its_own_folder_and_its_own_model(made, tmp_path):
  ckpt = tmp_path / "ckpt"
  shutil.copytree(made / "small", ckpt)
  (tmp_path / "doc.txt").write_text("".join(chr(97 + (i * 7) % 26) for i in range(100)))
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "summary.json").write_text('{"my": "results"}')
  (mine / "passkey.png").write_bytes(b"my figure")
  before = _tree(mine)
  args = [f"--checkpoint={ckpt}", "--tokenizer=byte", "--task=perplexity",
          f"--data={tmp_path / 'doc.txt'}", "--lengths=64", "--stride=0", "--loss_tokens=8"]
  for check in (results.check_out, lambda o: results.check_run(o, {"task": "perplexity"})):
    with pytest.raises(FileExistsError, match="holds other files .* not an evaluation folder"):
      check(mine)   # what launch.evaluate calls before the model loads and before any write
  r = _evaluate(*args, f"--out={mine}")
  one_line_error(r, "launch.evaluate", f"--out={mine} holds other files", "left untouched")
  assert _tree(mine) == before
  out = tmp_path / "run"
  r = _evaluate(*args, f"--out={out}")
  assert r.returncode == 0, r.stderr[-2000:]
  run = json.loads((out / "run.json").read_text())
  assert run[results.MODEL_KEY] == results.checkpoint_identity(ckpt)
  # The same path, another model: the run is not resumed with it.
  save_checkpoint(ckpt, LlamaForCausalLM(CFG, nnx.Rngs(3), std=0.3), overwrite=True)
  lines = (out / "results.jsonl").read_text()
  r = _evaluate(*args, f"--out={out}")
  one_line_error(r, "launch.evaluate", "another model", "new --out")
  assert (out / "results.jsonl").read_text() == lines


def test_model_identity_in_run_json(made, tmp_path):
  ckpt = tmp_path / "ckpt"
  shutil.copytree(made / "small", ckpt)
  ident = results.checkpoint_identity(ckpt)
  assert ident == results.checkpoint_identity(ckpt) and len(ident) == 64
  # A plain re-hash of the files (all under 2 MiB here, so hashed whole).
  h = hashlib.sha256()
  for p in sorted(q for q in ckpt.rglob("*") if q.is_file()):
    h.update(f"{p.relative_to(ckpt).as_posix()}\0{p.stat().st_size}\0".encode() + p.read_bytes())
  assert ident == h.hexdigest()
  settings = {"checkpoint": str(ckpt), "task": "perplexity"}
  out = tmp_path / "out"
  out.mkdir()
  (out / "run.json").write_text(json.dumps(settings))       # from before the field
  results.check_run(out, settings, ident)
  assert json.loads((out / "run.json").read_text()) == {**settings, results.MODEL_KEY: ident}
  results.check_run(out, settings, ident)                   # the same model resumes
  save_checkpoint(ckpt, LlamaForCausalLM(CFG, nnx.Rngs(1), std=0.3), overwrite=True)
  with pytest.raises(ValueError, match="another model"):
    results.check_run(out, settings, results.checkpoint_identity(ckpt))


# 4. focus_jax.trained --write / --name / --out ----------------------------------------------

def _candidate_ckpt(path, cfg, focus_config=True, seed=0):
  model = add_candidates(LlamaForCausalLM(cfg, nnx.Rngs(seed), std=0.3))
  save_checkpoint(path, model, focus_config={} if focus_config else None)
  return model


def _shipped(tmp_path, monkeypatch, model):
  """A stand-in package folder holding `tiny`: candidates of `model`, pinned."""
  from focus_jax.checkpoint import layout
  here = tmp_path / "pkg"
  (here / "tiny").mkdir(parents=True)
  sd = {n: np.asarray(get(), np.float32).astype(ml_dtypes.bfloat16)
        for n, get, _, _ in layout.iter_hf_tensors(model, candidates=True)}
  save_file(sd, str(here / "tiny" / trained.CANDIDATE_FILE))
  (here / "tiny" / trained.FOCUS_CONFIG).write_text("{}\n")
  monkeypatch.setattr(trained, "HERE", here)
  monkeypatch.setitem(trained.SHIPPED, "tiny",
                      trained.sha256_file(here / "tiny" / trained.CANDIDATE_FILE))
  return here / "tiny"


def test_trained_write_validates_before_it_replaces(tmp_path, monkeypatch, capsys):
  shipped = _shipped(tmp_path, monkeypatch, _candidate_ckpt(tmp_path / "first", CFG))
  before = _tree(shipped)
  _candidate_ckpt(tmp_path / "no_fc", CFG, focus_config=False)
  _candidate_ckpt(tmp_path / "other", CFG.replace(hidden_size=48, num_heads=6), seed=1)
  for src, why in [("no_fc", "focus_config.json: no such file"), ("other", "does not match")]:
    assert trained.main([f"--write={tmp_path / src}", "--name=tiny"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("focus_jax.trained: error:") and why in err[0]
    assert _tree(shipped) == before, src
  assert trained.main([f"--write={tmp_path / 'first'}", "--name=../../x"]) == 1
  assert "not a plain name" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == ["first", "no_fc", "other", "pkg"]
  assert not (tmp_path.parent / "x").exists()
  # A valid one replaces both files, with the checkpoint's candidates in bfloat16.
  new = _candidate_ckpt(tmp_path / "new", CFG, seed=5)
  assert trained.main([f"--write={tmp_path / 'new'}", "--name=tiny"]) == 0
  sha = capsys.readouterr().out.split()[-1]
  f = shipped / trained.CANDIDATE_FILE
  assert sha == hashlib.sha256(f.read_bytes()).hexdigest()
  got = load_file(str(f))
  q = np.asarray(new.model.layers.self_attn.candidate_q_proj.kernel[...], np.float32)
  np.testing.assert_array_equal(
      got["model.layers.1.self_attn.candidate_q_proj.weight"].astype(np.float32),
      q[1].T.astype(ml_dtypes.bfloat16).astype(np.float32))
  assert sorted(os.listdir(shipped)) == [trained.CANDIDATE_FILE, trained.FOCUS_CONFIG]


def test_trained_out_onto_an_existing_folder_is_one_line(tmp_path, capsys):
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  assert trained.main([f"--out={mine}"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "not an HF export" in err[0] and "Traceback" not in err[0]
  assert _tree(mine) == [("notes.txt", False, b"mine")]
  out = tmp_path / "out"
  assert trained.main([f"--out={out}"]) == 0
  assert trained.main([f"--out={out}"]) == 1
  assert "already exists" in capsys.readouterr().err
  assert trained.main([f"--out={out}", "--overwrite"]) == 0


# 5. --logits_out ---------------------------------------------------------------------------

def test_logits_out_replaces_a_file_only_with_overwrite(made, tmp_path):
  out = tmp_path / "mine.npz"
  out.write_bytes(b"my own file")
  args = [f"--checkpoint={made / 'small'}", f"--input_ids={made / 'ids.npy'}",
          "--max_new_tokens=2", "--ignore_eos", f"--logits_out={out}"]
  r = run_cli("launch.generate", *args)
  one_line_error(r, "generate", "already exists", "--overwrite")
  assert "load:" not in r.stderr and out.read_bytes() == b"my own file"
  r = run_cli("launch.generate", *args, "--overwrite")
  assert r.returncode == 0, r.stderr[-2000:]
  assert np.load(out)["logits"].shape == (2, CFG.vocab_size)
  assert sorted(os.listdir(tmp_path)) == ["mine.npz"]
