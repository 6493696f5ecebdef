r"""One prepared check of the accelerator paths, with random weights (no assets, no network).

  bench/device_check.sh            # on a GPU / TPU host: at most ~8 minutes on one H200
  bench/device_check.sh --quick    # the same checks, tiny, on CPU (a minute or two)

Needs only jax, flax, optax and numpy (no grain, ml_collections, gguf,
tensorboardX: it imports focus_jax.model, focus_jax.focus.core and
focus_jax.parallel only). Checks, each with pass/fail and its figures:

  kernels     every kernel the backend has (Pallas, cuDNN, splash; on CPU the
              interpret-mode ones) against the blockwise reference on the
              FocusLLM local step, a chunk step, cached decoding, SelfExtend
              and plain causal prefill (float32 at 1e-5 with highest matmul
              precision; cuDNN, half precision only, in bfloat16 against the
              float32 reference)
  prefill     plain bfloat16 prefill (weights and compute) tokens/s and MFU, SmolLM2-size and
              1B-size configs at 8K and 32K tokens
  focus       FocusLLM prefill (chunk rows -> memory -> local window) at 128K
              tokens, SmolLM2 size: first call and steady wall time
  train       one AdamW step (all parameters, bfloat16 compute, float32
              weights) of the 7B paper layer shape at reduced depth: MFU and
              peak device memory
  fsdp        the same step's loss and gradients with the weights sharded over
              a one-device "fsdp" mesh (gathered layer by layer) equal the
              unsharded ones

The last output line is one JSON object: backend, device_kind, jax, each
check's pass and figures, and "passes" (all checks passed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# Dense bfloat16 peak FLOP/s by device kind (substring, lower case), for MFU.
PEAKS = (("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l40s", 362e12),
         ("v6", 918e12), ("v5p", 459e12), ("v5 lite", 197e12), ("v5e", 197e12),
         ("v4", 275e12))


def peak_flops(kind: str, override: float | None):
  if override:
    return override * 1e12
  kind = kind.lower()
  return next((p for k, p in PEAKS if k in kind), None)


def configs(quick: bool):
  from focus_jax.config import ModelConfig
  if quick:
    tiny = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                num_heads=4, num_kv_heads=2, head_dim=16, eos_token_ids=())
    return {"smollm2": ModelConfig(**tiny), "1b": ModelConfig(**{**tiny, "num_layers": 3}),
            "7b_layers": ModelConfig(**{**tiny, "hidden_size": 128, "num_heads": 8,
                                        "num_kv_heads": 8})}
  smol = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                     num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True,
                     max_position_embeddings=8192, eos_token_ids=())
  one_b = ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                      tie_word_embeddings=True, max_position_embeddings=131072, eos_token_ids=())
  seven = ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=4,
                      num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=4096,
                      eos_token_ids=())
  return {"smollm2": smol, "1b": one_b, "7b_layers": seven}


def matmul_flops(cfg, tokens: int, context: float) -> float:
  """Forward FLOPs of `tokens` tokens each attending to `context` keys on average."""
  d, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  hq, hk = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  per_token = L * (2 * d * (2 * hq + 2 * hk) + 6 * d * i + 4 * context * hq)
  return tokens * per_token


def timed(fn, repeats: int = 2):
  """(first call s, best later call s) of fn() (blocks on its result)."""
  t = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return first, best


def random_model(cfg, dtype="bfloat16", param_dtype="bfloat16", candidates=False, seed=0):
  """Random weights in `param_dtype`, computing in `dtype`."""
  import dataclasses
  from flax import nnx
  from focus_jax.model import LlamaForCausalLM, add_candidates
  cfg = dataclasses.replace(cfg, compute_dtype=dtype, param_dtype=param_dtype)
  model = LlamaForCausalLM(cfg, nnx.Rngs(seed), std=0.02)
  return add_candidates(model) if candidates else model


# ------------------------------------------------------------------ kernels

FUSED = ("cudnn", "splash")
FUSED_CASES = ("prefill",)

def mask_cases(quick: bool):
  """The masks of the project's calls, as attention inputs (numpy) by name."""
  rng = np.random.default_rng(0)
  t = 40 if quick else 300
  n_mem = 6 if quick else 60
  cases = {}
  # FocusLLM local step: memory (order -1, some invalid) + causal local tokens.
  p = n_mem + t
  order = np.concatenate([np.full(n_mem, -1), np.arange(t)])
  valid = np.ones(p, bool)
  valid[1:n_mem:3] = False
  kpos = np.concatenate([np.arange(n_mem), n_mem + np.arange(t)])
  cases["focus_local"] = dict(t=t, q_pos=kpos[n_mem:], k_pos=kpos, q_order=order[n_mem:],
                              k_order=order, k_valid=valid)
  # chunk step: a left-padded chunk row's cache + two new tokens (the last the candidate).
  s = t + 2
  valid = np.arange(s) >= 9
  pos = np.maximum(np.cumsum(valid) - 1, 0)
  cases["chunk_step"] = dict(t=2, q_pos=pos[-2:], k_pos=pos, q_order=pos[-2:], k_order=pos,
                             k_valid=valid)
  # cached decoding: one token over a cache with free slots.
  s = t + 16
  valid = np.arange(s) <= t
  pos = np.arange(s)
  cases["decode"] = dict(t=1, q_pos=pos[t:t + 1], k_pos=pos, q_order=pos[t:t + 1], k_order=pos,
                         k_valid=valid)
  # plain prefill into a cache: the fused kernels' own mask.
  cases["prefill"] = dict(t=t, q_pos=pos[:t], k_pos=pos, q_order=pos[:t], k_order=pos,
                          k_valid=np.arange(s) < t)
  # SelfExtend over a prefill (two position sets).
  cases["selfextend"] = dict(cases["prefill"], selfextend=(4, 8 if quick else 64))
  cases["selfextend_decode"] = dict(cases["decode"], selfextend=(4, 8 if quick else 64))
  del rng
  return cases


