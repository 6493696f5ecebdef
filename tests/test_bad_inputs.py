"""Bad input as a careless user gives it: refused with one line naming what is wrong,
never a traceback, never a silent wrong result (the cheap cases of bench/bad_inputs.py,
and the cases found after it).

Most cases call the library in-process on a tiny model; the CLI cases that fail in flag
validation run as subprocesses (well under a second each), a few load a tiny checkpoint.
"""
import json
import math
from pathlib import Path
import re

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from test_cli_safety import make_hf, one_line_error, run_cli
from test_convert import write_gguf

from focus_jax.checkpoint.hf import load_hf
from focus_jax.checkpoint.layout import CheckpointError
from focus_jax.checkpoint.orbax import load_checkpoint, save_checkpoint
from focus_jax.config import FocusConfig, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
V = 64   # make_hf's vocabulary


@pytest.fixture(scope="module")
def d(tmp_path_factory):
  """A tiny HF folder, its checkpoint (no tokenizer) and a checkpoint whose final norm is
  NaN (every logit NaN)."""
  d = tmp_path_factory.mktemp("bad")
  make_hf(d / "hf")
  model, hf_cfg = load_hf(d / "hf")
  save_checkpoint(d / "ckpt", model, hf_cfg)
  make_hf(d / "hf_nan", nan_tensor="model.norm.weight")
  model, hf_cfg = load_hf(d / "hf_nan")
  save_checkpoint(d / "ckpt_nan", model, hf_cfg)
  np.save(d / "ids.npy", np.asarray([5, 6, 7]))
  return d


def _hf_variant(d, name, **changes):
  """A copy of d/hf whose config.json has `changes` (None: the key removed)."""
  out = d / name
  if not out.exists():
    out.mkdir()
    (out / "model.safetensors").write_bytes((d / "hf" / "model.safetensors").read_bytes())
  cfg = json.loads((d / "hf" / "config.json").read_text())
  cfg.update(changes)
  (out / "config.json").write_text(json.dumps(cfg))
  return out


# ------------------------------------------------ config values (config.json, GGUF)

@pytest.mark.parametrize("key,value,needle", [
    ("rms_norm_eps", math.nan, "rms_norm_eps must be a finite number > 0"),
    ("rms_norm_eps", -1e-5, "rms_norm_eps must be a finite number > 0"),
    ("rms_norm_eps", 0, "rms_norm_eps must be a finite number > 0"),
    ("rope_theta", math.nan, "rope_theta must be a finite number > 0"),
    ("rope_theta", -10000.0, "rope_theta must be a finite number > 0"),
    ("bos_token_id", V, f"bos_token_id {V} lies outside the vocabulary [0, {V})"),
    ("eos_token_id", [2, -1], "eos_token_id -1 lies outside the vocabulary"),
    ("pad_token_id", 1000, "pad_token_id 1000 lies outside"),
    ("num_hidden_layers", 2.7, "num_hidden_layers must be an integer, got 2.7"),
    ("num_hidden_layers", True, "num_hidden_layers must be an integer, got True"),
    ("num_hidden_layers", "2", "num_hidden_layers must be an integer"),
    ("num_hidden_layers", 0, "num_hidden_layers must be > 0"),
    ("num_hidden_layers", 10**15, "no model is that large"),
    ("num_attention_heads", 3, "must be a multiple of num_attention_heads (3)"),
    ("num_key_value_heads", 3, "must be a multiple of num_kv_heads (3)"),
    ("vocab_size", -64, "vocab_size must be > 0"),
])
def test_config_values_are_validated_at_load(d, key, value, needle):
  hf = _hf_variant(d, f"cfg_{key}", **{key: value})
  with pytest.raises(CheckpointError) as e:
    load_hf(hf)
  assert needle in str(e.value) and str(hf / "config.json") in str(e.value), str(e.value)


def test_integral_float_and_missing_pad_are_accepted(d):
  # 2.0 is the integer 2 (some writers emit floats); pad_token_id -1 means "none".
  model, _ = load_hf(_hf_variant(d, "cfg_ok", num_hidden_layers=2.0, pad_token_id=-1))
  assert model.config.num_layers == 2 and isinstance(model.config.num_layers, int)


def test_a_layer_count_beyond_the_machines_memory_is_refused_before_allocating(d):
  from focus_jax.memory import physical_bytes
  cfg = ModelConfig.from_hf(json.loads((d / "hf" / "config.json").read_text()))
  layers = physical_bytes() // (cfg.param_count() // cfg.num_layers * 4) * 2   # 2x the RAM
  hf = _hf_variant(d, "cfg_layers", num_hidden_layers=int(layers))
  with pytest.raises(ValueError, match=r"parameters \(float32\) would need [\d,.]+ GiB, more "
                     r"than the [\d,.]+ GiB of this machine's RAM"):
    load_hf(hf)


@pytest.mark.parametrize("text", ["[]", "null", "3", '"llama"'])
def test_config_json_that_is_not_an_object(d, text):
  hf = _hf_variant(d, f"cfg_json_{len(text)}")
  (hf / "config.json").write_text(text)
  with pytest.raises(CheckpointError, match=re.escape(f"{hf / 'config.json'}: the config must "
                                                      "be a JSON object")):
    load_hf(hf)


