"""Attention kernels (focus_jax.model.kernels) against the blockwise reference, on CPU.

The Pallas kernel runs in Pallas interpret mode (what `attention` does on CPU
when a kernel is asked for by name) inside real model calls: the FocusLLM
local step (memory prefix + causal local tokens), a chunk step (cache prefix
+ candidate), cached decoding (prefill + steps, plain and SelfExtend);
float32, 1e-5. Splash runs the same way in `bench/device_check.sh --quick`
(the last test), which checks every kernel on the same masks. cuDNN cannot
run on CPU: its dispatch decision is checked, and the same
jax.nn.dot_product_attention call through XLA against the reference.
"""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from focus_jax.focus import core
from focus_jax.model import AttnOptions, LlamaForCausalLM, add_candidates, init_cache
from focus_jax.model import kernels
from focus_jax.model.attention import attention, blockwise_attention, rotated
from focus_jax.model.kernels import fused
from focus_reference import TINY

BLOCKS = dict(block_q=16, block_k=16, dense_max=0)
INV = 1.0 / (10000.0 ** (np.arange(0, 16, 2) / 16)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
  return add_candidates(LlamaForCausalLM(TINY, nnx.Rngs(0), std=0.05))


def opts(kernel, **kw):
  return AttnOptions(attention=kernel, **{**BLOCKS, **kw})


@functools.partial(jax.jit, static_argnames=("graphdef", "attn", "fn"))
def _jit(graphdef, state, args, attn, fn):
  return fn(nnx.merge(graphdef, state), *args, attn=attn)


def call(model, fn, *args, attn):
  """fn(model, *args, attn=attn), jitted (model split outside)."""
  return _jit(*nnx.split(model), args, attn, fn)


def close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                               atol=1e-5, rtol=0)


def _local(model, mem_k, mem_v, mem_valid, tokens, valid, *, attn):
  return core.local_forward(model, mem_k, mem_v, mem_valid, tokens, valid, logits="all",
                            attn=attn)


def test_focus_local_step(model, kernel="pallas"):
  """Memory prefix (order -1, some entries invalid) + left-padded causal local tokens."""
  rng = np.random.default_rng(0)
  shape = (TINY.num_layers, 2, 5, TINY.num_kv_heads, TINY.head_dim)
  mem_k, mem_v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(2))
  mem_valid = jnp.asarray([[True] * 5, [True, True, False, True, False]])
  tokens = jnp.asarray(rng.integers(6, TINY.vocab_size, (2, 37)), jnp.int32)
  valid = jnp.ones((2, 37), bool).at[1, :4].set(False)
  args = (mem_k, mem_v, mem_valid, tokens, valid)
  got = call(model, _local, *args, attn=opts(kernel))
  want = call(model, _local, *args, attn=opts("reference"))
  close(got[0], want[0])
  close(got[1, 4:], want[1, 4:])          # row 1's first 4 tokens are padding


def _chunk(model, tokens, valid, step_tokens, *, attn):
  cache = core.chunk_prefix(model, tokens, valid, 40, attn=attn)
  return core.chunk_step(model, cache, step_tokens, jnp.ones(step_tokens.shape, bool), attn=attn)


def test_focus_chunk_step(model, kernel="pallas"):
  """Left-padded chunk rows into a cache, then two tokens per row (the last one the candidate)."""
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(6, TINY.vocab_size, (3, 33)), jnp.int32)
  valid = jnp.ones((3, 33), bool).at[1, :7].set(False).at[2, :20].set(False)
  step = jnp.asarray(rng.integers(6, TINY.vocab_size, (3, 2)), jnp.int32)
  got = call(model, _chunk, tokens, valid, step, attn=opts(kernel))
  want = call(model, _chunk, tokens, valid, step, attn=opts("reference"))
  close(got[:2], want[:2])                          # the candidates' memory K/V
  close(got[2].k, want[2].k)
  close(got[2].v, want[2].v)