def check_kernels(quick: bool, backend: str):
  from focus_jax.model.attention import attention
  kernels = {"cpu": ("pallas", "splash"), "gpu": ("pallas", "cudnn"), "tpu": ("splash",)}
  names = kernels.get(backend, ("pallas",))
  rng = np.random.default_rng(1)
  h, kv, hd = 4, 2, 64 if not quick else 16
  inv = jnp.asarray(1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd)), jnp.float32)
  blocks = dict(block_q=16, block_k=16) if quick else dict(block_q=128, block_k=64)
  out = {}
  ok = True
  for case, c in mask_cases(quick).items():
    t, s = c["t"], len(c["k_pos"])
    q = jnp.asarray(rng.normal(size=(2, t, h, hd)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, s, kv, hd)), jnp.float32) for _ in range(2))
    arr = lambda x: jnp.broadcast_to(jnp.asarray(x), (2,) + np.shape(x))
    args = [arr(c[n]) for n in ("q_pos", "k_pos", "q_order", "k_order", "k_valid")]
    se = c.get("selfextend")

    def run(kernel, dtype):
      f = jax.jit(lambda q, k, v, *a: attention(q, k, v, *a, inv, selfextend=se, kernel=kernel,
                                                dense_max=0, **blocks))
      with jax.default_matmul_precision("highest"):
        return np.asarray(f(q.astype(dtype), k.astype(dtype), v.astype(dtype), *args),
                          np.float32)
    ref = run("reference", jnp.float32)
    for name in names:
      if name in FUSED and case not in FUSED_CASES:
        continue   # the fused kernels fit the plain causal mask only (else: the fallback)
      dtype, tol = (jnp.bfloat16, 3e-2) if name == "cudnn" else (jnp.float32, 1e-5)
      err = float(np.abs(run(name, dtype) - ref).max())
      good = bool(err <= tol)
      ok &= good
      out[f"{case}/{name}"] = {"max_abs_diff": err, "tol": tol, "pass": good}
  return {"pass": ok, "cases": out}


# ------------------------------------------------------------------ prefill

