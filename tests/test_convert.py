"""Checkpoint conversion: HF folder / GGUF -> params -> Orbax -> HF, exact round trips,
clear errors, and atomic CLI outputs. Tiny random LLaMA configs built here with torch."""
import json
import os
from pathlib import Path
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from focus_jax import assets
from focus_jax.checkpoint import (CheckpointError, export_hf, load_checkpoint, load_hf,
                                  read_focus_config, save_checkpoint)
from focus_jax.config import FocusConfig
from focus_jax.model import CandidateParam, add_candidates

ROOT = Path(__file__).resolve().parents[1]
HEADS, HEAD_DIM, LAYERS = 8, 8, 2
# (kv_heads, tied, attention_bias, mlp_bias): GQA ratios 1, 2, 4 and MQA
CASES = [(8, False, False, False), (4, True, False, False), (2, False, True, False),
         (1, True, True, True), (1, False, False, True)]
CASE_IDS = ["mha-untied", "gqa2-tied", "gqa4-bias", "mqa-tied-bias", "mqa-mlpbias"]
# HF modules under model.layers.{i}.: module paths are the same names with "/"
# (projection weights are `kernel`, stored transposed [in, out], layers stacked)
LAYER_MODULES = ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                 "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj"]


def make_hf(path, kv_heads=4, tied=False, bias=False, mlp_bias=False, seed=0):
  """A tiny random LlamaForCausalLM saved to `path` (norms and biases made non-trivial)."""
  torch.manual_seed(seed)
  config = LlamaConfig(vocab_size=96, hidden_size=HEADS * HEAD_DIM, intermediate_size=80,
                       num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                       num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                       attention_bias=bias, mlp_bias=mlp_bias, rope_theta=5000.0,
                       max_position_embeddings=256)
  model = LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or "bias" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path)
  return {k: v.numpy() for k, v in model.state_dict().items()}


def expected_params(sd, tied, n_layers=LAYERS):
  """The model state the contract prescribes for an HF state dict (independent of hf.py):
  flat module path -> array."""
  out = {"model/embed_tokens/embedding": sd["model.embed_tokens.weight"],
         "model/norm/weight": sd["model.norm.weight"]}
  for module in LAYER_MODULES:
    proj = "norm" not in module
    for suffix in ("weight", "bias"):
      names = [f"model.layers.{i}.{module}.{suffix}" for i in range(n_layers)]
      if names[0] in sd:
        leaf = "kernel" if proj and suffix == "weight" else suffix
        out[f"model/layers/{module.replace('.', '/')}/{leaf}"] = np.stack(
            [sd[n].T if leaf == "kernel" else sd[n] for n in names])
  if not tied:
    out["lm_head/kernel"] = sd["lm_head.weight"].T
  return out


def flat_state(model, kind=None):
  """A module's state as {module path: numpy array}."""
  from flax import nnx, traverse_util
  state = nnx.state(model) if kind is None else nnx.state(model, kind)
  return traverse_util.flatten_dict(nnx.to_pure_dict(state), sep="/")


def assert_tree_equal(got, want, where=""):
  """got: a module or a flat dict; want: a flat dict of arrays."""
  got = got if isinstance(got, dict) else flat_state(got)
  assert set(got) == set(want), (where, sorted(set(got) ^ set(want)))
  for k in want:
    g = np.asarray(got[k])
    assert g.shape == want[k].shape and g.dtype == want[k].dtype, (f"{where}/{k}", g.shape)
    np.testing.assert_array_equal(g, want[k], err_msg=f"{where}/{k}")


@pytest.mark.parametrize("kv_heads,tied,bias,mlp_bias", CASES, ids=CASE_IDS)
def test_load_save_export_exact(tmp_path, kv_heads, tied, bias, mlp_bias):
  sd = make_hf(tmp_path / "hf", kv_heads, tied, bias, mlp_bias)
  model, hf_cfg = load_hf(tmp_path / "hf")
  cfg = model.config
  assert (cfg.num_kv_heads, cfg.tie_word_embeddings, cfg.attention_bias) == (kv_heads, tied, bias)
  want = expected_params(sd, tied)
  assert_tree_equal(model, want)

  save_checkpoint(tmp_path / "ckpt", model, hf_cfg)
  model2, extras = load_checkpoint(tmp_path / "ckpt")
  assert model2.config == cfg and extras["hf_config"] == hf_cfg and extras["focus_config"] is None
  assert_tree_equal(model2, want)

  export_hf(model2, extras["hf_config"], tmp_path / "export")
  back, info = AutoModelForCausalLM.from_pretrained(tmp_path / "export", output_loading_info=True,
                                                    local_files_only=True, trust_remote_code=False)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  back_sd = back.state_dict()
  assert set(back_sd) == set(sd)
  for name, t in sd.items():
    np.testing.assert_array_equal(back_sd[name].numpy(), t, err_msg=name)
  exported = json.loads((tmp_path / "export" / "config.json").read_text())
  assert exported["tie_word_embeddings"] == tied and exported["torch_dtype"] == "float32"