def _decode(model, prompt, steps, *, attn):
  """Prefill into a fresh cache, then one token per step (the model's own cache contract)."""
  t = prompt.shape[1]
  out = model(prompt, jnp.arange(t)[None], cache=init_cache(model.config, 1, 48), attn=attn,
              logits="last")

  def step(cache, x):
    tok, pos = x
    o = model(tok[None, None], pos[None, None], cache=cache, attn=attn, logits="last")
    return o.cache, o.logits[:, -1]
  _, logits = jax.lax.scan(step, out.cache, (steps, t + jnp.arange(steps.shape[0])))
  return jnp.concatenate([out.logits[:, -1][None], logits])


@pytest.mark.parametrize("kernel,selfextend", [("pallas", None), ("pallas", (4, 8))])
def test_cached_decoding(kernel, selfextend):
  """Prefill into a cache and decoding steps over it (splash's prefill: device_check --quick)."""
  model = LlamaForCausalLM(TINY, nnx.Rngs(3), std=0.05)
  prompt = jnp.asarray(np.random.default_rng(2).integers(6, TINY.vocab_size, (1, 35)), jnp.int32)
  steps = jnp.asarray([7, 8, 9], jnp.int32)
  got = call(model, _decode, prompt, steps, attn=opts(kernel, selfextend=selfextend))
  want = call(model, _decode, prompt, steps, attn=opts("reference", selfextend=selfextend))
  close(got, want)


def test_pallas_private_segments_and_gradient():
  """Segments (FocusLLM's batched exact pass) and the gradient (the reference's VJP)."""
  rng = np.random.default_rng(5)
  b, t, s, h, kv, hd = 2, 21, 37, 4, 2, 16
  q = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, s, kv, hd)), jnp.float32) for _ in range(2))
  q_pos, k_pos = jnp.asarray(rng.integers(0, 50, (b, t))), jnp.asarray(rng.integers(0, 50, (b, s)))
  q_ord, k_ord = jnp.asarray(rng.integers(-1, 30, (b, t))), jnp.asarray(rng.integers(-1, 30, (b, s)))
  k_val = jnp.asarray(rng.random((b, s)) > 0.2)
  q_seg, k_seg = jnp.asarray(rng.integers(0, 3, (b, t))), jnp.asarray(rng.integers(0, 3, (b, s)))
  mask = (k_val[:, None] & (k_ord[:, None] <= q_ord[:, :, None])
          & ((k_seg[:, None] == 0) | (k_seg[:, None] == q_seg[:, :, None])))
  assert (~mask.any(-1)).any()                      # some rows see no key: zeros

  def f(kernel, q, k, v):
    return jax.jit(functools.partial(attention, kernel=kernel, block_q=16, block_k=16),
                   static_argnames=())(q, k, v, q_pos, k_pos, q_ord, k_ord, k_val, INV,
                                       q_seg=q_seg, k_seg=k_seg)
  got, want = f("pallas", q, k, v), f("reference", q, k, v)
  close(got, want)
  assert np.all(np.asarray(got)[~np.asarray(mask.any(-1))] == 0)
  loss = lambda kernel: lambda *x: jnp.sum(jnp.sin(f(kernel, *x)))
  close(jax.grad(loss("pallas"), (0, 1, 2))(q, k, v), jax.grad(loss("reference"), (0, 1, 2))(q, k, v))
  # the kernel really runs (a pallas_call in the trace), the reference has none
  trace = lambda kernel: str(jax.make_jaxpr(lambda q: attention(
      q, k, v, q_pos, k_pos, q_ord, k_ord, k_val, INV, kernel=kernel))(q))
  assert "pallas_call" in trace("pallas") and "pallas_call" not in trace("reference")


def _causal_case(lengths, t=19, s=24):
  b = len(lengths)
  order = jnp.broadcast_to(jnp.arange(s), (b, s))
  valid = jnp.arange(s)[None] < jnp.asarray(lengths)[:, None]
  return order[:, :t], order, valid


