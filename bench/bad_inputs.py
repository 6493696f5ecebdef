r"""Tries bad inputs on every CLI (each one a subprocess) and prints a Markdown table:
input, exit code, and the message as the user sees it (the error line, or the warning).

  python bench/bad_inputs.py [--only=generate] > table.md
  python bench/bad_inputs.py --file_safety > table.md   # outputs onto inputs, user files

Builds its own tiny HF folder, focus_jax checkpoints and a 2-step training run in a
temporary folder (a few minutes on a CPU). --file_safety runs only the cases where
an output would land on an input or a user's file, and prints after each row
whether the files it could touch are byte-identical afterwards.
"""
import argparse
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--config=configs/tiny.py", "--config.steps=2", "--config.checkpoint_every=1",
         "--config.tensorboard=False", "--config.async_checkpoints=False"]


def cli(module, *args, cwd=ROOT):
  module = module if "." in module else f"launch.{module}"
  r = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd,
                     capture_output=True, text=True, timeout=600,
                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
  return r


def make_hf(path: Path, nan=False, bin_only=False):
  from safetensors.numpy import save_file
  rng = np.random.default_rng(0)
  h, v, ff, n = 32, 64, 48, 2
  shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
  for i in range(n):
    p = f"model.layers.{i}."
    for name, s in {"input_layernorm": (h,), "post_attention_layernorm": (h,),
                    "self_attn.q_proj": (h, h), "self_attn.k_proj": (16, h),
                    "self_attn.v_proj": (16, h), "self_attn.o_proj": (h, h),
                    "mlp.gate_proj": (ff, h), "mlp.up_proj": (ff, h),
                    "mlp.down_proj": (h, ff)}.items():
      shapes[f"{p}{name}.weight"] = s
  sd = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
  if nan:
    sd["model.layers.1.mlp.up_proj.weight"][3, 4] = np.nan
  path.mkdir(parents=True)
  if bin_only:
    (path / "pytorch_model.bin").write_bytes(b"not really")
  else:
    save_file(sd, str(path / "model.safetensors"))
  (path / "config.json").write_text(json.dumps(dict(
      architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=v, hidden_size=h,
      intermediate_size=ff, num_hidden_layers=n, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)))


