"""launch.generate with bad input: exit 1, one `generate: error:` line, no traceback, and
the checkpoint is never loaded for a bad flag; the text survives a failed --logits_out."""
import json
import os
from pathlib import Path
import subprocess
import sys

import jax
import numpy as np
import pytest

from focus_jax.checkpoint.orbax import save_checkpoint
from focus_jax.config import ModelConfig
from flax import nnx

from focus_jax.model import LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, bos_token_id=1, eos_token_ids=(2,),
                  max_position_embeddings=64)
WORDS = ["[UNK]", "<s>", "</s>"] + [f"w{i}" for i in range(40)]


def run(*args):
  return subprocess.run([sys.executable, "-m", "launch.generate", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=str(ROOT)))


def one_line_error(r, *needles):
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
  assert "Traceback" not in r.stderr and lines, r.stderr
  assert lines[-1].startswith("generate: error:"), r.stderr
  assert sum("error" in ln.lower() for ln in lines) == 1, r.stderr
  for n in needles:
    assert n in lines[-1], (n, lines[-1])
  assert "load:" not in r.stderr  # refused before the checkpoint loaded


def _word_tokenizer(path: Path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  path.mkdir()
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  d = tmp_path_factory.mktemp("gen_inputs")
  _word_tokenizer(d / "tok")
  save_checkpoint(d / "ckpt", LlamaForCausalLM(CFG, nnx.Rngs(0), std=0.3),
                  tokenizer_src=d / "tok")
  np.save(d / "ids.npy", np.asarray([5, 6, 7]))
  np.save(d / "big.npy", np.asarray([5, 2**32 + 5], np.int64))  # wraps to 5 in int32
  np.save(d / "empty.npy", np.zeros((0,), np.int64))
  (d / "latin1.txt").write_bytes("caf\xe9 w1".encode("latin-1"))
  (d / "not_npy.npy").write_text("hello")
  return d


# A sample of the bad inputs (bench/bad_inputs.py tries more, for docs/RESULTS.md).
BAD = [  # (flags, words the one error line must hold)
    (["--max_new_tokens=0"], ["--max_new_tokens must be >= 1"]),
    (["--temperature=nan"], ["--temperature", "finite"]),
    (["--top_p=nan"], ["--top_p must be in (0, 1]"]),
    (["--mode=selfextend", "--group_size=0"], ["--group_size must be >= 1"]),
    (["--mode=focus", "--chunk_size=0"], ["--chunk_size must be >= 1"]),
    (["--mode=focus", "--mesh=chunk:64"], ["needs 64 devices"]),
    (["--logits_out=out.bin"], ["must end in .npz"]),
    (["--max_new_tokens=1000000000000"], ["KV cache", "GiB"]),
]


@pytest.mark.parametrize("extra,needles", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_flag_is_one_line(ckpt, extra, needles):
  one_line_error(run(f"--checkpoint={ckpt / 'ckpt'}", f"--input_ids={ckpt / 'ids.npy'}",
                     *extra), *needles)


@pytest.mark.parametrize("prompt,needles", [
    ("--input_ids={d}/big.npy", ["[0, 50)", "max 4294967301"]),
    ("--input_ids={d}/empty.npy", ["no tokens"]),
    ("--input_ids={d}/not_npy.npy", ["not_npy.npy", "numpy.save"]),
    ("--prompt=", ["prompt is empty"]),
    ("--prompt_file={d}/latin1.txt", ["latin1.txt", "not UTF-8"]),
])
def test_bad_prompt_is_one_line(ckpt, prompt, needles):
  one_line_error(run(f"--checkpoint={ckpt / 'ckpt'}", prompt.format(d=ckpt)), *needles)


def test_missing_checkpoint_is_one_line(ckpt):
  one_line_error(run(f"--checkpoint={ckpt / 'nope'}", f"--input_ids={ckpt / 'ids.npy'}"),
                 "not a focus_jax checkpoint")


def test_text_is_printed_before_a_failed_logits_write(ckpt):
  out = ckpt / "missing_dir" / "x.npz"
  r = run(f"--checkpoint={ckpt / 'ckpt'}", "--prompt=w1 w2 w3", "--max_new_tokens=3",
          "--ignore_eos", f"--logits_out={out}")
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  assert lines[-1].startswith("generate: error:") and str(out) in lines[-1], r.stderr
  assert len(r.stdout.split()) == 3 and all(w in WORDS for w in r.stdout.split()), r.stdout
  assert not out.parent.exists()


def test_logits_out_is_written_exactly_there_and_long_prompt_warns_once(ckpt):
  out = ckpt / "exact.npz"
  ids = np.arange(3, 3 + 70) % 40 + 3  # 70 tokens > max_position_embeddings 64
  np.save(ckpt / "long.npy", ids)
  r = run(f"--checkpoint={ckpt / 'ckpt'}", f"--input_ids={ckpt / 'long.npy'}",
          "--max_new_tokens=2", "--ignore_eos", f"--logits_out={out}")
  assert r.returncode == 0, r.stderr
  assert sorted(p.name for p in ckpt.glob("exact*")) == ["exact.npz"]
  assert np.load(out)["logits"].shape == (2, CFG.vocab_size)
  warn = [ln for ln in r.stderr.splitlines() if "trained context" in ln]
  assert len(warn) == 1 and "--mode=selfextend" in warn[0] and "--mode=focus" in warn[0]
  assert "Unable to initialize backend" not in r.stderr
  phases = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert any("load:" in ln for ln in phases) and any("prefill" in ln for ln in phases)
  assert any("save:" in ln for ln in phases) and len(phases) <= 5, r.stderr
