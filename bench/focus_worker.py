"""One measurement of bench/focus_scaling.py, run in its own process (see there)."""
from __future__ import annotations

import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

_COMPILES: list[tuple[float, float]] = []   # (end time, seconds) of trace/lower/compile events


def _listen(event: str, duration: float, **_):
  if event.startswith("/jax/core/compile/"):
    _COMPILES.append((time.perf_counter(), duration))


jax.monitoring.register_event_duration_secs_listener(_listen)


def compile_s(start: float, end: float = float("inf")) -> float:
  return sum(d for t, d in _COMPILES if start <= t <= end)


def matmul_peak() -> tuple[float, float]:
  """A jitted 2048x2048 float32 matmul: (GFLOP/s per wall second, best of 10;
  GFLOP per process CPU second, over the 10)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best, c0 = float("inf"), time.process_time()
  for _ in range(10):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  flop = 2 * 2048 ** 3 / 1e9
  return flop / best, 10 * flop / (time.process_time() - c0)


def load(spec):
  from transformers import AutoTokenizer
  from focus_jax import assets
  from focus_jax.checkpoint.hf import load_hf
  from focus_jax.model import add_candidates, device_put
  path = spec.get("checkpoint") or str(assets.smollm2_hf_dir())
  model, _ = load_hf(path)
  model.set_config(model.config.replace(compute_dtype=spec.get("dtype", "float32")))
  model = device_put(model)
  trained = model.has_candidates
  if not trained:
    add_candidates(model)
  tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
  return model, tok, trained


def text_ids(tok, length: int) -> np.ndarray:
  from focus_jax import assets
  chars = length * 5
  while True:
    ids = tok(assets.shakespeare_text(chars))["input_ids"]
    if len(ids) >= length or chars > 10 ** 8:
      return np.asarray(ids[:length], np.int32)
    chars *= 2


def chunk_flops(cfg, plan) -> float:
  """Model FLOPs of the chunk encoding: matmuls + causal attention, real rows only."""
  d, hq, hk = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  per_tok = cfg.num_layers * 2 * (d * (hq + 2 * hk) + hq * d + 3 * d * cfg.intermediate_size)
  lens = plan.valid[:plan.n_chunks].sum(1).astype(np.float64)
  attn = cfg.num_layers * 4 * hq * (lens * (lens + 1) / 2)
  return float((per_tok * lens + attn).sum())


def _focus_cfg(spec):
  from focus_jax.config import FocusConfig
  return FocusConfig(chunk_size=spec["S"], local_window=spec["Wl"], fragment_len=spec["F"],
                     min_focus_len=spec.get("T", 4096))


def _run_focus(model, ids, spec, steps, decode="exact"):
  from focus_jax.generation.modes import ModeSetup, generate
  tm = {}
  t0, c0 = time.perf_counter(), time.process_time()
  setup = ModeSetup("focus", model, focus=_focus_cfg(spec), focus_decode=decode,
                    chunk_batch=spec["chunk_batch"])
  gen = generate(setup, ids, steps, stop_at_eos=False, timings=tm)
  total, cpu = time.perf_counter() - t0, time.process_time() - c0
  comp = compile_s(t0)
  if "chunks" not in tm:
    raise ValueError(f"the {len(ids)}-token prompt ran the plain model (below min_focus_len "
                     f"{_focus_cfg(spec).min_focus_len} or not longer than Wl); pass a smaller "
                     "--min_focus_len or a longer prompt")
  mean = lambda k: float(np.mean(tm[k])) if tm.get(k) else None
  out = dict(total_s=total, cpu_s=cpu, compile_s=comp, warm_s=total - comp,
             chunks_s=tm["chunks"], chunks_cpu_s=tm["chunks_cpu"],
             chunks_compile_s=compile_s(t0, t0 + tm["chunks"]),
             prefill_s=tm["prefill"], prefill_cpu_s=tm["prefill_cpu"],
             step_s=mean("steps"), step_cpu_s=mean("steps_cpu"),
             n_chunks=tm["n_chunks"], n_rows=tm["n_rows"])
  return gen, out


def work(spec: dict) -> dict:
  from focus_jax.focus.plan import make_plan
  peak0 = matmul_peak()
  load0 = os.getloadavg()[0]
  model, tok, trained = load(spec)
  cfg = model.config
  task, length = spec["task"], spec.get("length")
  res = dict(task=task, length=length, trained_candidates=trained)
  if task == "focus":
    ids = text_ids(tok, length)
    _, r = _run_focus(model, ids, spec, spec["new_tokens"] + 1)
    plan = make_plan(ids, cfg, _focus_cfg(spec), spec["chunk_batch"])
    flops = chunk_flops(cfg, plan)
    r["chunk_gflop"] = flops / 1e9
    r["chunk_gflops_per_s"] = flops / max(r["chunks_s"] - r["chunks_compile_s"], 1e-9) / 1e9
    # per process CPU second (robust to other processes sharing the cores); a lower
    # bound, as the CPU seconds include the chunk function's compilation
    r["chunk_gflop_per_cpu_s"] = flops / r["chunks_cpu_s"] / 1e9
    res.update(r)
  elif task == "plain":
    from focus_jax.generation.modes import ModeSetup, generate
    ids = text_ids(tok, length)
    if ids[0] != cfg.bos_token_id:
      ids = np.concatenate([[cfg.bos_token_id], ids[:-1]]).astype(np.int32)
    t0, c0 = time.perf_counter(), time.process_time()
    generate(ModeSetup("plain", model), ids, spec["new_tokens"] + 1, stop_at_eos=False)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    res.update(total_s=total, cpu_s=cpu, compile_s=compile_s(t0), warm_s=total - compile_s(t0))
  elif task == "first":
    from focus_jax.eval.passkey import make_passkey_prompt
    ids, _ = make_passkey_prompt(tok, length, depth=0.5, seed=0)
    _, cold = _run_focus(model, ids, spec, spec["new_tokens"] + 1, spec["decode"])
    _, warm = _run_focus(model, ids, spec, spec["new_tokens"] + 1, spec["decode"])
    res.update(decode=spec["decode"], prompt_len=int(ids.size), n_chunks=cold["n_chunks"],
               first_call_s=cold["prefill_s"], first_call_cpu_s=cold["prefill_cpu_s"],
               first_call_compile_s=cold["compile_s"], warm_prefill_s=warm["prefill_s"],
               warm_prefill_cpu_s=warm["prefill_cpu_s"], warm_chunks_s=warm["chunks_s"],
               step_s=warm["step_s"], step_cpu_s=warm["step_cpu_s"])
  elif task == "agree":
    from focus_jax.eval.passkey import answer_token_count, is_correct, make_passkey_prompt
    rows = []
    for seed in range(spec["seeds"]):
      ids, answer = make_passkey_prompt(tok, length, seed=seed)
      n = answer_token_count(tok, answer)
      ex, _ = _run_focus(model, ids, spec, n, "exact")
      fa, _ = _run_focus(model, ids, spec, n, "fast")
      rows.append(dict(same=bool((ex.tokens == fa.tokens).all()),
                       same_tokens=float((ex.tokens == fa.tokens).mean()),
                       exact_ok=is_correct(tok, ex.tokens, answer),
                       fast_ok=is_correct(tok, fa.tokens, answer),
                       max_logit_diff=float(np.abs(ex.logits - fa.logits).max())))
    res.update(prompts=len(rows), identical=float(np.mean([r["same"] for r in rows])),
               token_agreement=float(np.mean([r["same_tokens"] for r in rows])),
               exact_accuracy=float(np.mean([r["exact_ok"] for r in rows])),
               fast_accuracy=float(np.mean([r["fast_ok"] for r in rows])),
               max_logit_diff=max(r["max_logit_diff"] for r in rows), per_prompt=rows)
  else:
    raise ValueError(f"unknown task {task!r}")
  peak1 = matmul_peak()
  peak, peak_cpu = max(peak0[0], peak1[0]), max(peak0[1], peak1[1])
  res.update(matmul_peak_gflops=peak, matmul_gflop_per_cpu_s=peak_cpu,
             loadavg=(load0, os.getloadavg()[0]))
  if "chunk_gflops_per_s" in res:
    res["chunk_peak_fraction"] = res["chunk_gflops_per_s"] / peak
    res["chunk_peak_fraction_cpu"] = res["chunk_gflop_per_cpu_s"] / peak_cpu
  res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  rnd = lambda v: round(v, 3) if isinstance(v, float) else v
  return {k: (tuple(map(rnd, v)) if isinstance(v, tuple) else rnd(v)) for k, v in res.items()}