def test_checkpoint_dtype_and_numpy_restore(tmp_path):
  make_hf(tmp_path / "hf", 2)
  model, hf_cfg = load_hf(tmp_path / "hf")
  params = flat_state(model)
  save_checkpoint(tmp_path / "ckpt", model, hf_cfg)
  m16, _ = load_checkpoint(tmp_path / "ckpt", dtype="bfloat16")
  p16 = flat_state(m16)
  assert m16.config.param_dtype == "bfloat16"
  assert p16["model/layers/self_attn/q_proj/kernel"].dtype == np.dtype("bfloat16")
  np.testing.assert_array_equal(np.asarray(p16["model/embed_tokens/embedding"]),
                                params["model/embed_tokens/embedding"].astype("bfloat16"))
  pnp = flat_state(load_checkpoint(tmp_path / "ckpt", as_numpy=True)[0])
  assert isinstance(pnp["model/layers/mlp/gate_proj/kernel"], np.ndarray)
  assert_tree_equal(pnp, params)
  mb, _ = load_hf(tmp_path / "hf", dtype="bfloat16")
  assert mb.config.param_dtype == "bfloat16"
  assert flat_state(mb)["model/embed_tokens/embedding"].dtype == np.dtype("bfloat16")


def test_previous_flat_layout_is_refused_with_one_error(tmp_path):
  """A checkpoint of the flat layout written before the NNX modules (keys "embed",
  "layers", "candidate") is no longer read (no supported checkpoint uses it): one
  CheckpointError that names the fix, raised from the metadata before any weight read."""
  import shutil
  import orbax.checkpoint as ocp
  from focus_jax.checkpoint import CheckpointError
  sd = make_hf(tmp_path / "hf", 2, bias=True)
  model, hf_cfg = load_hf(tmp_path / "hf")
  save_checkpoint(tmp_path / "ckpt", model, hf_cfg)
  layers = {p: np.stack([sd[f"model.layers.{i}.self_attn.{p}_proj.weight"].T
                         for i in range(LAYERS)]) for p in "qkvo"}
  old = {"embed": sd["model.embed_tokens.weight"], "final_norm": sd["model.norm.weight"],
         "lm_head": sd["lm_head.weight"].T, "layers": layers, "candidate": {"v": layers["v"]}}
  shutil.rmtree(tmp_path / "ckpt" / "params")
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save((tmp_path / "ckpt" / "params").absolute(), old)
  with pytest.raises(CheckpointError, match="flat layout written before the NNX modules; "
                     "re-run launch.convert") as e:
    load_checkpoint(tmp_path / "ckpt")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("projs,bias", [(("q", "k", "v", "o"), True), (("k", "v"), False)])
def test_candidate_params_survive_round_trips(tmp_path, projs, bias):
  make_hf(tmp_path / "hf", 2, bias=bias)
  from flax import nnx
  model, hf_cfg = load_hf(tmp_path / "hf")
  add_candidates(model, projs)
  rng = np.random.default_rng(0)   # distinct values: a mix-up of names or orientation shows
  nnx.update(model, jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32),
                                 nnx.state(model, CandidateParam)))
  params = flat_state(model)
  assert sum("candidate_" in k for k in params) == len(projs) * (2 if bias else 1)
  focus = FocusConfig(chunk_size=64, local_window=96, fragment_len=16, min_focus_len=128,
                      candidate_projs=projs)
  export_hf(model, hf_cfg, tmp_path / "export", tokenizer_src_dir=tmp_path / "hf",
            focus_config=focus)
  _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "export", output_loading_info=True,
                                                 local_files_only=True, trust_remote_code=False)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  model2, _ = load_hf(tmp_path / "export")
  assert read_focus_config(tmp_path / "export") == focus
  assert_tree_equal(model2, params)

  save_checkpoint(tmp_path / "ckpt", model2, hf_cfg, focus_config=focus)
  model3, extras = load_checkpoint(tmp_path / "ckpt")
  assert extras["focus_config"] == focus
  assert_tree_equal(model3, params)


