r"""Does FocusLLM's memory carry the answer, and does the local window read it?

  .venv/bin/python bench/memory_diagnose.py --config=configs/smollm2_135m.py \
      [--workdir=RUN --step=-1] [--samples=8] [--layers=0,4,9,14,19,24,29]

On held-out samples (the config's eval_data, seed + 1000, like train.evaluate),
for each task (continuation, repetition) with one target token:
  row_nll       the "answer row" (the chunk row whose memory text holds the
                target token) predicting the target with its own logits at its
                candidate position; row_best_nll the best row; row_top1 whether
                the answer row's argmax is the target (repetition tasks only:
                only there is the target in the memory);
  loss, loss_no_memory, loss_bos_hidden  the local loss with the memory
                (official layout), with none, and with the memory hidden from
                the local BOS (losses.local_losses(bos_sees_memory=False));
  attention     for chosen layers, the attention of the last local position
                (the one that predicts) averaged over heads: total mass on the
                memory, on the answer row's entry, on the local BOS, and the
                answer entry's share of the memory mass (1/n = uniform).
Attention is recomputed outside the model: the decoder truncated to l layers
(final norm set to ones, so its output is the RMS-normalised residual) gives
layer l's input; q comes from layer l's projections, keys are the memory
entries and the local tokens' pre-RoPE keys, both rotated by rope.apply_rope.
The last line is one JSON object with the means.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/smollm2_135m.py", "Training config.")
flags.DEFINE_string("workdir", "", "Run folder whose checkpoint to load ('' = initial copies).")
flags.DEFINE_integer("step", -1, "Checkpoint step (-1 latest, 0 initial).")
flags.DEFINE_integer("samples", 8, "Held-out samples (two tasks each).")
flags.DEFINE_string("layers", "0,4,9,14,19,24,29", "Layers whose attention is measured.")
flags.DEFINE_string("cache", "/tmp/focus_jax_diag", "Folder for the data cache.")
flags.DEFINE_string("label", "", "Name printed in the JSON line.")


def load_candidates(config, cand, workdir, step):
  """The candidate State of WORKDIR's checkpoint `step` (-1: latest; 0: the initial copies)."""
  from focus_jax.train.checkpoints import TrainCheckpoints
  from focus_jax.train.evaluate import _saved_params
  ckdir = os.path.join(workdir, "checkpoints")
  if step == 0 or not os.path.isdir(ckdir):
    return cand, 0
  ck = TrainCheckpoints(ckdir, every=1)
  step = ck.latest_step() if step < 0 else step
  out = _saved_params(ck, step, cand)
  ck.close()
  return out, step


