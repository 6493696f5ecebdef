"""launch.convert / launch.export_hf as a careless user meets them: --overwrite never
touches a foreign folder, a kill during the replacement leaves a loadable output,
non-finite tensors are refused, errors are one line, default logs are one line per phase."""
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
L, H, KV, HD, V, FF = 2, 4, 2, 8, 64, 48


def run_cli(module, *args, env=None, cwd=ROOT):
  e = dict(os.environ, PYTHONPATH=str(ROOT))
  e.update(env or {})
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                        text=True, timeout=300, env=e)


def one_line_error(r, prog, *needles):
  """Exit 1, exactly one stderr line `prog: error: ...` holding every needle, no traceback."""
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert r.returncode == 1, r.stderr[-2000:]
  assert "Traceback" not in r.stderr and lines[-1].startswith(f"{prog}: error:"), r.stderr
  assert sum(ln.startswith(f"{prog}: error:") for ln in lines) == 1
  for n in needles:
    assert n in lines[-1], (n, lines[-1])
  return lines[-1]


def make_hf(path, nan_tensor=None):
  """A tiny LLaMA folder in HF layout (config.json + model.safetensors), written with numpy."""
  rng = np.random.default_rng(0)
  hidden = H * HD
  shapes = {"model.embed_tokens.weight": (V, hidden), "model.norm.weight": (hidden,),
            "lm_head.weight": (V, hidden)}
  for i in range(L):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (hidden,),
                   p + "post_attention_layernorm.weight": (hidden,),
                   p + "self_attn.q_proj.weight": (H * HD, hidden),
                   p + "self_attn.k_proj.weight": (KV * HD, hidden),
                   p + "self_attn.v_proj.weight": (KV * HD, hidden),
                   p + "self_attn.o_proj.weight": (hidden, H * HD),
                   p + "mlp.gate_proj.weight": (FF, hidden), p + "mlp.up_proj.weight": (FF, hidden),
                   p + "mlp.down_proj.weight": (hidden, FF)})
  sd = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
  if nan_tensor:
    sd[nan_tensor][:] = np.nan
  path.mkdir(parents=True)
  save_file(sd, str(path / "model.safetensors"))
  cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=V,
             hidden_size=hidden, intermediate_size=FF, num_hidden_layers=L,
             num_attention_heads=H, num_key_value_heads=KV, max_position_embeddings=128,
             rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
             bos_token_id=1, eos_token_id=2)
  (path / "config.json").write_text(json.dumps(cfg))
  return sd


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  """An HF folder, its focus_jax checkpoint and its HF export, written once by the CLIs."""
  d = tmp_path_factory.mktemp("cli")
  make_hf(d / "hf")
  r = run_cli("launch.convert", f"--hf_model={d / 'hf'}", f"--out={d / 'ckpt'}")
  assert r.returncode == 0, r.stderr
  convert_log = r.stderr
  r = run_cli("launch.export_hf", f"--checkpoint={d / 'ckpt'}", f"--out={d / 'export'}")
  assert r.returncode == 0, r.stderr
  return d, convert_log, r.stderr


def _tree(path):
  return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"")
                for p in path.rglob("*"))


def test_overwrite_never_touches_a_foreign_folder(outputs, tmp_path):
  d, _, _ = outputs
  mine = tmp_path / "my_files"
  mine.mkdir()
  (mine / "thesis.txt").write_text("years of work")
  (mine / "sub").mkdir()
  (mine / "sub" / "data.csv").write_text("1,2,3")
  before = _tree(mine)
  r = run_cli("launch.convert", f"--hf_model={d / 'hf'}", f"--out={mine}", "--overwrite")
  one_line_error(r, "convert", "not a focus_jax checkpoint", "untouched")
  r = run_cli("launch.export_hf", f"--checkpoint={d / 'ckpt'}", f"--out={mine}", "--overwrite")
  one_line_error(r, "export_hf", "not an HF export")
  # A focus_jax checkpoint is not an HF export either: export_hf must not replace it.
  r = run_cli("launch.export_hf", f"--checkpoint={d / 'ckpt'}", f"--out={d / 'ckpt'}",
              "--overwrite")
  one_line_error(r, "export_hf", "not an HF export")
  # "." (the working folder) is refused even when it looks like a checkpoint.
  work = tmp_path / "work"
  shutil.copytree(d / "ckpt", work)
  r = run_cli("launch.convert", f"--hf_model={d / 'hf'}", "--out=.", "--overwrite", cwd=work)
  one_line_error(r, "convert", "working folder")
  assert _tree(mine) == before and sorted(os.listdir(tmp_path)) == ["my_files", "work"]
  assert (d / "ckpt" / "model_config.json").is_file()


