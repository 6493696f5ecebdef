"""launch.evaluate end to end on a tiny checkpoint: perplexity equals a loop over the
decoder, a second call resumes (nothing recomputed), bad data fails in one line, and
LongBench writes its pred file and official score."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.checkpoint.orbax import save_checkpoint
from focus_jax.config import ModelConfig
from focus_jax.eval import metrics
from focus_jax.text import ByteTokenizer as ByteTok
from flax import nnx

from focus_jax.model import LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, bos_token_id=1, eos_token_ids=(2,))


def _run(*args):
  return subprocess.run([sys.executable, "-m", "launch.evaluate", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  d = tmp_path_factory.mktemp("eval") / "ckpt"
  model = LlamaForCausalLM(CFG, nnx.Rngs(0), std=0.3)
  save_checkpoint(d, model)
  return d, model


def test_perplexity_cli_resume_and_errors(ckpt, tmp_path):
  d, model = ckpt
  text = "".join(chr(97 + (i * 7) % 26) for i in range(150))
  (tmp_path / "doc.txt").write_text(text)
  out = tmp_path / "run"
  args = [f"--checkpoint={d}", "--tokenizer=byte", "--task=perplexity", f"--out={out}",
          f"--data={tmp_path / 'doc.txt'}", "--lengths=64", "--stride=40", "--loss_tokens=8"]
  r = _run(*args)
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  lines = (out / "results.jsonl").read_text().splitlines()
  assert len(lines) == 3 and (out / "perplexity.png").stat().st_size > 0
  ids = [b + 3 for b in text.encode()]
  nll = 0.0
  for s in (0, 40, 80):
    w = [1] + ids[s:s + 63]
    logits = model(jnp.asarray([w]), jnp.arange(64)[None]).logits[0]
    logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
    nll -= sum(logp[i - 1, w[i]] for i in range(56, 64))
  assert summary["scores"]["64"]["ppl"] == pytest.approx(np.exp(nll / 24), rel=1e-4)
  assert json.loads((out / "summary.json").read_text()) == summary
  # resume: nothing recomputed, same lines
  r = _run(*args)
  assert r.returncode == 0, r.stderr[-2000:]
  assert (out / "results.jsonl").read_text().splitlines() == lines
  assert json.loads(r.stdout.strip().splitlines()[-1])["scores"] == summary["scores"]
  # more lengths into the same folder: the summary scores the whole folder
  r = _run(*args[:-3], "--lengths=32", *args[-2:])
  assert r.returncode == 0, r.stderr[-2000:]
  both = json.loads(r.stdout.strip().splitlines()[-1])["scores"]
  assert sorted(both) == ["32", "64"] and both["64"] == summary["scores"]["64"]
  assert both["32"]["windows"] == 3
  lines = (out / "results.jsonl").read_text().splitlines()
  # a different setting into the same folder is refused; a corrupt line is named
  r = _run(*args[:-1], "--loss_tokens=4")
  assert r.returncode == 1 and "other settings (loss_tokens)" in r.stderr
  with open(out / "results.jsonl", "a") as f:
    f.write('{"case": \n')
  r = _run(*args)
  assert r.returncode == 1 and "results.jsonl:7: malformed JSON" in r.stderr
  # a named corpus that does not exist: one line, before the checkpoint loads
  r = _run(*[a for a in args if not a.startswith("--data")], "--data=corpus:pg19")
  assert r.returncode == 1 and r.stderr.strip().splitlines() == [
      "launch.evaluate: error: --data: unknown corpus corpus:pg19; known: corpus:plays, "
      "corpus:canterbury"], r.stderr


def test_longbench_cli_pred_file(ckpt, tmp_path):
  d, _ = ckpt
  row = {"input": "Who?", "context": "Ann met Bob. " * 20, "answers": ["Ann"],
         "all_classes": None, "length": 60}
  (tmp_path / "hotpotqa.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
  out = tmp_path / "lb"
  r = _run(f"--checkpoint={d}", "--tokenizer=byte", "--task=longbench", f"--out={out}",
           f"--data_dir={tmp_path}", "--datasets=hotpotqa", "--max_length=200", "--limit=1")
  assert r.returncode == 0, r.stderr[-2000:]
  preds = [json.loads(x) for x in (out / "longbench" / "hotpotqa.jsonl").read_text().splitlines()]
  assert len(preds) == 1 and set(preds[0]) == {"pred", "answers", "all_classes", "length"}
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  assert summary["scores"]["hotpotqa"] == metrics.longbench_score(
      "hotpotqa", [preds[0]["pred"]], [["Ann"]], None)
  rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
  assert rows[0]["prompt_tokens"] == 200
  r = _run(f"--checkpoint={d}", "--tokenizer=byte", "--task=longbench", f"--out={tmp_path / 'x'}",
           f"--data_dir={tmp_path}", "--datasets=qasper")
  assert r.returncode == 1 and "qasper.jsonl: no such file" in r.stderr