def test_model_config_json_of_a_checkpoint_is_validated(d, tmp_path):
  import shutil
  ck = tmp_path / "ck"
  shutil.copytree(d / "ckpt", ck)
  cfg = json.loads((ck / "model_config.json").read_text())
  (ck / "model_config.json").write_text(json.dumps({**cfg, "rms_norm_eps": -1.0}))
  with pytest.raises(CheckpointError, match=r"model_config\.json is broken.*rms_norm_eps"):
    load_checkpoint(ck)
  (ck / "model_config.json").write_text("[]")
  with pytest.raises(CheckpointError, match=r"model_config\.json is broken"):
    load_checkpoint(ck)


def _gguf(d, name, sd=None, **meta):
  """write_gguf's tiny float32 GGUF (no tokenizer metadata), metadata overridden by meta."""
  import gguf
  from test_convert import HEADS, HEAD_DIM
  sd = sd or load_file(d / "hf" / "model.safetensors")
  path = d / name
  orig = gguf.GGUFWriter.add_layer_norm_rms_eps
  if "rms_eps" in meta:
    gguf.GGUFWriter.add_layer_norm_rms_eps = lambda w, v: orig(w, meta["rms_eps"])
  try:
    write_gguf(path, sd, {"heads": HEADS, "kv": 2, "tied": False})
  finally:
    gguf.GGUFWriter.add_layer_norm_rms_eps = orig
  return path


@pytest.fixture(scope="module")
def gguf_sd(tmp_path_factory):
  from test_convert import make_hf as make_hf_convert
  d = tmp_path_factory.mktemp("gguf")
  return d, make_hf_convert(d / "hf", 2)


def test_gguf_metadata_is_validated(gguf_sd):
  d, sd = gguf_sd
  path = _gguf(d, "nan_eps.gguf", sd, rms_eps=float("nan"))
  with pytest.raises(CheckpointError, match=re.escape(f"{path}: rms_norm_eps must be a finite "
                                                      "number > 0, got nan")):
    load_hf(path)


def test_gguf_without_tokenizer_metadata_converts_without_a_tokenizer(gguf_sd, tmp_path):
  d, sd = gguf_sd
  path = _gguf(d, "plain.gguf", sd)
  model, hf_cfg = load_hf(path)
  save_checkpoint(tmp_path / "ck", model, hf_cfg, tokenizer_src=path)   # was KeyError 'tokens'
  assert load_checkpoint(tmp_path / "ck")[1]["tokenizer_dir"] is None


# ------------------------------------------------ weight files

@pytest.mark.parametrize("shard", ["../x.safetensors", "/tmp/x.safetensors", "sub/../../x.safetensors",
                                   "link.safetensors"])
def test_index_shards_outside_the_folder_are_refused(d, tmp_path, shard):
  outside = tmp_path / "x.safetensors"
  outside.write_bytes((d / "hf" / "model.safetensors").read_bytes())
  hf = tmp_path / "m"
  hf.mkdir()
  (hf / "config.json").write_text((d / "hf" / "config.json").read_text())
  if shard == "link.safetensors":
    (hf / shard).symlink_to(outside)
  elif shard.startswith("/"):
    shard = str(outside)
  names = load_file(d / "hf" / "model.safetensors")
  (hf / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {n: shard for n in names}}))
  with pytest.raises(CheckpointError, match="is not a file name inside"):
    load_hf(hf)


def test_index_shards_inside_the_folder_still_load(d, tmp_path):
  hf = tmp_path / "m"
  (hf / "sub").mkdir(parents=True)
  (hf / "config.json").write_text((d / "hf" / "config.json").read_text())
  (hf / "sub" / "a.safetensors").write_bytes((d / "hf" / "model.safetensors").read_bytes())
  names = load_file(d / "hf" / "model.safetensors")
  (hf / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {n: "sub/a.safetensors" for n in names}}))
  model, _ = load_hf(hf)
  want = load_file(d / "hf" / "model.safetensors")["model.norm.weight"]
  np.testing.assert_array_equal(np.asarray(model.model.norm.weight[...]), want)


