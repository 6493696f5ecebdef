"""The official FocusLLM checkpoint layout (beacon_*_proj tensors in the weight files,
beacon_param / local_window / memory_stride in config.json), both ways: FocusLLM logits
of a converted official folder against the per-chunk reference, exact round trips, a
transformers reload, and one-line errors for malformed folders."""
import dataclasses
import json
import os
from pathlib import Path
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM

from focus_reference import reference_focus
from test_convert import LAYERS, flat_state, make_hf, run_cli

from focus_jax.checkpoint import (CheckpointError, export_hf, load_checkpoint, load_hf,
                                  read_focus_config)
from focus_jax.config import FocusConfig
from focus_jax.generation.modes import ModeSetup, generate
from focus_jax.model import CandidateParam, add_candidates

PROJS = ("q", "k", "v", "o")
S, WL = 16, 24          # the official folder's memory_stride[0] and local_window
FOCUS = FocusConfig(chunk_size=S, local_window=WL, candidate_projs=PROJS)
EOS = 2                 # LlamaConfig's default eos_token_id, used by make_hf


def beacon(i, p, leaf="weight"):
  return f"model.layers.{i}.self_attn.beacon_{p}_proj.{leaf}"


def write_folder(path, tensors, config):
  path.mkdir(parents=True)
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
  (path / "config.json").write_text(json.dumps(config, indent=2))
  return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """plain: a tiny random LLaMA saved by transformers (GQA, attention biases, untied);
  official: the same plus beacon tensors with their own random values, as the
  official code saves a trained FocusLLM."""
  root = tmp_path_factory.mktemp("official")
  sd = make_hf(root / "plain", kv_heads=2, bias=True, seed=3)
  tensors = load_file(str(root / "plain" / "model.safetensors"))
  rng = np.random.default_rng(7)
  for i in range(LAYERS):
    for p in PROJS:
      for leaf in ("weight", "bias"):
        base = tensors[f"model.layers.{i}.self_attn.{p}_proj.{leaf}"]
        tensors[beacon(i, p, leaf)] = (0.1 * rng.standard_normal(base.shape)).astype(np.float32)
  tensors["model.beacon_embed_tokens.weight"] = tensors["model.embed_tokens.weight"][EOS:EOS + 1]
  config = json.loads((root / "plain" / "config.json").read_text())
  config.update(beacon_param=list(PROJS), local_window=WL, memory_stride=[S, 2 * S])
  official = write_folder(root / "official", tensors, config)
  ckpt = root / "ckpt"
  r = run_cli("launch.convert", f"--hf_model={official}", f"--out={ckpt}")
  assert r.returncode == 0, r.stderr
  return dict(root=root, plain=root / "plain", official=official, sd=sd, tensors=tensors,
              config=config, ckpt=ckpt, convert_log=r.stderr)


def reference_model(folders):
  """The plain folder with candidates set from the beacon tensors, transposed here."""
  model, _ = load_hf(folders["plain"])
  add_candidates(model, PROJS)
  attn = model.model.layers.self_attn
  t = folders["tensors"]
  for p in PROJS:
    proj = getattr(attn, f"candidate_{p}_proj")
    proj.kernel.set_value(np.stack([t[beacon(i, p)].T for i in range(LAYERS)]))
    proj.bias.set_value(np.stack([t[beacon(i, p, "bias")] for i in range(LAYERS)]))
  return model


def test_convert_reads_candidates_and_settings(folders):
  log = folders["convert_log"]
  assert "ignored model.beacon_embed_tokens.weight" in log
  assert "memory_stride [16, 32]" in log and "using the first, 16" in log
  model, extras = load_checkpoint(folders["ckpt"])
  assert extras["focus_config"] == FOCUS and model.candidate_projs == PROJS
  want = flat_state(reference_model(folders), CandidateParam)
  got = flat_state(model, CandidateParam)
  assert set(got) == set(want) and len(want) == 2 * len(PROJS)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=k)

  # FocusLLM on a prompt above the threshold == the per-chunk reference with those values
  focus = dataclasses.replace(extras["focus_config"], min_focus_len=40)
  x = np.random.default_rng(0).integers(3, 96, size=90).astype(np.int32)  # 5 chunks + local
  gen = generate(ModeSetup("focus", model, focus=focus), x, 1)  # prefill (steps: test_focus)
  ref = reference_focus(reference_model(folders), x, S, WL, min(512, S, WL))
  assert gen.logits.shape == ref.shape == (1, 96)
  np.testing.assert_allclose(gen.logits, ref, atol=1e-5, rtol=0)


def test_official_export_is_byte_identical_and_loads_in_transformers(folders):
  out = folders["root"] / "official-export"
  r = run_cli("launch.export_hf", f"--checkpoint={folders['ckpt']}", f"--out={out}",
              "--layout=official")
  assert r.returncode == 0, r.stderr
  # the export marker lets a later --overwrite recognise the folder as this tool's
  assert sorted(p.name for p in out.iterdir()) == [".focus_jax_export", "config.json",
                                                   "model.safetensors"]
  got, want = load_file(str(out / "model.safetensors")), folders["tensors"]
  assert set(got) == set(want)
  for name, t in want.items():
    assert got[name].dtype == np.float32 and got[name].shape == t.shape, name
    assert got[name].tobytes() == t.tobytes(), name
  config = json.loads((out / "config.json").read_text())
  assert config["architectures"] == ["LlamaForCausalLM"]
  assert (config["beacon_param"], config["local_window"], config["memory_stride"]) == \
      (list(PROJS), WL, [S])

  hf, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True,
                                                  local_files_only=True, trust_remote_code=False)
  assert not info["missing_keys"], info
  beacons = {n for n in want if "beacon" in n}
  assert set(info["unexpected_keys"]) == beacons and len(beacons) == 2 * LAYERS * 4 + 1
  original = AutoModelForCausalLM.from_pretrained(folders["plain"],
                                                  local_files_only=True, trust_remote_code=False)
  ids = torch.tensor([[1, 5, 17, 42, 9, 77, 30]])
  with torch.no_grad():
    np.testing.assert_array_equal(hf(ids).logits.numpy(), original(ids).logits.numpy())