def check_prefill(quick: bool, peak):
  from flax import nnx
  lengths = (128,) if quick else (8192, 32768)
  res, ok = {}, True
  for name in ("smollm2", "1b"):
    cfg = configs(quick)[name]
    model = random_model(cfg)
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, tokens):
      m = nnx.merge(graphdef, state)
      return m(tokens, jnp.arange(tokens.shape[1])[None], logits="last").logits

    for n in lengths:
      tokens = jnp.asarray(np.random.default_rng(n).integers(0, cfg.vocab_size, (1, n)),
                           jnp.int32)
      first, best = timed(lambda: fwd(state, tokens), repeats=1 if quick else 2)
      logits = np.asarray(fwd(state, tokens), np.float32)
      finite = bool(np.isfinite(logits).all())
      ok &= finite
      flops = matmul_flops(cfg, n, (n + 1) / 2)
      res[f"{name}/{n}"] = {"tokens_per_s": n / best, "first_call_s": first, "best_s": best,
                            "mfu": None if peak is None else flops / best / peak,
                            "finite": finite}
    del model, state
  return {"pass": ok, **res}


# ------------------------------------------------------------------ FocusLLM prefill

def check_focus(quick: bool):
  from flax import nnx
  from focus_jax.focus import core
  cfg = configs(quick)["smollm2"]
  total, chunk, frag, local = (2048, 256, 64, 384) if quick else (131072, 2048, 512, 3072)
  n_rows = -(-(total - local) // chunk)
  model = random_model(cfg, candidates=True)
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(2)
  ids = rng.integers(2, cfg.vocab_size, total).astype(np.int32)
  fragment = ids[total - frag:]
  row_len = chunk + frag
  rows = np.zeros((n_rows, row_len), np.int32)
  valid = np.zeros((n_rows, row_len), bool)
  for i in range(n_rows):
    part = np.concatenate([ids[i * chunk:min((i + 1) * chunk, total - local)], fragment])
    rows[i, row_len - len(part):] = part
    valid[i, row_len - len(part):] = True
  local_ids = ids[total - local:]

  @jax.jit
  def prefill(state, rows, valid, local_ids):
    m = nnx.merge(graphdef, state)
    cache = core.chunk_prefix(m, rows, valid, row_len)
    mk, mv, _ = core.chunk_step(m, cache, rows[:, -1:], valid[:, -1:])
    mem_valid = valid[:, -1]
    return core.local_forward(m, mk, mv, mem_valid, local_ids)

  args = (state, jnp.asarray(rows), jnp.asarray(valid), jnp.asarray(local_ids))
  first, best = timed(lambda: prefill(*args), repeats=1)
  logits = np.asarray(prefill(*args), np.float32)
  finite = bool(np.isfinite(logits).all())
  return {"pass": finite, "tokens": total, "chunk_rows": n_rows, "first_call_s": first,
          "steady_s": best}


# ------------------------------------------------------------------ training step

def lm_loss(model, tokens, scan=None):
  from focus_jax.model import ScanOptions
  pos = jnp.arange(tokens.shape[1])[None]
  out = model(tokens[:, :-1], pos[:, :-1], logits="all", scan=scan or ScanOptions())
  logp = jax.nn.log_softmax(out.logits, -1)
  return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))


