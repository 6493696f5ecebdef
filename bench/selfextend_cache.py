r"""SelfExtend decoding: cache pre-RoPE keys (rotate twice per step) or both rotations?

  .venv/bin/python bench/selfextend_cache.py [--sizes=8192,32768,65536] [--repeats=3]

The cache of focus_jax keeps keys before RoPE, so every SelfExtend decode step
rotates all cached keys with both position sets (ordinary and grouped). The
alternative caches the two rotated copies (each key's rotations never change:
ordinary at p, grouped at p // G) and rotates only the new token, at the cost of
one more key tensor in memory.

For SmolLM2-135M shapes (30 layers, 3 KV heads, head_dim 64, 9 query heads)
this times one decode step's attention over a full cache of S keys, scanned over
the layers like the model does, in both layouts, plus the real
`focus_jax.generation.decode.decode_step` (whole model, pre-RoPE cache, SelfExtend and plain)
for context. Times are CPU seconds of the process (the machine is shared; wall
times are in the JSON too).
Weights are random: the timing does not depend on them. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from focus_jax.config import ModelConfig, RopeConfig  # noqa: E402
from flax import nnx  # noqa: E402

from focus_jax.model import (AttnOptions, LlamaForCausalLM, apply_rope, init_cache,  # noqa: E402
                             inv_frequencies)

SMOLLM2 = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, head_dim=64, max_position_embeddings=8192,
                      rope=RopeConfig(theta=100000.0), tie_word_embeddings=True)
G, W = 8, 1024


def _attend(qn, qg, kn, kg, v, near, valid):
  """One query per row over S keys; q* [B,KV,g,hd], k*/v [B,S,KV,hd]."""
  # the one-query logits of focus_jax.model.attention: a fused multiply-sum
  ln = (qn[:, None] * kn[:, :, :, None]).sum(-1).transpose(0, 2, 3, 1)
  lg = (qg[:, None] * kg[:, :, :, None]).sum(-1).transpose(0, 2, 3, 1)
  sc = jnp.where(near[:, None, None], ln, lg)
  sc = jnp.where(valid[:, None, None], sc, -1e30)
  p = jax.nn.softmax(sc, axis=-1)
  return jnp.einsum("bkgs,bskd->bkgd", p, v)


def _queries(q, pos, inv):
  b, h, hd = q.shape
  qn = apply_rope(q[:, None], pos[:, None], inv)[:, 0]
  qg = apply_rope(q[:, None], (pos // G + W - W // G)[:, None], inv)[:, 0]
  kvh = SMOLLM2.num_kv_heads
  return (x.reshape(b, kvh, h // kvh, hd) * hd ** -0.5 for x in (qn, qg))


@jax.jit
def step_pre_rope(qs, k_pre, vs, k_pos, valid, pos):
  """Cache of pre-RoPE keys: both rotations of every cached key, every step."""
  inv = inv_frequencies(SMOLLM2)
  near = (pos[:, None] - k_pos) < W

  def layer(c, xs):
    q, k, v = xs
    qn, qg = _queries(q, pos, inv)
    kn, kg = apply_rope(k, k_pos, inv), apply_rope(k, k_pos // G, inv)
    return c + _attend(qn, qg, kn, kg, v, near, valid).sum(), None
  return jax.lax.scan(layer, jnp.float32(0), (qs, k_pre, vs))[0]


@jax.jit
def step_rotated(qs, k_near, k_group, vs, k_pos, valid, pos):
  """Cache of both rotated copies: no key rotation at all."""
  inv = inv_frequencies(SMOLLM2)
  near = (pos[:, None] - k_pos) < W

  def layer(c, xs):
    q, kn, kg, v = xs
    qn, qg = _queries(q, pos, inv)
    return c + _attend(qn, qg, kn, kg, v, near, valid).sum(), None
  return jax.lax.scan(layer, jnp.float32(0), (qs, k_near, k_group, vs))[0]


def _time(f, *args, repeats):
  """Best (CPU seconds of this process, wall seconds) over repeats, after a compile call.

  CPU time is the figure to compare: the machine is shared, so wall time is noisy.
  """
  jax.block_until_ready(f(*args))
  cpu = wall = float("inf")
  for _ in range(repeats):
    c0, w0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(f(*args))
    cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
  return cpu, wall


def _decode_step_time(model, cache, size, selfextend, repeats):
  """The real focus_jax.generation.decode.decode_step over a full cache (slot size-1 rewritten)."""
  from focus_jax.generation.decode import decode_step
  graphdef, state = model
  tok, pos = jnp.asarray([5], jnp.int32), jnp.asarray([size - 1])
  cpu = wall = float("inf")
  for i in range(repeats + 1):
    c0, w0 = time.process_time(), time.perf_counter()
    logits, cache = decode_step(graphdef, state, cache, tok, pos,
                                attn=AttnOptions(selfextend=selfextend))
    logits.block_until_ready()
    if i:  # the first call compiles
      cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
    cache = cache._replace(index=jnp.asarray(size - 1, jnp.int32))
  return (cpu, wall), cache


def measure(size: int, repeats: int) -> dict:
  cfg, rng = SMOLLM2, np.random.default_rng(0)
  n, kvh, hd = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
  shape = (n, 1, size, kvh, hd)
  k = jnp.asarray(rng.standard_normal(shape, np.float32))
  v = jnp.asarray(rng.standard_normal(shape, np.float32))
  qs = jnp.asarray(rng.standard_normal((n, 1, cfg.num_heads, hd), np.float32))
  k_pos = jnp.arange(size)[None]
  valid = jnp.ones((1, size), bool)
  pos = jnp.asarray([size - 1])
  pre = _time(step_pre_rope, qs, k, v, k_pos, valid, pos, repeats=repeats)
  inv = inv_frequencies(cfg)
  kn = jax.jit(lambda k: apply_rope(k, jnp.broadcast_to(k_pos, k.shape[:3]), inv))(k)
  kg = jax.jit(lambda k: apply_rope(k, jnp.broadcast_to(k_pos // G, k.shape[:3]), inv))(k)
  rot = _time(step_rotated, qs, kn, kg, v, k_pos, valid, pos, repeats=repeats)
  del kn, kg
  model = nnx.split(LlamaForCausalLM(cfg, nnx.Rngs(0), std=0.02))
  cache = init_cache(cfg, 1, size)._replace(
      k=k, v=v, pos=jnp.array(k_pos, jnp.int32, copy=True),
      order=jnp.array(k_pos, jnp.int32, copy=True), valid=valid.at[:, -1].set(False),
      index=jnp.asarray(size - 1, jnp.int32))
  se_step, cache = _decode_step_time(model, cache, size, (G, W), repeats)
  plain_step, cache = _decode_step_time(model, cache, size, None, repeats)
  key_mib = n * size * kvh * hd * 4 / 2**20
  return {"cache_tokens": size,
          "attn_pre_rope_cpu_s": pre[0], "attn_pre_rope_wall_s": pre[1],
          "attn_both_rotations_cpu_s": rot[0], "attn_both_rotations_wall_s": rot[1],
          "pre_rope_over_both_rotations": pre[0] / rot[0],
          "decode_step_selfextend_cpu_s": se_step[0], "decode_step_selfextend_wall_s": se_step[1],
          "decode_step_plain_cpu_s": plain_step[0], "decode_step_plain_wall_s": plain_step[1],
          "key_cache_mib": key_mib, "extra_mib_both_rotations": key_mib}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="8192,32768,65536")
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  rows = []
  for s in (int(x) for x in args.sizes.split(",")):
    r = measure(s, args.repeats)
    rows.append(r)
    print(f"{s:6d} cached keys, CPU s per step: attention (30 layers) "
          f"{r['attn_pre_rope_cpu_s']:.3f} pre-RoPE cache vs {r['attn_both_rotations_cpu_s']:.3f} "
          f"both rotations cached (+{r['extra_mib_both_rotations']:.0f} MiB); whole decode step "
          f"{r['decode_step_selfextend_cpu_s']:.3f} SelfExtend, {r['decode_step_plain_cpu_s']:.3f} "
          f"plain", flush=True)
  print(json.dumps({"device": jax.devices()[0].platform, "group_size": G, "neighbor_window": W,
                    "rows": rows}))


if __name__ == "__main__":
  main()
