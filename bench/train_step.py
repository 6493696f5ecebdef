r"""FocusLLM training step cost: stop-gradient prefix vs full back-propagation vs a forward.

  .venv/bin/python bench/train_step.py [--config=configs/smollm2_135m.py] [--repeats=3] \
      [--config.chunk_sizes='(128,)' ...]

All three run the same step batch (drawn by the config's data pipeline):
  step     the jitted train step (losses, candidate gradients, AdamW) with the
           chunk prefix computed without gradient (the default);
  full     the same step back-propagating through the whole chunk rows;
  forward  the losses alone (no gradient) over the same tokens.
Compile time is reported apart; steady-state times are the best of --repeats.
Process CPU time is reported beside wall time (less sensitive to other load).
The last line is one JSON object with every figure.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/smollm2_135m.py", "Training config.")
flags.DEFINE_integer("repeats", 3, "Timed calls per variant (best kept).")
flags.DEFINE_string("workdir", "/tmp/focus_jax_bench", "Folder for the data cache.")


def _cpu_s():
  t = os.times()
  return t.user + t.system


def _timed(fn, repeats):
  """(compile+first call wall s, best wall s, best cpu s) of fn()."""
  import jax
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  best_w = best_c = float("inf")
  for _ in range(repeats):
    w, c = time.perf_counter(), _cpu_s()
    jax.block_until_ready(fn())
    best_w, best_c = min(best_w, time.perf_counter() - w), min(best_c, _cpu_s() - c)
  return first, best_w, best_c


def main(argv):
  del argv
  import jax
  from flax import nnx
  from focus_jax import parallel
  from focus_jax.data import step_iterator
  from focus_jax.focus.losses import split_model, task_losses
  import dataclasses
  from focus_jax.train import setup
  from focus_jax.train.optim import make_optimizer, make_schedule
  from focus_jax.train.run_config import TrainConfig
  from focus_jax.train.step import init_state, make_train_step, place_batch

  config = TrainConfig.from_config(FLAGS.config)
  mesh = parallel.make_mesh(config.mesh)
  model, extras = setup.load_model(config)
  cfg = model.config
  spec = setup.sample_spec(config, cfg, parallel.axis_size(mesh, "chunk"))
  bspec = setup.batch_spec(config, parallel.axis_size(mesh, "data"))
  source = setup.make_source(config, model, extras, FLAGS.workdir)
  local = next(step_iterator(source, spec, bspec, config.seed))
  batch = place_batch(mesh, local)
  tokens = int(local["chunk_valid"].sum() + local["local_valid"].sum())
  padded = int(local["chunk_valid"].size + local["local_valid"].size)
  schedule = make_schedule(config.lr, config.steps, config.warmup_steps, config.decay)
  tx = make_optimizer(schedule, clip_norm=config.clip_norm)
  graphdef, cand, frozen = split_model(model)
  frozen = parallel.replicate(frozen, mesh)
  out = {"config": config_flags.get_config_filename(FLAGS["config"]),
         "chunk_shape": list(local["chunk_tokens"].shape), "local_shape":
         list(local["local_tokens"].shape), "tokens": tokens, "padded_tokens": padded,
         "devices": jax.device_count(), "dtype": cfg.compute_dtype}

  for name, sg in (("step", True), ("full", False)):
    fn = make_train_step(graphdef, mesh, tx, schedule,
                         dataclasses.replace(config, stop_gradient_prefix=sg))
    state = [parallel.replicate(init_state(cand, tx), mesh)]

    def run():
      state[0], m = fn(state[0], frozen, batch)
      return m
    first, wall, cpu = _timed(run, FLAGS.repeats)
    out.update({f"{name}_compile_s": round(first - wall, 2), f"{name}_s": round(wall, 3),
                f"{name}_cpu_s": round(cpu, 3)})
    print(f"{name:8s} {wall:8.3f} s/step  cpu {cpu:8.3f} s  (first call {first:.1f} s)",
          flush=True)

  mb = {k: v[0] for k, v in batch.items()}  # one micro-batch, no mesh: plain forward

  @jax.jit
  def forward(c, fz, b):
    return task_losses(nnx.merge(graphdef, c, fz), b)[0].mean()
  reps = config.accum
  first, wall, cpu = _timed(lambda: [forward(cand, frozen, mb) for _ in range(reps)][-1],
                            FLAGS.repeats)
  out.update(forward_compile_s=round(first - wall, 2), forward_s=round(wall, 3),
             forward_cpu_s=round(cpu, 3))
  print(f"{'forward':8s} {wall:8.3f} s/step  cpu {cpu:8.3f} s  (first call {first:.1f} s)",
        flush=True)
  out.update(step_over_forward=round(out["step_s"] / out["forward_s"], 3),
             step_over_full=round(out["step_s"] / out["full_s"], 3),
             step_cpu_over_forward_cpu=round(out["step_cpu_s"] / out["forward_cpu_s"], 3),
             tokens_per_s=round(tokens / out["step_s"], 1))
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