def word_tokenizer(path: Path):
  """A whitespace word-level tokenizer (w0..w40) saved as an HF fast tokenizer."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  words = ["[UNK]", "<s>", "</s>"] + [f"w{i}" for i in range(40)]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}))


def setup(d: Path):
  make_hf(d / "hf")
  make_hf(d / "hf_nan", nan=True)
  make_hf(d / "hf_bin", bin_only=True)
  (d / "no_config").mkdir()
  make_hf(d / "hf_badjson")
  (d / "hf_badjson" / "config.json").write_text("{oops")
  make_hf(d / "hf_cut")
  f = d / "hf_cut" / "model.safetensors"
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  (d / "fake.gguf").write_text("not a gguf file")
  assert cli("convert", f"--hf_model={d / 'hf'}", f"--out={d / 'ckpt'}").returncode == 0
  make_hf(d / "hf_tok")
  word_tokenizer(d / "hf_tok")
  assert cli("convert", f"--hf_model={d / 'hf_tok'}", f"--out={d / 'ckpt_tok'}").returncode == 0
  assert cli("export_hf", f"--checkpoint={d / 'ckpt'}", f"--out={d / 'export'}").returncode == 0
  shutil.copytree(d / "ckpt", d / "ckpt_badcfg")
  (d / "ckpt_badcfg" / "model_config.json").write_text('{"vocab_size": 64,')
  shutil.copytree(d / "ckpt", d / "cwd_ckpt")
  (d / "mine").mkdir()
  (d / "mine" / "notes.txt").write_text("my own file")
  (d / "a_file").write_text("x")
  for name, arr in {"ids": np.asarray([5, 6, 7]), "big": np.asarray([5, 2**32 + 5], np.int64),
                    "neg": np.asarray([5, -1]), "float": np.zeros(3, np.float32),
                    "twod": np.zeros((2, 2), np.int64), "empty": np.zeros(0, np.int64),
                    "long": np.arange(100) % 60 + 3}.items():
    np.save(d / f"{name}.npy", arr)
  (d / "text.npy").write_text("hello")
  (d / "empty.txt").write_text("")
  (d / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
  (d / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n')
  (d / "nofield.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
  r = cli("train", *TRAIN, f"--workdir={d / 'run'}")
  assert r.returncode == 0, r.stderr[-2000:]


def probes(d: Path):
  ck, ids = f"--checkpoint={d / 'ckpt'}", f"--input_ids={d / 'ids.npy'}"
  hf = f"--hf_model={d / 'hf'}"
  run, trn = f"--workdir={d / 'run'}", TRAIN
  yield "convert", "no --hf_model", [f"--out={d / 'x'}"], {}
  yield "convert", "--hf_model path does not exist", ["--hf_model=/nonexistent", f"--out={d / 'x'}"], {}
  yield "convert", "--hf_model folder without config.json", [f"--hf_model={d / 'no_config'}", f"--out={d / 'x'}"], {}
  yield "convert", "config.json not JSON", [f"--hf_model={d / 'hf_badjson'}", f"--out={d / 'x'}"], {}
  yield "convert", "truncated model.safetensors", [f"--hf_model={d / 'hf_cut'}", f"--out={d / 'o1'}"], {}
  yield "convert", "PyTorch .bin weights only", [f"--hf_model={d / 'hf_bin'}", f"--out={d / 'x'}"], {}
  yield "convert", "a NaN in one tensor", [f"--hf_model={d / 'hf_nan'}", f"--out={d / 'o2'}"], {}
  yield "convert", "text file named .gguf", [f"--hf_model={d / 'fake.gguf'}", f"--out={d / 'x'}"], {}
  yield "convert", "--out exists, no --overwrite", [hf, f"--out={d / 'ckpt'}"], {}
  yield "convert", "--overwrite on a folder of the user's files", [hf, f"--out={d / 'mine'}", "--overwrite"], {}
  yield "convert", "--overwrite --out=. (inside a checkpoint)", [hf, "--out=.", "--overwrite"], {"cwd": d / "cwd_ckpt"}
  yield "convert", "--overwrite --out=$HOME", [hf, f"--out={Path.home()}", "--overwrite"], {}
  yield "convert", "--out is a file", [hf, f"--out={d / 'a_file'}", "--overwrite"], {}
  yield "convert", "--dtype=float16", [hf, f"--out={d / 'x'}", "--dtype=float16"], {}
  yield "convert", "stray positional argument", [hf, f"--out={d / 'x'}", "extra"], {}
  yield "export_hf", "--checkpoint does not exist", ["--checkpoint=/nonexistent", f"--out={d / 'e1'}"], {}
  yield "export_hf", "--checkpoint is an HF folder", [f"--checkpoint={d / 'hf'}", f"--out={d / 'e1'}"], {}
  yield "export_hf", "broken model_config.json", [f"--checkpoint={d / 'ckpt_badcfg'}", f"--out={d / 'e1'}"], {}
  yield "export_hf", "--out exists, no --overwrite", [ck, f"--out={d / 'export'}"], {}
  yield "export_hf", "--overwrite on a focus_jax checkpoint", [ck, f"--out={d / 'cwd_ckpt'}", "--overwrite"], {}
  yield "export_hf", "--overwrite on a folder of the user's files", [ck, f"--out={d / 'mine'}", "--overwrite"], {}
  yield "export_hf", "checkpoint without tokenizer (warning)", [ck, f"--out={d / 'e2'}"], {"show": "tokenizer"}
  yield "generate", "no --checkpoint", [ids], {}
  yield "generate", "no prompt", [ck], {}
  yield "generate", "--prompt and --input_ids", [ck, ids, "--prompt=a"], {}
  yield "generate", "--max_new_tokens=0", [ck, ids, "--max_new_tokens=0"], {}
  yield "generate", "--max_new_tokens=abc", [ck, ids, "--max_new_tokens=abc"], {}
  yield "generate", "--max_new_tokens=10^12 (KV cache)", [ck, ids, "--max_new_tokens=1000000000000"], {}
  yield "generate", "--temperature=nan", [ck, ids, "--temperature=nan"], {}
  yield "generate", "--temperature=-1", [ck, ids, "--temperature=-1"], {}
  yield "generate", "--top_p=0", [ck, ids, "--top_p=0"], {}
  yield "generate", "--top_p=nan", [ck, ids, "--top_p=nan"], {}
  yield "generate", "--mode=nope", [ck, ids, "--mode=nope"], {}
  yield "generate", "selfextend --group_size=0", [ck, ids, "--mode=selfextend", "--group_size=0"], {}
  yield "generate", "selfextend --neighbor_window=-1", [ck, ids, "--mode=selfextend", "--neighbor_window=-1"], {}
  yield "generate", "focus --chunk_size=0", [ck, ids, "--mode=focus", "--chunk_size=0"], {}
  yield "generate", "focus --local_window=0", [ck, ids, "--mode=focus", "--local_window=0"], {}
  yield "generate", "focus --chunk_batch=0", [ck, ids, "--mode=focus", "--chunk_batch=0"], {}
  yield "generate", "focus --mesh=chunk:64 (1 device)", [ck, ids, "--mode=focus", "--mesh=chunk:64"], {}
  yield "generate", "focus --mesh=banana", [ck, ids, "--mode=focus", "--mesh=banana"], {}
  for name, what in [("big", "id 2^32+5 (int64; 5 after an int32 cast)"), ("neg", "id -1"),
                     ("float", "float ids"), ("twod", "2-D ids"), ("empty", "no ids"),
                     ("text", "a text file as .npy"), ("missing", "missing .npy")]:
    yield "generate", f"--input_ids: {what}", [ck, f"--input_ids={d / name}.npy"], {}
  tk = f"--checkpoint={d / 'ckpt_tok'}"
  yield "generate", "--prompt=''", [tk, "--prompt="], {}
  yield "generate", "--prompt, checkpoint without tokenizer", [ck, "--prompt=hello"], {}
  yield "generate", "--prompt_file in Latin-1", [tk, f"--prompt_file={d / 'latin1.txt'}"], {}
  yield "generate", "--prompt_file missing", [tk, f"--prompt_file={d / 'none.txt'}"], {}
  yield "generate", "--prompt_file is a folder", [tk, f"--prompt_file={d}"], {}
  yield "generate", "--prompt_file empty", [tk, f"--prompt_file={d / 'empty.txt'}"], {}
  yield "generate", "--logits_out=out.bin", [ck, ids, "--logits_out=out.bin"], {}
  yield "generate", "--logits_out in a missing folder (text on stdout)", [ck, ids, "--max_new_tokens=2", f"--logits_out={d / 'nodir' / 'l.npz'}"], {}
  yield "generate", "prompt longer than the trained context (warning)", [ck, f"--input_ids={d / 'long.npy'}", "--max_new_tokens=1"], {"show": "trained context"}
  yield "generate", "broken model_config.json", [f"--checkpoint={d / 'ckpt_badcfg'}", ids], {}
  yield "generate", "--checkpoint is an HF folder", [f"--checkpoint={d / 'hf'}", ids], {}
  yield "train", "no --workdir", ["--config=configs/tiny.py"], {}
  yield "train", "--config file missing", ["--config=configs/none.py", f"--workdir={d / 'x'}"], {}
  yield "train", "--config.steps=abc", [*trn, "--config.steps=abc", f"--workdir={d / 'x'}"], {}
  yield "train", "--config.lr=0.5 on resume", [*trn, run, "--config.lr=0.5"], {}
  yield "train", "--config.resume=False into a run", [*trn, run, "--config.resume=False"], {}
  yield "train", "--eval=2 --eval_step=7 (no such step)", [*trn, run, "--eval=2", "--eval_step=7"], {}
  yield "train", "--export_only, no checkpoint", [*trn, f"--workdir={d / 'w_empty'}", "--export_only"], {}
  yield "train", "--config.data=missing.jsonl", [*trn, f"--workdir={d / 'w1'}", "--config.data=missing.jsonl"], {}
  yield "train", "jsonl with a broken line 3", [*trn, f"--workdir={d / 'w2'}", f"--config.data={d / 'bad.jsonl'}"], {}
  yield "train", "jsonl line 2 without the field", [*trn, f"--workdir={d / 'w3'}", f"--config.data={d / 'nofield.jsonl'}"], {}
  yield "train", "--config.mesh=data:8 (1 device)", [*trn, f"--workdir={d / 'w4'}", "--config.mesh=data:8"], {}


HOLDER = """
import sys, time
from focus_jax.checkpoint.atomic import exclusive_lock
with exclusive_lock(sys.argv[1], "w"):
  print("held", flush=True)
  time.sleep(600)