def test_plain_causal_condition():
  """Which masks the fused kernels take: causal with a valid prefix of the first T keys."""
  ok = lambda *a: bool(fused.plain_causal(*a)[0])
  q_ord, k_ord, k_val = _causal_case([19, 7])
  assert ok(q_ord, k_ord, k_val)                                     # prefill into a cache
  assert not ok(q_ord, k_ord, k_val.at[0, 20].set(True))             # a valid key past T
  assert not ok(q_ord, k_ord, k_val.at[1, 0].set(False))             # left padding
  assert not ok(q_ord, k_ord.at[0, :3].set(-1), k_val)               # a memory prefix
  assert not ok(q_ord.at[0, 5].set(4), k_ord.at[0, 5].set(4), k_val)  # order not rising
  assert not ok(q_ord[:, 3:4], k_ord, k_val)                         # one decoding step
  assert not ok(q_ord, k_ord, k_val.at[1].set(False))                # an empty row


def test_dispatch_choice():
  c = lambda name, backend, dtype=jnp.bfloat16, t=64, s=64, hd=64, se=False, seg=False: \
      kernels.choose(name, backend, dtype=dtype, t=t, s=s, head_dim=hd, selfextend=se,
                     segments=seg)
  assert c("auto", "cpu") == ("reference", None)
  assert c("auto", "gpu") == ("cudnn", "pallas")       # bf16 plain prefill / training
  assert c("auto", "gpu", dtype=jnp.float32) == ("pallas", None)   # cuDNN: half precision only
  assert c("auto", "gpu", se=True) == ("pallas", None)
  assert c("auto", "gpu", seg=True) == ("pallas", None)
  assert c("auto", "gpu", t=1, s=64) == ("pallas", None)           # decoding step
  assert c("auto", "gpu", hd=256) == ("pallas", None)
  assert c("auto", "tpu") == ("splash", "reference")
  assert c("auto", "tpu", se=True) == ("reference", None)
  assert c("reference", "gpu") == ("reference", None)
  assert c("pallas", "cpu") == ("pallas", None)
  with pytest.raises(ValueError, match="unknown attention"):
    c("flash", "gpu")


def test_cudnn_call_through_xla_matches_reference():
  """The cuDNN path's jax.nn.dot_product_attention call (causal, key lengths), run by XLA."""
  rng = np.random.default_rng(6)
  b, t, s, h, kv, hd = 2, 19, 24, 4, 2, 16
  q = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, s, kv, hd)), jnp.float32) for _ in range(2))
  q_ord, k_ord, k_val = _causal_case([19, 7])
  (qr,), (kr,) = rotated(q, k, q_ord, k_ord, INV)
  got = fused.cudnn_attention(qr, kr, v, jnp.asarray([19, 7], jnp.int32), implementation="xla")
  want = blockwise_attention(q, k, v, q_ord, k_ord, q_ord, k_ord, k_val, INV, **BLOCKS)
  close(got, want)


def test_device_check_quick():
  """bench/device_check.sh --quick: every check of the device script, tiny, on CPU."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
  run = subprocess.run([os.path.join(root, "bench", "device_check.sh"), "--quick"], cwd=root,
                       env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  assert out["backend"] == "cpu" and out["quick"] and out["jax"] == jax.__version__
  assert set(out["checks"]) == {"kernels", "prefill", "focus", "train", "fsdp"}
  assert out["passes"] and all(c["pass"] for c in out["checks"].values())
  cases = out["checks"]["kernels"]["cases"]
  assert {"focus_local/pallas", "chunk_step/pallas", "decode/pallas", "selfextend/pallas",
          "prefill/splash"} <= set(cases)
  assert all(c["max_abs_diff"] <= 1e-5 for c in cases.values())
  assert out["checks"]["fsdp"]["max_grad_diff"] <= 1e-5
  assert all(r["tokens_per_s"] > 0 for k, r in out["checks"]["prefill"].items()
             if isinstance(r, dict))