def make_attention_stats(graphdef, layers):
  """f(state, mem_k, mem_v, mem_valid, local, local_valid) -> [len(layers), R + 1]: per layer
  the last local position's attention mass (mean over heads) on each memory entry, then on BOS."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from focus_jax.focus.core import memory_prefix, row_positions
  from focus_jax.model import apply_rope, inv_frequencies

  @jax.jit
  def f(state, mem_k, mem_v, mem_valid, local, local_valid):
    model = nnx.merge(graphdef, state)
    cfg = model.config
    hq, hk, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    r = mem_k.shape[1]
    prefix, n = memory_prefix(mem_k[:, None], mem_v[:, None], mem_valid[None])
    toks, val = local[None], local_valid[None]
    pos = row_positions(val, n)
    kv = model(toks, pos, valid=val, prefix=prefix, logits=None, return_kv=True).kv
    inv = inv_frequencies(cfg, pos.max() + 1)
    ok = jnp.concatenate([mem_valid, local_valid])
    bos = r + jnp.argmax(local_valid)
    layer_state = nnx.state(model.model.layers)
    out = []
    for l in layers:
      # the first l layers, then a plain RMS norm: the input of layer l's input_layernorm
      trunc = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))  # its own Variables
      nnx.update(trunc.model.layers, jax.tree.map(lambda x: x[:l], layer_state))
      trunc.model.norm.weight[...] = jnp.ones_like(trunc.model.norm.weight[...])
      pre = prefix._replace(k=prefix.k[:l], v=prefix.v[:l])
      x = trunc(toks, pos, valid=val, prefix=pre, logits=None).hidden[0, -1]
      layer = model.model.layer(l)
      q = layer.self_attn.q_proj(x * layer.input_layernorm.weight[...])
      q = apply_rope(q.reshape(1, hq, hd), pos[0, -1:], inv)[0]
      keys = jnp.concatenate([apply_rope(mem_k[l], jnp.arange(r), inv),
                              apply_rope(kv[0][l, 0], pos[0], inv)], 0)
      keys = jnp.repeat(keys, hq // hk, axis=1)
      sc = jnp.einsum("hd,shd->hs", q, keys) / jnp.sqrt(hd)
      p = jax.nn.softmax(jnp.where(ok[None], sc, -1e30), axis=-1).mean(0)
      out.append(jnp.concatenate([p[:r], p[bos][None]]))
    return jnp.stack(out)  # [layers, R + 1]: per-entry mass, then BOS
  return f


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from focus_jax.data.samples import CONTINUATION, REPETITION, build_task, chunk_size_for_step
  from focus_jax.data.samples import draw_task
  from flax import nnx
  from focus_jax.focus.core import row_positions
  from focus_jax.focus.losses import candidate_memory, local_losses, split_model
  import dataclasses
  from focus_jax.train import setup
  from focus_jax.train.evaluate import EVAL_SEED_OFFSET
  from focus_jax.train.run_config import TrainConfig

  config = dataclasses.replace(TrainConfig.from_config(FLAGS.config), target_tokens=1)
  model, extras = setup.load_model(config)
  cfg = model.config
  graphdef, cand, frozen = split_model(model)
  cand, step = load_candidates(config, cand, FLAGS.workdir, FLAGS.step)
  full_graphdef, params = nnx.split(nnx.merge(graphdef, cand, frozen))
  spec = setup.sample_spec(config, cfg, 1)
  ev = dataclasses.replace(config, data=config.eval_data or config.data)
  source = setup.make_source(ev, model, extras, FLAGS.cache)
  seed = config.seed + EVAL_SEED_OFFSET
  order = np.random.default_rng([seed, 5]).permutation(len(source))
  layers = [int(x) for x in FLAGS.layers.split(",") if x]

  @jax.jit
  def rows_and_memory(p, rows, valid):
    m = nnx.merge(full_graphdef, p)
    logits = m(rows, row_positions(valid), valid=valid,
               candidate_index=jnp.full((rows.shape[0],), rows.shape[1] - 1),
               logits="last").logits[:, -1]
    k, v = candidate_memory(m, rows, valid)
    return jax.nn.log_softmax(logits, -1), k, v

  @jax.jit
  def losses(p, k, v, n, local, lvalid, target):
    m = nnx.merge(full_graphdef, p)
    args = (k[:, None], v[:, None])
    lt, lv, tg = local[None], lvalid[None], target[None, None]
    return (local_losses(m, *args, n[None], lt, lv, tg)[0],
            local_losses(m, *args, n[None] * 0, lt, lv, tg)[0],
            local_losses(m, *args, n[None], lt, lv, tg, bos_sees_memory=False)[0])

  att_fn = make_attention_stats(full_graphdef, layers)
  recs = []
  for i in range(FLAGS.samples):
    x = source[int(order[i % len(order)])]
    rng = np.random.default_rng([seed, 1, i])
    s = chunk_size_for_step(spec, seed, i)
    for kind in (CONTINUATION, REPETITION):
      t = draw_task(x, kind, spec, rng)
      task = build_task(x, t, s, spec)
      c, nr, lq = spec.row_len(s), spec.max_rows(s), spec.local_len
      rows, valid = np.zeros((nr, c), np.int32), np.zeros((nr, c), bool)
      for j, r in enumerate(task["rows"]):
        rows[j, c - len(r):], valid[j, c - len(r):] = r, True
      valid[len(task["rows"]):, -1] = True  # unused rows: a lone (masked) candidate
      local, lvalid = np.zeros((lq,), np.int32), np.zeros((lq,), bool)
      local[lq - len(task["local"]):], lvalid[lq - len(task["local"]):] = task["local"], True
      n = len(task["rows"])
      tgt = int(task["targets"][0])
      logp, k, v = rows_and_memory(params, rows, valid)
      a, z, b = map(float, losses(params, k, v, jnp.asarray(n), local, lvalid, jnp.asarray(tgt)))
      rec = {"kind": kind, "n": n, "S": s, "m": t["m"], "loss": a, "loss_no_memory": z,
             "loss_bos_hidden": b}
      answer = None
      if kind == REPETITION:
        answer = (t["start"] + t["m"]) // s
        nll = -np.asarray(logp[:n, tgt])
        rec.update(row_nll=float(nll[answer]), row_best_nll=float(nll.min()),
                   row_top1=bool(int(np.argmax(logp[answer])) == tgt))
      att = np.asarray(att_fn(params, k, v, np.arange(nr) < n, local, lvalid))
      for li, l in enumerate(layers):
        mem = float(att[li, :n].sum())
        rec[f"att{l}_memory"], rec[f"att{l}_bos"] = mem, float(att[li, -1])
        if answer is not None:
          rec[f"att{l}_answer"] = float(att[li, answer])
          rec[f"att{l}_answer_share"] = float(att[li, answer]) / max(mem, 1e-12)
          rec[f"att{l}_answer_rank"] = int((att[li, :n] > att[li, answer]).sum())
      if answer is not None:
        rec["uniform_share"] = 1.0 / n
      recs.append(rec)
      print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}),
            flush=True)
  out = {"label": FLAGS.label or FLAGS.workdir or "initial", "step": step,
         "tasks": len(recs)}
  for kind, name in ((CONTINUATION, "continuation"), (REPETITION, "repetition")):
    sel = [r for r in recs if r["kind"] == kind]
    keys = sorted({k for r in sel for k in r if k not in ("kind", "n", "S", "m")})
    for k in keys:
      vals = [float(r[k]) for r in sel if k in r]
      out[f"{name}_{k}"] = round(float(np.mean(vals)), 4)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  app.run(main)