def test_overwrite_replaces_its_own_outputs(outputs, tmp_path):
  d, _, _ = outputs
  ckpt, export = tmp_path / "ckpt", tmp_path / "export"
  shutil.copytree(d / "ckpt", ckpt)
  shutil.copytree(d / "export", export)
  (export / "stale.txt").write_text("from the old export")
  assert (export / ".focus_jax_export").is_file()
  r = run_cli("launch.export_hf", f"--checkpoint={ckpt}", f"--out={export}", "--overwrite")
  assert r.returncode == 0, r.stderr
  assert not (export / "stale.txt").exists() and (export / "model.safetensors").is_file()
  r = run_cli("launch.convert", f"--hf_model={d / 'hf'}", f"--out={ckpt}", "--overwrite")
  assert r.returncode == 0, r.stderr
  assert sorted(os.listdir(tmp_path)) == ["ckpt", "export"]  # no temporary siblings left


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_kill_during_the_swap_leaves_a_loadable_output(outputs, tmp_path, exchange):
  from focus_jax.checkpoint.orbax import load_checkpoint
  d, _, _ = outputs
  ckpt = tmp_path / "ckpt"
  shutil.copytree(d / "ckpt", ckpt)
  env = {"FOCUS_JAX_TEST_SWAP_PAUSE": "120"}
  if not exchange:
    env["FOCUS_JAX_NO_EXCHANGE"] = "1"
  e = dict(os.environ, PYTHONPATH=str(ROOT), **env)
  p = subprocess.Popen([sys.executable, "-m", "launch.convert", f"--hf_model={d / 'hf'}",
                        f"--out={ckpt}", "--overwrite"], cwd=ROOT, env=e,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  marker = ".ckpt.tmp-" if exchange else ".ckpt.old-"
  deadline = time.time() + 120
  while not any(n.startswith(marker) for n in os.listdir(tmp_path)) or (
      not exchange and ckpt.exists()):
    assert p.poll() is None and time.time() < deadline, "convert never reached the swap"
    time.sleep(0.2)
  time.sleep(0.5)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert any(n.startswith(".ckpt.") for n in os.listdir(tmp_path))  # the kill left a sibling
  if exchange:  # the swap itself is atomic: the new output is already in place
    model, _ = load_checkpoint(ckpt)
    assert model.config.num_layers == L
  # The next run (any write to the same --out) restores / cleans up, then works.
  r = run_cli("launch.convert", f"--hf_model={d / 'hf'}", f"--out={ckpt}")
  one_line_error(r, "convert", "already exists")
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]
  model, _ = load_checkpoint(ckpt)
  np.testing.assert_array_equal(load_checkpoint(d / "ckpt")[0].model.embed_tokens.embedding[...],
                                model.model.embed_tokens.embedding[...])


def test_stale_siblings_of_other_names_are_left_alone(tmp_path):
  from focus_jax.checkpoint.atomic import recover
  (tmp_path / ".ckpt.tmp-999999999-deadbeef").mkdir()  # ours, from a dead process
  (tmp_path / ".ckpt.tmp-notours").mkdir()
  (tmp_path / ".other.tmp-999999999-deadbeef").mkdir()
  recover(tmp_path / "ckpt")
  assert sorted(os.listdir(tmp_path)) == [".ckpt.tmp-notours", ".other.tmp-999999999-deadbeef"]


def test_convert_refuses_a_nan_tensor(tmp_path):
  make_hf(tmp_path / "hf", nan_tensor="model.layers.1.self_attn.k_proj.weight")
  r = run_cli("launch.convert", f"--hf_model={tmp_path / 'hf'}", f"--out={tmp_path / 'c'}")
  one_line_error(r, "convert", "model.layers.1.self_attn.k_proj.weight", "non-finite",
                 "--allow_nonfinite")
  assert not (tmp_path / "c").exists()
  r = run_cli("launch.convert", f"--hf_model={tmp_path / 'hf'}", f"--out={tmp_path / 'c'}",
              "--allow_nonfinite")
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "c" / "model_config.json").is_file()


def test_logs_are_one_line_per_phase(outputs, tmp_path):
  d, convert_log, export_log = outputs
  for log in (convert_log, export_log):
    assert "load:" in log and "save:" in log, log
    assert "loaded layer" not in log and "Unable to initialize backend" not in log, log
    assert len(log.strip().splitlines()) <= 4, log
  assert "no tokenizer" in export_log  # export_hf warns: transformers could not tokenise
  r = run_cli("launch.convert", f"--hf_model={d / 'hf'}", f"--out={tmp_path / 'c'}",
              "--verbosity=1")
  assert r.returncode == 0 and f"loaded layer {L}/{L}" in r.stderr, r.stderr


def test_broken_model_config_is_named(outputs, tmp_path):
  d, _, _ = outputs
  ckpt = tmp_path / "ckpt"
  shutil.copytree(d / "ckpt", ckpt)
  (ckpt / "model_config.json").write_text('{"vocab_size": 64,')
  r = run_cli("launch.export_hf", f"--checkpoint={ckpt}", f"--out={tmp_path / 'e'}")
  one_line_error(r, "export_hf", str(ckpt / "model_config.json"))
  np.save(tmp_path / "ids.npy", np.arange(3))
  r = run_cli("launch.generate", f"--checkpoint={ckpt}", f"--input_ids={tmp_path / 'ids.npy'}")
  one_line_error(r, "generate", str(ckpt / "model_config.json"))


def test_flag_errors_are_one_line(outputs):
  r = run_cli("launch.convert", "--out=/tmp/x")  # --hf_model missing
  one_line_error(r, "convert", "hf_model")
  r = run_cli("launch.generate", "--checkpoint=x", "--max_new_tokens=abc")
  one_line_error(r, "generate", "max_new_tokens")


def test_missing_train_config_with_an_override_is_one_line(tmp_path):
  r = run_cli("launch.train", "--config=configs/none.py", "--config.steps=2",
              f"--workdir={tmp_path / 'w'}")
  one_line_error(r, "train", "--config=configs/none.py: no such file")
  assert not (tmp_path / "w").exists()
