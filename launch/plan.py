r"""Plans a run's memory and cost per device by compiling it ahead of time for N devices.

  python -m launch.plan --config=configs/llama2_7b_paper.py --mesh=fsdp:16 --devices=16 \
      [--task=train|focus_prefill] [--tokens=131072] [--chunk_size=2048]

Nothing is loaded and no weight is initialised: the model, TrainState and batch
are abstract shapes (nnx.eval_shape); the training step (or FocusLLM's chunk
encoding and local step) is lowered and compiled with XLA for --devices
virtual CPU devices, then XLA's memory analysis (argument, output, temp bytes
per device) and cost analysis (FLOPs) are printed as a table. The last line is
one JSON object with per_device_total_bytes and flops. CPU compilation stands
in for the accelerator's: the byte counts are those of the partitioned
program; an accelerator's own compiler may fuse differently.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from launch.cli_errors import fail_cleanly, run_cli, start

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (ml_collections).")
flags.DEFINE_string("mesh", None, "Mesh, e.g. 'fsdp:16', 'data:2,fsdp:8,chunk:4' or 'fsdp:8,tensor:2' "
                    "(default: the config's).")
flags.DEFINE_integer("devices", 8, "Number of (virtual CPU) devices to compile for.")
flags.DEFINE_enum("task", "train", ["train", "focus_prefill"], "What to plan.")
flags.DEFINE_integer("tokens", 131072, "focus_prefill: prompt length.")
flags.DEFINE_integer("chunk_size", None, "Chunk size S (default: the config's largest).")
flags.DEFINE_integer("chunk_batch", 1, "focus_prefill: chunk rows per device per call.")
flags.mark_flags_as_required(["config"])


def plan_train(config, mesh):
  """Compiled training step for the config's largest chunk size; returns it and its args."""
  import jax
  import jax.numpy as jnp
  from focus_jax import parallel
  from focus_jax.focus.losses import split_model
  from focus_jax.train import setup
  from focus_jax.train.step import batch_specs, make_train_step, place_state
  model, _ = setup.load_model(config, abstract=True)
  cfg = model.config
  parallel.check_tensor(cfg, mesh)
  graphdef, cand, frozen = split_model(model)
  sched, tx = setup.schedule_and_optimizer(config)
  state, frozen, placement = place_state(cand, frozen, tx, mesh,
                                         base_dtype=config.base_dtype or None)
  spec = setup.sample_spec(config, cfg, parallel.axis_size(mesh, "chunk"))
  setup.batch_spec(config, parallel.axis_size(mesh, "data") * parallel.axis_size(mesh, "fsdp"))
  s, b, t = _chunk_size(config), config.batch_size, spec.tasks_per_sample
  rows, row_len = spec.max_rows(s), spec.row_len(s)
  dims = dict(chunk_tokens=(rows, row_len), chunk_valid=(rows, row_len), n_memory=(), kind=(),
              local_tokens=(spec.local_len,), local_valid=(spec.local_len,),
              targets=(config.target_tokens,))
  abstract = {k: jax.ShapeDtypeStruct((config.accum, b, t) + d,
                                      bool if k.endswith("_valid") else jnp.int32)
              for k, d in dims.items()}
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=jax.sharding.NamedSharding(mesh, p))
           for (k, v), p in zip(abstract.items(), batch_specs(mesh, abstract).values())}
  step = make_train_step(graphdef, mesh, tx, sched, config, placement)
  fused = f"fused (groups={config.fused_groups})" if config.fused_chunks else "unfused"
  desc = (f"train step: {cfg.num_layers} layers, hidden {cfg.hidden_size}, batch {b} x {t} "
          f"tasks, S={s} ({rows} rows of {row_len}), local {spec.local_len}, "
          f"remat={config.remat}, chunks {fused}, base {config.base_dtype or 'as loaded'}")
  return [(desc, step.lower(state, frozen, batch).compile())]