"""


def setup_file_safety(d: Path):
  """Folders where an output lands on an input or on a user's files."""
  sys.path.insert(0, str(ROOT))
  from flax import nnx
  from focus_jax.checkpoint.orbax import save_checkpoint
  from focus_jax.config import ModelConfig
  from focus_jax.model import LlamaForCausalLM
  make_hf(d / "hf")
  assert cli("convert", f"--hf_model={d / 'hf'}", f"--out={d / 'ckpt'}").returncode == 0
  assert cli("export_hf", f"--checkpoint={d / 'ckpt'}", f"--out={d / 'export'}").returncode == 0
  shutil.copytree(d / "ckpt", d / "C")
  shutil.copytree(d / "hf", d / "C" / "my_source")
  shutil.copytree(d / "export", d / "E")
  shutil.copytree(d / "ckpt", d / "E" / "ckpt")
  shutil.copytree(d / "ckpt", d / "both")
  for f in ("config.json", "model.safetensors"):
    shutil.copy(d / "hf" / f, d / "both" / f)
  (d / "dangling").symlink_to(d / "nowhere")
  (d / "mine").mkdir()
  (d / "mine" / "metrics.jsonl").write_text("my own metrics\n")
  (d / "mine" / "summary.json").write_text('{"my": "results"}')
  (d / "mine" / "passkey.png").write_bytes(b"my figure")
  (d / "home").mkdir()
  np.save(d / "ids.npy", np.asarray([5, 6, 7]))
  (d / "mine.npz").write_bytes(b"my own file")
  cfg = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, bos_token_id=1, eos_token_ids=(2,))
  save_checkpoint(d / "bytes_ckpt", LlamaForCausalLM(cfg, nnx.Rngs(0), std=0.3))
  (d / "doc.txt").write_text("".join(chr(97 + (i * 7) % 26) for i in range(100)))
  ev = [f"--checkpoint={d / 'bytes_ckpt'}", "--tokenizer=byte", "--task=perplexity",
        f"--data={d / 'doc.txt'}", "--lengths=64", "--stride=0", "--loss_tokens=8"]
  assert cli("evaluate", *ev, f"--out={d / 'eval'}").returncode == 0
  save_checkpoint(d / "bytes_ckpt", LlamaForCausalLM(cfg, nnx.Rngs(1), std=0.3), overwrite=True)
  (d / "locked").mkdir()
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(d / "locked" / ".focus_jax_run")],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert holder.stdout.readline().strip() == "held"
  return ev, holder