# ---------------------------------------------------------------- GGUF

def write_gguf(path, sd, cfg_kw, arch="llama"):
  """A float32 GGUF file as llama.cpp's converter writes it (q/k permuted)."""
  import gguf
  heads, kv = cfg_kw["heads"], cfg_kw["kv"]

  def permute(w, n):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(LAYERS)
  w.add_context_length(256)
  w.add_embedding_length(HEADS * HEAD_DIM)
  w.add_feed_forward_length(80)
  w.add_head_count(heads)
  w.add_head_count_kv(kv)
  w.add_rope_freq_base(5000.0)
  w.add_layer_norm_rms_eps(1e-6)
  w.add_rope_dimension_count(HEAD_DIM)
  w.add_vocab_size(96)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
  gg = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down"}
  for i in range(LAYERS):
    for hf, g in gg.items():
      names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{g}.weight"
  for name, t in sd.items():
    if name not in names or (name == "lm_head.weight" and cfg_kw["tied"]):
      continue
    t = np.ascontiguousarray(t, dtype=np.float32)
    if "q_proj" in name:
      t = permute(t, heads)
    elif "k_proj" in name:
      t = permute(t, kv)
    w.add_tensor(names[name], t)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize("kv_heads,tied", [(8, False), (4, True), (2, False), (1, True)])
def test_gguf_reverse_permutation_matches_transformers(tmp_path, kv_heads, tied):
  sd = make_hf(tmp_path / "hf", kv_heads, tied)
  write_gguf(tmp_path / "m.gguf", sd, {"heads": HEADS, "kv": kv_heads, "tied": tied})
  model, hf_cfg = load_hf(tmp_path / "m.gguf")
  cfg = model.config
  assert (cfg.num_kv_heads, cfg.tie_word_embeddings, cfg.rope.theta) == (kv_heads, tied, 5000.0)
  assert_tree_equal(model, expected_params(sd, tied))
  ref = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32,
                                             local_files_only=True, trust_remote_code=False)
  for name, t in ref.state_dict().items():
    np.testing.assert_array_equal(t.numpy(), sd[name], err_msg=name)
  for key in ("num_key_value_heads", "tie_word_embeddings", "head_dim", "rms_norm_eps"):
    assert hf_cfg[key] == getattr(ref.config, key), key


def test_smollm2_gguf_equals_transformers_state_dict():
  """The embedded Q4_1 GGUF: our dequantisation + un-permutation == transformers'."""
  from safetensors import safe_open
  model, hf_cfg = load_hf(assets.smollm2_gguf())
  cfg = model.config
  ref_dir = assets.smollm2_hf_dir()  # written by transformers from the same GGUF
  ref_cfg = json.loads((ref_dir / "config.json").read_text())
  for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps",
              "tie_word_embeddings", "bos_token_id", "eos_token_id", "max_position_embeddings"):
    assert hf_cfg[key] == ref_cfg[key], key
  assert cfg.rope.theta == ref_cfg["rope_parameters"]["rope_theta"] == 100000.0
  assert model.lm_head is None
  with safe_open(str(ref_dir / "model.safetensors"), "numpy") as f:
    want = expected_params({n: f.get_tensor(n) for n in f.keys()}, tied=True, n_layers=30)
  assert_tree_equal(model, want)


# ---------------------------------------------------------------- errors

