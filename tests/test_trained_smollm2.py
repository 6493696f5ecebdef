"""The trained SmolLM2 candidates that ship with focus_jax (focus_jax/trained/).

The file matches its pinned sha256, loads through the HF folder that
`python -m focus_jax.trained --out` assembles, and its memory carries
information on text it was not trained on: on held-out plays with a fact
inserted (data.retrieval: the target, a token of the fact's number, lies only
in the memory), the loss with the memory is lower than without it by a
margin, while the untrained candidates (copies of q/k/v/o) give no such gain.
"""
import json
from functools import partial

import jax
import numpy as np
import pytest

from flax import nnx

from focus_jax import trained
from focus_jax.data import TokenWindows
from focus_jax.text import hf_tokenizer
from focus_jax.data.retrieval import FactInserter
from focus_jax.data.samples import CONTINUATION, SampleSpec, make_tasks, pad_tasks
from focus_jax.focus.losses import task_losses
from focus_jax.model import add_candidates, device_put, remove_candidates
from focus_jax.train.setup import shakespeare_split

SAMPLES = 6
MARGIN = 1.0   # nats


def test_sha256_is_checked(tmp_path, monkeypatch):
  monkeypatch.setitem(trained.SHIPPED, "smollm2_memory", "0" * 64)
  with pytest.raises(trained.TrainedError, match="does not match"):
    trained.folder("smollm2_memory")
  with pytest.raises(trained.TrainedError, match="no shipped candidates"):
    trained.folder("nope")


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
  from focus_jax.checkpoint.hf import load_hf, read_focus_config
  out = trained.hf_folder(tmp_path_factory.mktemp("trained") / "hf")
  model, _ = load_hf(out)
  return device_put(model), read_focus_config(out), out


@partial(jax.jit, static_argnums=(0, 3))   # one compile for both models (same graph)
def _losses(graphdef, state, b, bos_sees_memory):
  m = nnx.merge(graphdef, state)
  return (task_losses(m, b, bos_sees_memory=bos_sees_memory)[0],
          task_losses(m, dict(b, n_memory=b["n_memory"] * 0))[0])


def _fact_losses(model, focus, tok_dir):
  enc, _ = hf_tokenizer(str(tok_dir), add_special_tokens=False)
  bos = model.config.bos_token_id
  spec = SampleSpec(local_window=focus.local_window, chunk_sizes=(focus.chunk_size,),
                    fragment_max=focus.fragment_len, span_min=30, max_len=512, bos_id=bos,
                    retrieval_frac=1.0)
  windows = TokenWindows.from_paths(shakespeare_split("eval")[:1], enc, 384, 512)
  facts = FactInserter(lambda s: [i for i in enc(s) if i != bos])
  batch = pad_tasks([make_tasks(windows[i * 7], spec, 5, i, 1, facts) for i in range(SAMPLES)],
                    spec)
  batch = {k: v.reshape((1, -1) + v.shape[2:]) for k, v in batch.items()}
  graphdef, state = nnx.split(model)
  mem, none = map(np.asarray, _losses(graphdef, state, batch, focus.bos_sees_memory))
  fact = batch["kind"].ravel() == CONTINUATION
  return float(mem[fact].mean()), float(none[fact].mean())


def test_trained_memory_retrieves_facts_on_held_out_text(trained_model):
  model, focus, path = trained_model
  shipped = json.loads((path / "focus_config.json").read_text())
  assert shipped["chunk_size"] == focus.chunk_size
  from configs import smollm2_memory   # the recipe that trains them: the same memory layout
  assert shipped["bos_sees_memory"] is smollm2_memory.get_config().bos_sees_memory
  mem, none = _fact_losses(model, focus, path)
  untrained = add_candidates(remove_candidates(nnx.clone(model)))
  mem0, none0 = _fact_losses(untrained, focus, path)
  assert none0 == pytest.approx(none, abs=1e-4)      # same tasks, same plain baseline
  assert not mem0 < none0 - MARGIN, (mem0, none0)    # copies of q/k/v/o: no retrieval
  assert mem < none - MARGIN, (mem, none)            # trained: the memory holds the fact