def file_safety_probes(d: Path, ev):
  hf, ck = f"--hf_model={d / 'hf'}", f"--checkpoint={d / 'ckpt'}"
  trn = TRAIN
  yield "convert", "--overwrite, --hf_model inside --out", [f"--hf_model={d / 'C' / 'my_source'}", f"--out={d / 'C'}", "--overwrite"], {"keep": ["C"]}
  yield "convert", "--overwrite, --hf_model is --out (HF folder and checkpoint)", [f"--hf_model={d / 'both'}", f"--out={d / 'both'}", "--overwrite"], {"keep": ["both"]}
  yield "export_hf", "--overwrite, --checkpoint inside --out", [f"--checkpoint={d / 'E' / 'ckpt'}", f"--out={d / 'E'}", "--overwrite"], {"keep": ["E"]}
  yield "convert", "--out a folder of the user's files, no --overwrite", [hf, f"--out={d / 'mine'}"], {"keep": ["mine"]}
  yield "convert", "--overwrite, --out a dangling symlink", [hf, f"--out={d / 'dangling'}", "--overwrite"], {}
  yield "train", "--workdir an HF model folder", [*trn, f"--workdir={d / 'hf'}"], {"keep": ["hf"]}
  yield "train", "--workdir a checkpoint", [*trn, f"--workdir={d / 'ckpt'}"], {"keep": ["ckpt"]}
  yield "train", "--workdir=. (a folder of the user's files)", [f"--config={ROOT / 'configs' / 'tiny.py'}", *trn[1:], "--workdir=."], {"cwd": d / "mine", "keep": ["mine"]}
  yield "train", "--config file missing, with an override", ["--config=configs/none.py", "--config.steps=2", f"--workdir={d / 'x'}"], {}
  yield "train", "--workdir=$HOME", [*trn, f"--workdir={d / 'home'}"], {"env": {"HOME": str(d / "home")}}
  yield "train", "--workdir in use by another trainer", [*trn, f"--workdir={d / 'locked'}"], {}
  yield "evaluate", "--out a folder of the user's files", [*ev, f"--out={d / 'mine'}"], {"keep": ["mine"]}
  yield "evaluate", "resume after the checkpoint was rewritten", [*ev, f"--out={d / 'eval'}"], {"keep": ["eval"]}
  yield "focus_jax.trained", "--write a checkpoint without focus_config.json", [f"--write={d / 'ckpt'}"], {"keep": [str(ROOT / "focus_jax" / "trained")]}
  yield "focus_jax.trained", "--name=../../x", [f"--write={d / 'ckpt'}", "--name=../../x"], {}
  yield "focus_jax.trained", "--out a folder of the user's files", [f"--out={d / 'mine'}"], {"keep": ["mine"]}
  yield "generate", "--logits_out an existing file, no --overwrite", [ck, f"--input_ids={d / 'ids.npy'}", f"--logits_out={d / 'mine.npz'}"], {"keep": ["mine.npz"]}
  yield "convert", "--hf_model inside --out, no --overwrite", [f"--hf_model={d / 'C' / 'my_source'}", f"--out={d / 'C'}"], {"keep": ["C"]}