def test_integer_weights_are_refused_with_the_tensor_name(d, tmp_path):
  hf = tmp_path / "m"
  hf.mkdir()
  (hf / "config.json").write_text((d / "hf" / "config.json").read_text())
  sd = load_file(d / "hf" / "model.safetensors")
  sd["model.layers.1.mlp.up_proj.weight"] = sd["model.layers.1.mlp.up_proj.weight"].astype(np.int32)
  save_file(sd, str(hf / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"tensor model\.layers\.1\.mlp\.up_proj\.weight "
                     "holds int32 values; weights must be floating point"):
    load_hf(hf)


# ------------------------------------------------ checkpoint files

@pytest.mark.parametrize("damage", ["every_file", "data", "truncated"])
def test_corrupt_orbax_params_are_one_error_naming_the_folder(d, tmp_path, damage):
  import shutil
  ck = tmp_path / "ck"
  shutil.copytree(d / "ckpt", ck)
  # every_file: the metadata too (unreadable before the restore); data: the tensor blobs
  # only, truncated: the largest blob cut in half (both fail inside the restore).
  blobs = sorted((f for f in (ck / "params").rglob("*") if f.is_file() and f.parent.name == "d"
                  and f.parent.parent.name.startswith("ocdbt")), key=lambda f: f.stat().st_size)
  assert blobs
  if damage == "every_file":
    for f in (ck / "params").rglob("*"):
      if f.is_file() and f.stat().st_size > 0:
        f.write_bytes(b"\0garbage" * 8)
  elif damage == "data":
    for f in blobs:
      f.write_bytes(b"\0garbage" * (f.stat().st_size // 8))
  else:
    f = blobs[-1]
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
  with pytest.raises(CheckpointError, match=re.escape(f"{ck / 'params'}: the checkpoint's "
                                                      "params are unreadable")):
    load_checkpoint(ck)


CORRUPT_READS = r"""
import gc, sys, time
from focus_jax.checkpoint.layout import CheckpointError
from focus_jax.checkpoint.orbax import load_checkpoint
errors = set()
for _ in range(10):   # each failed restore abandons reads; their noise came in ~40% of runs
  try:
    load_checkpoint(sys.argv[1])
  except CheckpointError as e:
    errors.add(str(e).split(" (")[0])
  gc.collect()
time.sleep(0.2)
gc.collect()
print(*errors, sep="\n")
"""


def test_corrupt_params_leave_no_asyncio_noise(d, tmp_path):
  """The one error is all a failed restore prints: its abandoned TensorStore reads (closed
  coroutines, a closed event loop) used to print hundreds of traceback lines after it."""
  import os
  import shutil
  import subprocess
  import sys
  ck = tmp_path / "ck"
  shutil.copytree(d / "ckpt", ck)
  for f in (ck / "params").rglob("*"):
    if f.is_file() and f.parent.name == "d" and f.parent.parent.name.startswith("ocdbt"):
      f.write_bytes(b"\0garbage" * (f.stat().st_size // 8))
  r = subprocess.run([sys.executable, "-c", CORRUPT_READS, str(ck)], cwd=ROOT,
                     capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert r.returncode == 0 and r.stderr.strip() == "", r.stderr[-3000:]
  assert r.stdout.split("\n")[:-1] == [f"{ck / 'params'}: the checkpoint's params are unreadable"]


def test_abandoned_read_filter_drops_orbax_reads_only():
  """Every form asyncio gives a never-retrieved read error (Task, bare Future, a gather's
  _GatheringFuture) is dropped when the error came from Orbax or TensorStore's native code;
  the same message for a user's own coroutine still prints. A plain loop over hand-made
  records, since which form a real failed restore produces depends on timing."""
  import logging
  import warnings
  from focus_jax.checkpoint.orbax import _AbandonedRead, quiet_abandoned_reads

  def raised_in(filename):
    try:
      exec(compile("raise ValueError('read failed')", filename, "exec"))
    except ValueError as e:
      return e

  def record(msg, exc):
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None,
                             (type(exc), exc, exc.__traceback__))

  orbax_exc = raised_in("/site-packages/orbax/checkpoint/_src/serialization/serialization.py")
  native_exc = ValueError("FAILED_PRECONDITION: Error reading")    # never raised: no frames
  chained = raised_in("/home/me/app.py")
  chained.__cause__ = orbax_exc
  user_exc = raised_in("/home/me/app.py")
  f = _AbandonedRead()
  for kind in ("Task", "Future", "_GatheringFuture"):
    msg = f"{kind} exception was never retrieved\nfuture: <{kind} finished>"
    assert not f.filter(record(msg, orbax_exc)), kind
    assert not f.filter(record(msg, native_exc)), kind
    assert not f.filter(record(msg, chained)), kind
    assert f.filter(record(msg, user_exc)), kind
  assert f.filter(record("Task was destroyed but it is pending!", orbax_exc))

  quiet_abandoned_reads()
  # Unstarted coroutines: Orbax's are silent when collected, a user's still warn.
  import gc
  namespace = {}
  exec(compile("async def _read_shard(): pass", "/site-packages/orbax/x.py", "exec"), namespace)
  exec(compile("async def my_reader(): pass", "/home/me/app.py", "exec"), namespace)
  with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    namespace["_read_shard"]()
    namespace["my_reader"]()
    gc.collect()
  assert [str(w.message) for w in seen] == ["coroutine 'my_reader' was never awaited"]


@pytest.mark.parametrize("text,needle", [
    ('{"chunk_size": "big"}', "chunk_size must be an integer"),
    ("[1, 2]", "must be a JSON object"),
    ('{"chunk_size": 4, "window": 3}', "unknown FocusLLM settings ['window']"),
    ('{"candidate_projs": "qk"}', "candidate_projs must be a list"),
    ("{oops", "is not valid JSON"),
    ("null", "must be a JSON object, got NoneType"),
])
def test_malformed_focus_config_json_is_named(d, tmp_path, text, needle):
  import shutil
  from focus_jax.checkpoint.hf import read_focus_config
  ck = tmp_path / "ck"
  shutil.copytree(d / "ckpt", ck)
  (ck / "focus_config.json").write_text(text)
  with pytest.raises(CheckpointError) as e:
    load_checkpoint(ck)
  assert str(ck / "focus_config.json") in str(e.value) and needle in str(e.value), str(e.value)
  hf = tmp_path / "hf"              # the same file beside an HF folder (launch.convert)
  shutil.copytree(d / "hf", hf)
  (hf / "focus_config.json").write_text(text)
  with pytest.raises(CheckpointError, match=re.escape(f"{hf / 'focus_config.json'}: invalid "
                                                      "FocusLLM config")):
    read_focus_config(hf)


# ------------------------------------------------ decoding

def _focus_model(d, name):
  from focus_jax.model import add_candidates
  model, _ = load_hf(d / name)
  return add_candidates(model)


@pytest.mark.parametrize("path", ["plain", "selfextend", "focus_exact", "focus_fast"])
def test_decoding_refuses_non_finite_logits(d, path):
  from focus_jax.generation.decode import NonFiniteLogits
  from focus_jax.generation.modes import ModeSetup, generate
  fc = FocusConfig(chunk_size=8, local_window=8, fragment_len=8, min_focus_len=0)
  prompt = list(range(3, 43))
  # one new token: the first logits row (prefill) is checked, no decode step is compiled
  setup = {"plain": lambda m: ModeSetup("plain", m),
           "selfextend": lambda m: ModeSetup("selfextend", m, group_size=2, neighbor_window=8),
           "focus_exact": lambda m: ModeSetup("focus", m, focus=fc, focus_decode="exact"),
           "focus_fast": lambda m: ModeSetup("focus", m, focus=fc, focus_decode="fast")}[path]
  run = lambda m: generate(setup(m), prompt, 1)
  ok = run(_focus_model(d, "hf"))           # the same path on finite weights decodes
  assert ok.tokens.size == 1 and np.isfinite(ok.logits).all()
  with pytest.raises(NonFiniteLogits, match=r"non-finite logits \(64 of 64 NaN or inf\) at "
                     "generation step 0"):
    run(_focus_model(d, "hf_nan"))


@pytest.mark.parametrize("path", ["plain", "focus"])
def test_huge_max_new_tokens_is_refused_with_the_estimate(d, path):
  from focus_jax.generation.modes import ModeSetup, generate
  model = _focus_model(d, "hf")
  fc = FocusConfig(chunk_size=8, local_window=8, fragment_len=8, min_focus_len=0)
  n = 10**12
  # KV bytes per position: 2 (k, v) x layers x KV heads x head_dim x 4 bytes = 256
  per = 2 * 2 * 2 * 8 * 4
  if path == "plain":
    want = (-(-(256 + n) // 256) * 256) * per      # bucketed prompt + new tokens
    # + the prefill over the 256-token bucket: 3 x 32 + 2 x 48 + (4 + 2 x 2) x 8 floats a token
    want += 256 * (3 * 32 + 2 * 48 + 8 * 8) * 4
    want = f"would need {want / 2**30:,.1f} GiB"
    run = lambda: generate(ModeSetup("plain", model), [1, 2, 3], n)
  else:
    want = None
    run = lambda: generate(ModeSetup("focus", model, focus=fc), list(range(3, 43)), n)
  with pytest.raises(ValueError, match=r"the KV cache (and prefill activations )?for .* would "
                     r"need .* more than the") as e:
    run()
  if want is not None:
    assert want in str(e.value), (want, str(e.value))


def test_tiny_temperature_is_greedy_and_never_nan():
  from focus_jax.sampling import Sampler
  logits = np.linspace(-3.0, 2.0, 50).astype(np.float32)
  logits[17] = 9.0                                      # the argmax
  for t in (1e-50, 1e-44, 1e-40, 1e-30, 1e-6):          # 0, denormal, tiny in float32
    s = Sampler(temperature=t, seed=3)
    assert s.greedy == (t < 1.1754944e-38)
    assert [s.pick(logits, k) for k in range(4)] == [17] * 4, t
  # an ordinary temperature still samples: with two equal top logits both come up
  two = np.full(8, -50.0, np.float32)
  two[[2, 5]] = 1.0
  picks = {Sampler(temperature=1.0, seed=0).pick(two, k) for k in range(40)}
  assert picks == {2, 5}
  with pytest.raises(ValueError, match="finite"):
    Sampler(temperature=math.inf)


# ------------------------------------------------ training config values

@pytest.mark.parametrize("field,value,needle", [
    ("clip_norm", -1.0, "config.clip_norm must be >= 0, got -1.0 (0 disables clipping)"),
    ("clip_norm", math.nan, "config.clip_norm must be a finite number"),
    ("lr", -1e-3, "config.lr must be > 0"),
    ("lr", 0.0, "config.lr must be > 0"),
    ("steps", 0, "config.steps must be >= 1"),
    ("keep_checkpoints", 0, "config.keep_checkpoints must be >= 1"),
    ("warmup_steps", -1, "config.warmup_steps must be >= 0"),
    ("weight_decay", -0.1, "config.weight_decay must be >= 0"),
    ("b1", 1.0, "config.b1 must be < 1"),
    ("eps", 0.0, "config.eps must be > 0"),
    ("batch_size", 0, "config.batch_size must be >= 1"),
    ("accum", 0, "config.accum must be >= 1"),
    ("checkpoint_every", 0, "config.checkpoint_every must be >= 1"),
    ("retrieval_frac", 1.5, "config.retrieval_frac must be <= 1"),
    ("max_len", 8, "config.max_len (8) must be >= config.min_len"),
    ("chunk_sizes", (32, 0), "config.chunk_sizes must be >= 1"),
])
def test_training_config_values_are_checked(field, value, needle):
  from configs.tiny import get_config
  from focus_jax.train.run_config import check_values
  c = get_config()
  check_values(c)                                   # the shipped config passes
  c[field] = value
  with pytest.raises(ValueError) as e:
    check_values(c)
  assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize("field,value", [("clip_norm", -1.0), ("lr", -1e-3), ("steps", 0)])
def test_train_refuses_bad_values_before_the_workdir_is_touched(tmp_path, field, value):
  from configs.tiny import get_config
  from focus_jax.train import loop
  c = get_config()
  c[field] = value
  with pytest.raises(ValueError, match=f"config.{field} must be"):
    loop.train(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_clip_norm_zero_is_off_and_negative_is_refused():
  import optax
  from focus_jax.train.optim import make_optimizer
  params = {"w": jnp.asarray([3.0, -4.0])}
  grads = {"w": jnp.asarray([30.0, -40.0])}       # global norm 50

  def first_moment(clip):
    tx = make_optimizer(optax.constant_schedule(0.1), clip_norm=clip)
    state = tx.update(grads, tx.init(params), params)[1]
    return np.asarray(optax.tree_utils.tree_get(state, "mu")["w"])
  # Adam's first moment after one step is (1 - b1) * g: g as given with clipping off
  # (0 or None), g scaled to norm 1 with clip_norm=1.
  np.testing.assert_allclose(first_moment(0.0), [3.0, -4.0], rtol=1e-6)
  np.testing.assert_allclose(first_moment(None), [3.0, -4.0], rtol=1e-6)
  np.testing.assert_allclose(first_moment(1.0), [0.06, -0.08], rtol=1e-5)
  for bad in (-1.0, math.nan):   # -1 used to scale g by -1/50: gradient ascent
    with pytest.raises(ValueError, match="clip_norm must be a finite number >= 0"):
      make_optimizer(optax.constant_schedule(0.1), clip_norm=bad)


# ------------------------------------------------ data and tokenizers

def test_jsonl_text_that_is_not_a_string_names_the_line(tmp_path):
  from focus_jax.text import read_documents
  f = tmp_path / "d.jsonl"
  f.write_text('{"text": "a"}\n\n{"text": ["b", "c"]}\n')
  with pytest.raises(ValueError, match=re.escape(f"{f}:3: field 'text' must be a string, "
                                                 "got list")):
    list(read_documents([str(f)]))
  from focus_jax.text import read_documents as eval_docs
  with pytest.raises(ValueError, match="field 'text' must be a string, got list"):
    eval_docs([str(f)])


def _word_tokenizer(path):
  import sys
  sys.path.insert(0, str(ROOT / "bench"))
  from bad_inputs import word_tokenizer
  path.mkdir(parents=True, exist_ok=True)
  word_tokenizer(path)


def test_tokenizers_load_locally_and_refuse_remote_code(tmp_path, monkeypatch):
  import transformers
  from focus_jax.text import load_hf_tokenizer as load_tokenizer
  tok_dir = tmp_path / "tok"
  _word_tokenizer(tok_dir)
  seen = []
  real = transformers.AutoTokenizer.from_pretrained
  monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                      lambda *a, **k: seen.append(k) or real(*a, **k))
  tok = load_tokenizer(tok_dir)
  assert tok("w3 w5", add_special_tokens=False)["input_ids"] == [6, 8]
  assert seen == [{"local_files_only": True, "trust_remote_code": False}]
  cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
  (tok_dir / "tokenizer_config.json").write_text(json.dumps(
      {**cfg, "auto_map": {"AutoTokenizer": ["remote.Tok", None]}}))
  with pytest.raises(ValueError, match=r"tokenizer_config\.json names custom tokenizer code "
                     r"\(auto_map\)"):
    load_tokenizer(tok_dir)
  assert len(seen) == 1                              # refused before transformers is asked
  (tok_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
  (tok_dir / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
  with pytest.raises(ValueError, match=r"tok: its tokenizer files \(tokenizer.json, "
                     r"tokenizer_config.json\) cannot be read"):
    load_tokenizer(tok_dir)
  (tok_dir / "tokenizer.json").write_text("{oops")
  with pytest.raises(ValueError, match=re.escape(f"{tok_dir / 'tokenizer.json'} is not valid JSON")):
    load_tokenizer(tok_dir)
  with pytest.raises(ValueError, match="no tokenizer in"):
    load_tokenizer(tmp_path / "none")


def test_every_from_pretrained_call_is_local_and_without_remote_code():
  """No file of the tree calls from_pretrained without local_files_only=True and
  trust_remote_code=False (nothing reaches for a model hub or runs downloaded code)."""
  import subprocess
  tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
  assert "focus_jax/checkpoint/tokenizer.py" in tracked
  bad = []
  for f in sorted(ROOT / t for t in tracked):
    if not f.is_file():
      continue
    text = f.read_text()
    for m in re.finditer(r"\.from_pretrained\(", text):
      depth, i = 1, m.end()
      while depth and i < len(text):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
      call = text[m.end():i]
      if "local_files_only=True" not in call or "trust_remote_code=False" not in call:
        bad.append(f"{f.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}")
  assert not bad, bad


# ------------------------------------------------ CLIs: refused in flag validation

GEN = ["--checkpoint=/nonexistent", "--input_ids=/nonexistent.npy"]
FLAG_CASES = [
    # (module, argv, needles of the one error line)
    ("launch.generate", ["--input_ids=x.npy"], ["--checkpoint is required"]),
    ("launch.generate", ["--checkpoint=x"], ["exactly one of"]),
    ("launch.generate", ["--checkpoint=x", "--prompt=a", "--input_ids=x.npy"], ["exactly one"]),
    ("launch.generate", GEN + ["--max_new_tokens=0"], ["--max_new_tokens must be >= 1"]),
    ("launch.generate", GEN + ["--max_new_tokens=abc"], ["max_new_tokens"]),
    ("launch.generate", GEN + ["--temperature=nan"], ["--temperature", "finite"]),
    ("launch.generate", GEN + ["--temperature=-1"], ["--temperature", ">= 0"]),
    ("launch.generate", GEN + ["--top_p=0"], ["--top_p must be in (0, 1]"]),
    ("launch.generate", GEN + ["--top_p=nan"], ["--top_p"]),
    ("launch.generate", GEN + ["--mode=nope"], ["unknown --mode=nope"]),
    ("launch.generate", GEN + ["--mode=selfextend", "--group_size=0"], ["--group_size must be >= 1"]),
    ("launch.generate", GEN + ["--mode=selfextend", "--neighbor_window=-1"],
     ["--neighbor_window must be >= 1"]),
    ("launch.generate", GEN + ["--mode=focus", "--chunk_size=0"], ["--chunk_size must be >= 1"]),
    ("launch.generate", GEN + ["--mode=focus", "--local_window=0"], ["--local_window must be >= 1"]),
    ("launch.generate", GEN + ["--mode=focus", "--chunk_batch=0"], ["--chunk_batch must be >= 1"]),
    ("launch.generate", GEN + ["--logits_out=out.bin"], ["must end in .npz"]),
    ("launch.generate", GEN + ["extra"], ["unexpected arguments"]),
    ("launch.generate", GEN + ["--mesh=chunk:2"],
     ["--mesh belongs to --mode=focus, not --mode=plain"]),
    ("launch.generate", GEN + ["--chunk_size=16", "--local_window=8"],
     ["--chunk_size, --local_window belong to --mode=focus"]),
    ("launch.generate", GEN + ["--group_size=4"], ["--group_size belongs to --mode=selfextend"]),
    ("launch.generate", GEN + ["--mode=selfextend", "--focus_decode=fast"],
     ["--focus_decode belongs to --mode=focus, not --mode=selfextend"]),
    ("launch.generate", GEN + ["--mode=focus", "--neighbor_window=8"],
     ["--neighbor_window belongs to --mode=selfextend, not --mode=focus"]),
    ("launch.demo_memory", [], ["checkpoint"]),
    ("launch.demo_memory", ["--checkpoint=x", "--depth=-0.5"], ["--depth must be in [0, 1]"]),
    ("launch.demo_memory", ["--checkpoint=x", "--depth=nan"], ["--depth must be in [0, 1]"]),
    ("launch.demo_memory", ["--checkpoint=x", "--length=0"], ["--length must be >= 64"]),
    ("launch.demo_memory", ["--checkpoint=x", "--task=nope"], ["task"]),
    ("launch.plan", ["--config=configs/tiny.py", "--chunk_size=0"], ["--chunk_size must be >= 1"]),
    ("launch.plan", ["--config=configs/tiny.py", "--task=focus_prefill", "--tokens=0"],
     ["--tokens must exceed the local window (64)", "got 0"]),
    ("launch.plan", ["--config=configs/none.py"], ["--config=configs/none.py: no such file"]),
]


@pytest.mark.parametrize("module,argv,needles", FLAG_CASES,
                         ids=[f"{m.split('.')[1]}:{' '.join(a)}" for m, a, _ in FLAG_CASES])
def test_cli_flags_are_refused_in_one_line(module, argv, needles):
  r = run_cli(module, *argv)
  one_line_error(r, module.split(".")[1], *needles)


EVAL_CASES = [
    (["--task=passkey", "--needle_template=The key is here."], ["--needle_template", "no {key}"]),
    (["--task=passkey", "--seeds=0"], ["--seeds must be >= 1, got 0"]),
    (["--task=passkey", "--depths=1.5"], ["--depths must be numbers in [0, 1]"]),
    (["--task=passkey", "--lengths=1"], ["--lengths must be window lengths >= 2"]),
    (["--task=passkey", "--lengths=abc"], ["--lengths must be comma-separated integers"]),
    (["--task=perplexity", "--loss_tokens=-3"], ["--loss_tokens must be >= 1, got -3"]),
    (["--task=perplexity", "--stride=-1"], ["--stride must be >= 0, got -1"]),
    (["--task=perplexity", "--max_windows=0"], ["--max_windows must be >= 1, got 0"]),
    (["--task=perplexity", "--context=0"], ["--context must be >= 1, got 0"]),
    (["--task=perplexity", "--lengths=256", "--loss_tokens=256"],
     ["--loss_tokens=256 must be below the shortest --lengths window (256)"]),
    (["--task=longbench", "--limit=0"], ["--limit must be >= 1, got 0"]),
    (["--task=passkey", "--mode=plain", "--chunk_size=8"], ["--chunk_size belongs to --mode=focus"]),
]


@pytest.mark.parametrize("argv,needles", EVAL_CASES, ids=[" ".join(a) for a, _ in EVAL_CASES])
def test_evaluate_flags_are_refused_before_the_load(tmp_path, argv, needles):
  ck = tmp_path / "ck"
  ck.mkdir()          # any folder: the flags are refused before the checkpoint is read
  r = run_cli("launch.evaluate", f"--checkpoint={ck}", f"--out={tmp_path / 'out'}", *argv)
  one_line_error(r, "launch.evaluate", *needles)
  assert not (tmp_path / "out").exists()


# ------------------------------------------------ CLIs on a tiny checkpoint

def test_generate_refuses_nan_logits_in_one_line(d):
  r = run_cli("launch.generate", f"--checkpoint={d / 'ckpt_nan'}", f"--input_ids={d / 'ids.npy'}",
              "--max_new_tokens=3")
  one_line_error(r, "generate", "non-finite logits", "at generation step 0")
  assert r.stdout.strip() == ""


def test_focus_generate_refuses_a_huge_max_new_tokens(d):
  r = run_cli("launch.generate", f"--checkpoint={d / 'ckpt'}", f"--input_ids={d / 'ids.npy'}",
              "--mode=focus", "--chunk_size=8", "--local_window=8", "--min_focus_len=0",
              "--max_new_tokens=1000000000000")
  one_line_error(r, "generate", "would need", "more than the")


def test_evaluate_refuses_lengths_beyond_memory_up_front(d, tmp_path):
  # 2e7 tokens: KV cache 2 x 2 layers x 2 KV heads x 8 x 4 bytes = 256 bytes a token (5.1 GB)
  # + prefill activations 1024 bytes a token (20.5 GB): 23.8 GiB, more than this machine has
  from focus_jax.memory import available_bytes
  n = 20_000_000
  need = (-(-(-(-n // 256) * 256 + 16) // 256) * 256) * 256 + (-(-n // 256) * 256) * 1024
  if need <= available_bytes()[0]:
    n = 200_000_000_000      # a machine with that much: a length no machine holds
  r = run_cli("launch.evaluate", f"--checkpoint={d / 'ckpt'}", "--task=passkey",
              "--tokenizer=byte", f"--out={tmp_path / 'out'}", f"--lengths={n}",
              "--depths=0.5")
  line = one_line_error(r, "launch.evaluate", f"--lengths={n}", "KV cache and prefill "
                        "activations", "more than the", "; lower --lengths")
  if n == 20_000_000:
    assert f"would need {need / 2**30:,.1f} GiB" in line, (need, line)
  assert not (tmp_path / "out" / "results.jsonl").exists()


def test_demo_memory_without_a_tokenizer_is_one_line(d, tmp_path):
  import shutil
  ck = tmp_path / "ck"
  shutil.copytree(d / "ckpt", ck)
  from focus_jax.model import add_candidates
  model, extras = load_checkpoint(ck, as_numpy=True)
  save_checkpoint(tmp_path / "ck2", add_candidates(model),
                  focus_config=FocusConfig(chunk_size=8, local_window=8, fragment_len=8))
  r = run_cli("launch.demo_memory", f"--checkpoint={tmp_path / 'ck2'}",
              env={"HF_HUB_OFFLINE": "0"})
  one_line_error(r, "demo_memory", "has no tokenizer")
  r = run_cli("launch.demo_memory", f"--checkpoint={ck}")
  one_line_error(r, "demo_memory", "has no trained candidates")


def test_demo_memory_takes_the_models_bos_where_the_tokenizer_has_none(d, tmp_path):
  import shutil
  from focus_jax.model import add_candidates
  hf = tmp_path / "hf"
  shutil.copytree(d / "hf", hf)
  _word_tokenizer(hf)                       # no BOS token: tok.bos_token_id is None
  model, hf_cfg = load_hf(hf)
  save_checkpoint(tmp_path / "ck", add_candidates(model), hf_cfg, tokenizer_src=hf,
                  focus_config=FocusConfig(chunk_size=8, local_window=8, fragment_len=8,
                                           min_focus_len=0))
  r = run_cli("launch.demo_memory", f"--checkpoint={tmp_path / 'ck'}", "--length=64")
  assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]   # was TypeError
  assert json.loads(r.stdout.strip().splitlines()[-1])["task"] == "passkey"
  cfg = json.loads((tmp_path / "ck" / "model_config.json").read_text())
  (tmp_path / "ck" / "model_config.json").write_text(json.dumps({**cfg, "bos_token_id": None}))
  r = run_cli("launch.demo_memory", f"--checkpoint={tmp_path / 'ck'}", "--length=64")
  one_line_error(r, "demo_memory", "the model has no bos_token_id")


def test_evaluate_with_no_case_is_one_line(d, tmp_path):
  """Data that gives no case is refused (it used to exit 0 with a null score)."""
  (tmp_path / "lb").mkdir()
  (tmp_path / "lb" / "qasper.jsonl").write_text("")
  (tmp_path / "short.txt").write_text("too short for one window")
  base = [f"--checkpoint={d / 'ckpt'}", "--tokenizer=byte"]
  r = run_cli("launch.evaluate", *base, f"--out={tmp_path / 'lb_out'}", "--task=longbench",
              f"--data_dir={tmp_path / 'lb'}", "--datasets=qasper")
  one_line_error(r, "launch.evaluate", "the datasets qasper in", "hold no samples")
  r = run_cli("launch.evaluate", *base, f"--out={tmp_path / 'pp_out'}", "--task=perplexity",
              f"--data={tmp_path / 'short.txt'}", "--lengths=64", "--loss_tokens=8")
  one_line_error(r, "launch.evaluate", "no document is as long as the shortest --lengths window")
  for out in ("lb_out", "pp_out"):
    assert not (tmp_path / out / "summary.json").exists()


def test_convert_refuses_bad_config_values_in_one_line(d, tmp_path):
  hf = _hf_variant(d, "cfg_cli", rms_norm_eps=float("nan"))
  r = run_cli("launch.convert", f"--hf_model={hf}", f"--out={tmp_path / 'o'}")
  one_line_error(r, "convert", str(hf / "config.json"), "rms_norm_eps")
  assert not (tmp_path / "o").exists()


DAMAGED = r"""
import sys
from pathlib import Path
import grain
import jax.numpy as jnp
from focus_jax.train.checkpoints import TrainCheckpoints
d = Path(sys.argv[1])
state = {f"w{i}": jnp.full((64, 64), float(i)) for i in range(12)}
it = iter(grain.MapDataset.range(8).to_iter_dataset())
ck = TrainCheckpoints(str(d), every=1, keep=3, async_save=False)
ck.save(1, state, it)
ck.wait()
for f in d.rglob("*"):
  if f.is_file() and f.parent.name == "d":
    f.write_bytes(b"garbage")
try:
  ck.restore_newest(state, it)
except ValueError as e:
  print("ERROR", str(e).splitlines()[0], file=sys.stderr)
ck.close()
import asyncio, gc, logging
logging.basicConfig()     # the "ERROR:asyncio:..." format in which the runs printed them
for kind in ("future", "task"):   # an abandoned read ends as either, depending on timing
  loop = asyncio.new_event_loop()
  if kind == "future":
    f = loop.create_future()
    f.set_exception(ValueError("abandoned read"))
  else:   # an Orbax read coroutine (its code is in orbax's sources)
    ns = {}
    exec(compile("async def read():\n  raise ValueError('abandoned read')",
                 "/site-packages/orbax/checkpoint/_src/serialization/serialization.py",
                 "exec"), ns)
    f = loop.create_task(ns["read"]())
    loop.run_until_complete(asyncio.sleep(0))
  del f
  gc.collect()
  loop.close()


class Late:   # a read completing into the closed loop, the way TensorStore's callbacks do
  def __init__(self, msg):
    self.msg = msg

  def __del__(self):
    raise RuntimeError(self.msg)
Late("Event loop is closed")
Late("another failure")    # any other unraisable error is still shown
"""


def test_every_checkpoint_damaged_is_one_error_without_asyncio_noise(tmp_path):
  import os
  import subprocess
  import sys
  r = subprocess.run([sys.executable, "-c", DAMAGED, str(tmp_path / "ck")], cwd=ROOT,
                     capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert r.returncode == 0 and lines, r.stderr[-3000:]
  errors = [ln for ln in lines if ln.startswith("ERROR")]
  assert len(errors) == 1 and errors[0].startswith("ERROR no checkpoint in"), r.stderr[-3000:]
  assert "restores; the newest, step 1, fails with" in errors[0], errors[0]
  assert "Event loop is closed" not in r.stderr, r.stderr[-3000:]
  assert "never retrieved" not in r.stderr, r.stderr[-3000:]
  assert lines[-1] == "RuntimeError: another failure", r.stderr[-3000:]