def check_train(quick: bool, peak, backend: str):
  import optax
  from flax import nnx
  from focus_jax import parallel
  cfg = configs(quick)["7b_layers"]
  seq = 129 if quick else 4097
  model = random_model(cfg, param_dtype="float32")   # float32 weights, bfloat16 compute
  graphdef, state = nnx.split(model)
  tx = optax.adamw(1e-4)
  opt = tx.init(state)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (1, seq)), jnp.int32)

  def grads_of(state, tokens):
    return jax.value_and_grad(lambda st: lm_loss(nnx.merge(graphdef, st), tokens))(state)

  @jax.jit
  def step(state, opt, tokens):
    loss, g = grads_of(state, tokens)
    upd, opt = tx.update(g, opt, state)
    return optax.apply_updates(state, upd), opt, loss

  first, best = timed(lambda: step(state, opt, tokens), repeats=1 if quick else 2)
  n = seq - 1
  flops = 3 * matmul_flops(cfg, n, (n + 1) / 2)   # forward + backward (2x)
  stats = jax.devices()[0].memory_stats() or {}
  _, _, loss = step(state, opt, tokens)
  train = {"pass": bool(np.isfinite(float(loss))), "layers": cfg.num_layers, "tokens": n,
           "first_call_s": first, "best_s": best,
           "mfu": None if peak is None else flops / best / peak,
           "peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None}

  # The same loss and gradients with the weights FSDP-sharded over a one-device mesh
  # (float32 compute at highest matmul precision: the comparison is of the sharding,
  # not of the rounding of two differently fused programs).
  graphdef32 = nnx.split(random_model(cfg, dtype="float32", param_dtype="float32"))[0]
  mesh = parallel.make_mesh("fsdp:1")
  specs = parallel.state_specs(state, mesh)
  sharded = parallel.shard_state(state, mesh)

  def fsdp_grads(st, tokens):
    def loss_fn(st):
      m, scan = parallel.merge_shards(graphdef32, [st], [specs])
      return lm_loss(m, tokens, scan)
    loss, g = jax.value_and_grad(loss_fn)(st)
    return jax.lax.pmean(loss, "fsdp"), g

  f = jax.jit(parallel.shard(fsdp_grads, mesh, (specs, parallel.spec(mesh)),
                             (parallel.spec(mesh), specs)))
  unsharded = jax.jit(lambda st, tokens: jax.value_and_grad(
      lambda st: lm_loss(nnx.merge(graphdef32, st), tokens))(st))
  with jax.default_matmul_precision("highest"):
    loss_s, g_s = f(sharded, tokens)
    loss_u, g_u = unsharded(state, tokens)
  gdiff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
              zip(jax.tree.leaves(g_s), jax.tree.leaves(g_u)))
  gmax = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g_u))
  ldiff = abs(float(loss_s) - float(loss_u))
  fsdp = {"pass": bool(ldiff <= 1e-5 and gdiff <= 1e-5 * gmax), "loss_diff": ldiff,
          "max_grad_diff": gdiff, "max_grad": gmax, "tol": "1e-5 x max_grad"}
  return train, fsdp


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU, a minute or two)")
  ap.add_argument("--peak_tflops", type=float, default=None,
                  help="bfloat16 peak of the device for MFU (default: by device kind)")
  ap.add_argument("--only", default="", help="comma-separated checks to run (default: all)")
  args = ap.parse_args(argv)
  dev = jax.devices()[0]
  backend = jax.default_backend()
  peak = peak_flops(dev.device_kind, args.peak_tflops)
  result = {"backend": backend, "device_kind": dev.device_kind, "jax": jax.__version__,
            "devices": jax.device_count(), "quick": args.quick,
            "peak_tflops": None if peak is None else peak / 1e12, "checks": {}}
  only = set(filter(None, args.only.split(",")))
  plan = [("kernels", lambda: check_kernels(args.quick, backend)),
          ("prefill", lambda: check_prefill(args.quick, peak)),
          ("focus", lambda: check_focus(args.quick)),
          ("train", lambda: check_train(args.quick, peak, backend))]
  for name, fn in plan:
    if only and name not in only:
      continue
    t = time.perf_counter()
    try:
      out = fn()
      if name == "train":
        out, fsdp = out
        result["checks"]["fsdp"] = fsdp
      result["checks"][name] = out
    except Exception as e:   # a failed check is a result, the others still run
      traceback.print_exc()
      result["checks"][name] = {"pass": False, "error": f"{type(e).__name__}: {e}"[:500]}
    result["checks"][name]["wall_s"] = time.perf_counter() - t
    print(f"{name}: {json.dumps(result['checks'][name])}", flush=True)
  result["passes"] = all(c["pass"] for c in result["checks"].values())
  print(json.dumps(result), flush=True)
  return 0 if result["passes"] else 1


if __name__ == "__main__":
  sys.exit(main())