def _files(d: Path, names) -> list:
  out = []
  for n in names:
    p = d / n
    for q in sorted([p, *p.rglob("*")] if p.is_dir() else [p]):
      out.append((str(q), q.read_bytes() if q.is_file() else None))
  return out


def run_file_safety():
  with tempfile.TemporaryDirectory() as t:
    d = Path(t)
    ev, holder = setup_file_safety(d)
    try:
      print("| # | CLI | input | exit | files untouched | message (T = the temporary folder) |")
      print("|---|---|---|---|---|---|")
      for i, (module, what, argv, opt) in enumerate(file_safety_probes(d, ev), 1):
        before = _files(d, opt.get("keep", []))
        env = dict(os.environ, PYTHONPATH=str(ROOT), **opt.get("env", {}))
        module = module if "." in module else f"launch.{module}"
        r = subprocess.run([sys.executable, "-m", module, *argv], cwd=opt.get("cwd", ROOT),
                           capture_output=True, text=True, timeout=600, env=env)
        same = "yes" if _files(d, opt.get("keep", [])) == before else "NO"
        msg = message(r, None, d).replace(f"process {holder.pid}", "process PID")
        print(f"| {i} | {module.replace('launch.', '')} | {what} | {r.returncode} | "
              f"{same if opt.get('keep') else '-'} | {msg} |", flush=True)
    finally:
      holder.kill()
      holder.wait()


def message(r, show, tmp):
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  if show:
    lines = [ln for ln in lines if show in ln]
  msg = lines[-1] if lines else ""
  if "] " in msg and msg[:1] in "IWE" and msg[1:5].isdigit():
    msg = msg.split("] ", 1)[1]  # drop absl's time/thread prefix
  if "Traceback" in r.stderr:
    msg = "TRACEBACK: " + msg
  if r.stdout.strip() and r.returncode:
    msg += f" (stdout: {r.stdout.strip()[:40]})"
  return msg.replace(str(tmp), "T").replace("|", "\\|")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--only", default=None, help="one CLI: convert, export_hf, generate, train")
  ap.add_argument("--file_safety", action="store_true", help="only the cases where an output "
                  "lands on an input or a user's files")
  args = ap.parse_args()
  if args.file_safety:
    return run_file_safety()
  with tempfile.TemporaryDirectory() as t:
    d = Path(t)
    setup(d)
    print("| # | CLI | input | exit | message (T = the temporary folder) |")
    print("|---|---|---|---|---|")
    for i, (module, what, argv, opt) in enumerate(probes(d), 1):
      if args.only and module != args.only:
        continue
      r = cli(module, *argv, cwd=opt.get("cwd", ROOT))
      print(f"| {i} | {module} | {what} | {r.returncode} | {message(r, opt.get('show'), d)} |",
            flush=True)


if __name__ == "__main__":
  main()