def plan_focus_prefill(config, mesh):
  """Compiled FocusLLM first call at --tokens: one chunk-encoding call and the local step."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from focus_jax import parallel
  from focus_jax.config import FocusConfig
  from focus_jax.focus import steps
  from focus_jax.focus.plan import round_up, row_count, row_len as chunk_row_len
  from focus_jax.train import setup
  from focus_jax.train.step import as_dtype
  model, _ = setup.load_model(config, abstract=True)
  cfg = model.config
  parallel.check_tensor(cfg, mesh)
  graphdef, state = nnx.split(model)
  state = parallel.abstract_state(as_dtype(state, config.base_dtype or None), mesh)
  fc = FocusConfig(chunk_size=_chunk_size(config), local_window=config.local_window,
                   fragment_len=config.fragment_max)
  shards = parallel.axis_size(mesh, "chunk")
  # The rows make_plan builds for this input: its bucketed row count and row length.
  n_chunks = -(-(FLAGS.tokens - fc.local_window) // fc.chunk_size)
  n_rows = row_count(n_chunks, shards * FLAGS.chunk_batch)
  row_len = chunk_row_len(fc.chunk_size, min(fc.fragment_len, fc.local_window))
  rows_sh = parallel.sharding(mesh, "chunk")
  sds = lambda shape, dt, sh: jax.ShapeDtypeStruct(shape, dt, sharding=sh)
  cache_size = round_up(row_len - 1 + 16, 16)
  alloc = steps.alloc_fn(cfg, mesh, n_rows, cache_size, row_len - 1, True)
  cache, mem_k, mem_v = jax.eval_shape(alloc)
  csh = steps.cache_shardings(mesh)
  cache = jax.tree.map(lambda x, sh: sds(x.shape, x.dtype, sh), cache, csh)
  msh = parallel.sharding(mesh, None, "chunk")
  mem_k, mem_v = (sds(x.shape, x.dtype, msh) for x in (mem_k, mem_v))
  encode = steps.encode_fn(graphdef, mesh, FLAGS.chunk_batch * shards, True)
  tokens = sds((n_rows, row_len), jnp.int32, rows_sh)
  valid = sds((n_rows, row_len), bool, rows_sh)
  enc = encode.lower(state, tokens, valid, cache, mem_k, mem_v,
                     jax.ShapeDtypeStruct((), jnp.int32)).compile()
  local_len = round_up(fc.local_window + 1, 64)
  rep = parallel.sharding(mesh)
  local = steps.local_fn(graphdef, mesh).lower(
      state, mem_k, mem_v, sds((n_rows,), bool, rows_sh), sds((n_rows,), jnp.int32, rows_sh),
      sds((local_len,), jnp.int32, rep), sds((local_len,), bool, rep)).compile()
  return [(f"chunk encoding: {n_rows} rows of {row_len} (S={fc.chunk_size}), kept caches "
           f"{cache_size} slots, {FLAGS.chunk_batch * shards} rows per call", enc),
          (f"local step: {local_len} tokens over {n_rows} memory entries", local)]


def _chunk_size(config) -> int:
  return FLAGS.chunk_size if FLAGS.chunk_size is not None else max(config.chunk_sizes)


def validate_flags(config, task: str) -> None:
  """Checks the flags and the config's numbers before JAX starts compiling."""
  for name in ("devices", "chunk_batch", "chunk_size"):
    v = getattr(FLAGS, name)
    if v is not None and v < 1:
      raise ValueError(f"--{name} must be >= 1, got {v}")
  if task == "focus_prefill" and FLAGS.tokens <= config.local_window:
    raise ValueError(f"--tokens must exceed the local window ({config.local_window}) for a "
                     f"FocusLLM prefill to hold any chunk, got {FLAGS.tokens}")


def analyse(compiled) -> dict:
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out = dict(argument_bytes=int(mem.argument_size_in_bytes),
             output_bytes=int(mem.output_size_in_bytes),
             alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes))
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                        + out["temp_bytes"])
  out["flops"] = float((cost or {}).get("flops", 0.0))
  return out


def gib(n) -> str:
  return f"{n / 2**30:8.2f}"


def run(config, mesh_text: str, devices: int, task: str) -> dict:
  import jax
  from focus_jax import parallel
  if jax.device_count() < devices:
    raise ValueError(f"{devices} devices requested, {jax.device_count()} available")
  mesh = parallel.make_mesh(mesh_text, jax.devices()[:devices])
  programs = plan_train(config, mesh) if task == "train" else plan_focus_prefill(config, mesh)
  rows = [(desc, analyse(c)) for desc, c in programs]
  print(f"mesh {dict(mesh.shape)} on {devices} devices; per device, GiB:")
  print(f"{'program':12s} {'arguments':>9s} {'outputs':>9s} {'aliased':>9s} {'temp':>9s} "
        f"{'total':>9s} {'TFLOP':>9s}")
  for i, (desc, r) in enumerate(rows):
    print(f"{('#' + str(i)):12s} {gib(r['argument_bytes'])} {gib(r['output_bytes'])} "
          f"{gib(r['alias_bytes'])} {gib(r['temp_bytes'])} {gib(r['total_bytes'])} "
          f"{r['flops'] / 1e12:9.2f}   {desc}")
  peak = max(r["total_bytes"] for _, r in rows)
  summary = {"task": task, "mesh": mesh_text, "devices": devices,
             "per_device_total_bytes": peak, "per_device_total_gib": round(peak / 2**30, 3),
             "flops": sum(r["flops"] for _, r in rows), "programs": [r for _, r in rows]}
  return summary


def main(argv):
  start("plan", argv)
  path = config_flags.get_config_filename(FLAGS["config"])
  if not os.path.isfile(path):
    print(f"plan: error: --config={path}: no such file", file=sys.stderr)
    sys.exit(1)
  from focus_jax.train.run_config import TrainConfig
  config = fail_cleanly("plan", TrainConfig.from_config, FLAGS.config)
  mesh_text = FLAGS.mesh if FLAGS.mesh is not None else config.mesh
  fail_cleanly("plan", validate_flags, config, FLAGS.task)
  import jax
  if jax.device_count() < FLAGS.devices and not os.environ.get("FOCUS_JAX_PLAN_CHILD"):
    # virtual CPU devices must be requested before JAX starts: re-run in a child
    env = dict(os.environ, FOCUS_JAX_PLAN_CHILD="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={FLAGS.devices}").strip())
    sys.exit(subprocess.call([sys.executable, "-m", "launch.plan", *sys.argv[1:]], env=env))
  summary = fail_cleanly("plan", run, config, mesh_text, FLAGS.devices, FLAGS.task)
  print(json.dumps(summary))


if __name__ == "__main__":
  from launch.console import resolve_config_argv
  sys.argv = resolve_config_argv(sys.argv)
  run_cli("plan", main)