def test_errors_are_clear(tmp_path):
  make_hf(tmp_path / "hf", 2)
  hf = tmp_path / "hf"
  cfg_json = json.loads((hf / "config.json").read_text())

  bad = tmp_path / "gpt2"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps({**cfg_json, "model_type": "gpt2",
                                               "architectures": ["GPT2LMHeadModel"]}))
  with pytest.raises(CheckpointError, match="only LLaMA"):
    load_hf(bad)
  with pytest.raises(CheckpointError, match="no config.json"):
    load_hf(tmp_path)
  with pytest.raises(CheckpointError, match="not found"):
    load_hf(tmp_path / "nope")

  shape = tmp_path / "shape"
  shape.mkdir()
  (shape / "config.json").write_text(json.dumps({**cfg_json, "intermediate_size": 72}))
  os.link(hf / "model.safetensors", shape / "model.safetensors")
  # tensors are read in module-path order: mlp.down_proj is the first one that disagrees
  with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.down_proj\.weight.*"
                     r"expected \(64, 72\).*\(64, 80\)"):
    load_hf(shape)

  tensors = load_file(hf / "model.safetensors")
  del tensors["model.layers.1.self_attn.k_proj.weight"]
  save_file(tensors, hf / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.self_attn\.k_proj"):
    load_hf(hf)

  data = (hf / "model.safetensors").read_bytes()
  (hf / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated"):
    load_hf(hf)

  (hf / "model.safetensors").unlink()
  with pytest.raises(CheckpointError, match="no \\*.safetensors"):
    load_hf(hf)


def test_gguf_errors(tmp_path):
  sd = make_hf(tmp_path / "hf", 2)
  write_gguf(tmp_path / "m.gguf", sd, {"heads": HEADS, "kv": 2, "tied": False}, arch="gpt2")
  with pytest.raises(CheckpointError, match="architecture 'gpt2' is not supported"):
    load_hf(tmp_path / "m.gguf")
  (tmp_path / "cut.gguf").write_bytes((tmp_path / "m.gguf").read_bytes()[:300])
  with pytest.raises(CheckpointError, match="truncated"):
    load_hf(tmp_path / "cut.gguf")


def test_save_is_atomic_and_refuses_overwrite(tmp_path, monkeypatch):
  make_hf(tmp_path / "hf", 2)
  model, hf_cfg = load_hf(tmp_path / "hf")
  out = tmp_path / "ckpt"
  save_checkpoint(out, model, hf_cfg)
  before = sorted(p.relative_to(out) for p in out.rglob("*"))
  with pytest.raises(FileExistsError):
    save_checkpoint(out, model, hf_cfg)
  import focus_jax.checkpoint.tokenizer as tok

  def boom(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(tok, "copy_tokenizer", boom)
  with pytest.raises(OSError, match="disk full"):
    save_checkpoint(out, model, hf_cfg, tokenizer_src=tmp_path / "hf", overwrite=True)
  with pytest.raises(OSError, match="disk full"):
    save_checkpoint(tmp_path / "new", model, hf_cfg, tokenizer_src=tmp_path / "hf")
  assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf"]  # no temp folders left
  monkeypatch.undo()
  norm = model.model.norm.weight
  norm[...] = norm[...] + 1
  save_checkpoint(out, model, hf_cfg, overwrite=True)
  np.testing.assert_array_equal(load_checkpoint(out)[0].model.norm.weight[...], norm[...])


# ---------------------------------------------------------------- CLIs

def run_cli(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_convert_and_export_cli(tmp_path):
  sd = make_hf(tmp_path / "hf", 4, tied=True)
  ckpt, out = tmp_path / "ckpt", tmp_path / "export"
  r = run_cli("launch.convert", f"--hf_model={tmp_path / 'hf'}", f"--out={ckpt}")
  assert r.returncode == 0, r.stderr
  assert "load:" in r.stderr and "loaded layer" not in r.stderr  # one line per phase
  r = run_cli("launch.export_hf", f"--checkpoint={ckpt}", f"--out={out}")
  assert r.returncode == 0, r.stderr
  back = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, trust_remote_code=False)
  for name, t in back.state_dict().items():
    np.testing.assert_array_equal(t.numpy(), sd[name], err_msg=name)

  marker = ckpt / "model_config.json"
  stamp = (marker.read_bytes(), marker.stat().st_mtime_ns)
  r = run_cli("launch.convert", f"--hf_model={tmp_path / 'hf'}", f"--out={ckpt}")
  assert r.returncode != 0 and "already exists" in r.stderr and "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("convert: error:")
  assert (marker.read_bytes(), marker.stat().st_mtime_ns) == stamp


def test_failed_convert_leaves_nothing(tmp_path):
  make_hf(tmp_path / "hf", 2)
  f = tmp_path / "hf" / "model.safetensors"
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  out = tmp_path / "outs" / "ckpt"
  r = run_cli("launch.convert", f"--hf_model={tmp_path / 'hf'}", f"--out={out}")
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert "truncated" in r.stderr.strip().splitlines()[-1]
  assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))