def test_default_export_and_back_keeps_the_candidates(folders):
  model, extras = load_checkpoint(folders["ckpt"], as_numpy=True)
  out = folders["root"] / "default-export"
  export_hf(model, extras["hf_config"], out, focus_config=extras["focus_config"])
  config = json.loads((out / "config.json").read_text())
  assert not {"beacon_param", "local_window", "memory_stride"} & set(config)
  assert (out / "focus_candidate.safetensors").is_file()
  back, _ = load_hf(out)
  assert read_focus_config(out) == FOCUS
  want = flat_state(model)
  got = flat_state(back)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def test_plain_folders_stay_plain(folders):
  model, _ = load_hf(folders["plain"])
  assert not model.has_candidates and read_focus_config(folders["plain"]) is None
  # beacon settings alone (no beacon tensors): the official code would copy q/k/v/o
  d = folders["root"] / "settings-only"
  write_folder(d, load_file(str(folders["plain"] / "model.safetensors")), folders["config"])
  assert not load_hf(d)[0].has_candidates and read_focus_config(d) is None
  with pytest.raises(CheckpointError, match="no candidate projections"):
    export_hf(model, None, folders["root"] / "nope", layout_name="official")
  assert not (folders["root"] / "nope").exists()


def _drop(*names):
  return lambda t, c: [t.pop(n) for n in names]


def _set(**kw):
  return lambda t, c: c.update(kw)


MALFORMED = {
    "layer_missing": (_drop(beacon(1, "k")),
                      r"^missing tensor model\.layers\.1\.self_attn\.beacon_k_proj\.weight: "),
    "projection_missing": (_drop(*[beacon(i, "o", x) for i in range(LAYERS)
                                   for x in ("weight", "bias")]),
                           r"^missing tensor model\.layers\.0\.self_attn\.beacon_o_proj\.weight"),
    "shape": (lambda t, c: t.update({beacon(1, "v"): np.ascontiguousarray(t[beacon(1, "v")].T)}),
              r"^tensor model\.layers\.1\.self_attn\.beacon_v_proj\.weight: shape mismatch, "
              r"expected \(16, 64\)"),
    "bias_without_attention_bias": (
        _set(attention_bias=False),
        r"^tensor model\.layers\.0\.self_attn\.beacon_k_proj\.bias: the config has no attention"),
    "bias_missing": (_drop(beacon(0, "q", "bias")),
                     r"^missing tensor model\.layers\.0\.self_attn\.beacon_q_proj\.bias \(the "
                     r"config sets attention_bias\)"),
    "not_in_beacon_param": (_set(beacon_param=["k", "v"]),
                            r"^tensor model\.layers\.0\.self_attn\.beacon_o_proj\.bias: "
                            r"projection 'o' is not in config\.json's beacon_param"),
    "layer_beyond_config": (lambda t, c: t.update({beacon(2, "q"): t[beacon(0, "q")] + 1}),
                            r"^tensor model\.layers\.2\.self_attn\.beacon_q_proj\.weight: layer 2"),
    "empty_memory_stride": (_set(memory_stride=[]), r"memory_stride in config\.json is an empty"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_official_folders_give_one_line_errors(folders, tmp_path, case):
  mutate, pattern = MALFORMED[case]
  tensors, config = dict(folders["tensors"]), dict(folders["config"])
  mutate(tensors, config)
  d = write_folder(tmp_path / case, tensors, config)
  with pytest.raises(CheckpointError, match=pattern) as e:
    load_hf(d)
    read_focus_config(d)
  assert "\n" not in str(e.value)


def test_both_candidate_layouts_at_once_is_an_error(folders, tmp_path):
  d = tmp_path / "both"
  shutil.copytree(folders["official"], d)
  os.link(folders["official"] / "model.safetensors", d / "focus_candidate.safetensors")
  with pytest.raises(CheckpointError, match=r"holds both focus_candidate\.safetensors and "
                     r"official beacon tensors \(e\.g\. model\.layers\.0\.self_attn\.beacon_k"):
    load_hf(d)


def test_convert_cli_reports_a_partial_set_in_one_line(folders, tmp_path):
  tensors = dict(folders["tensors"])
  del tensors[beacon(1, "v", "bias")]
  d = write_folder(tmp_path / "partial", tensors, folders["config"])
  out = tmp_path / "ckpt"
  r = run_cli("launch.convert", f"--hf_model={d}", f"--out={out}")
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
  assert errors == [r.stderr.strip().splitlines()[-1]]
  assert errors[0].startswith("convert: error: missing tensor "
                              "model.layers.1.self_attn.beacon_v_proj.bias")
  assert not out.exists()
