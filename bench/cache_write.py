r"""Per-call time of FocusLLM's chunk encoding with a bfloat16 chunk cache, against the row
count: the in-place cache write (focus_jax.model.llama.update_slice) and the plain
`dynamic_update_slice` it replaced, interleaved in one process.

  .venv/bin/python bench/cache_write.py [--rows=256,1024,4096] [--calls=50]

The model is SmolLM2-135M's shape with random weights (no download): 30 layers,
3 KV heads of 64, chunk rows of S + F + 1 = 193 tokens as the shipped candidates
use. Each line gives ms per encoding call for both writes and their ratio; a
call encodes one chunk row, so the plain write's per-call time growing with the
row count is the whole cache being converted on every call.
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from focus_jax.config import ModelConfig   # noqa: E402
from focus_jax.focus import steps   # noqa: E402
from focus_jax.model import LlamaForCausalLM, add_candidates, init_cache   # noqa: E402
from focus_jax.model import llama   # noqa: E402
from focus_jax.parallel import make_mesh   # noqa: E402

CFG = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                  num_heads=9, num_kv_heads=3, head_dim=64, bos_token_id=1, eos_token_ids=(2,))
ROW = 128 + 64 + 1


def per_call_ms(model, n_rows: int, calls: int, in_place: bool) -> float:
  saved = llama._HALF
  llama._HALF = saved if in_place else ()
  steps.encode_fn.cache_clear()
  try:
    graphdef, state = nnx.split(model)
    mesh = make_mesh(None)
    enc = steps.encode_fn(graphdef, mesh, 1, True)
    cache = init_cache(CFG, n_rows, ROW + 15, "bfloat16")
    mem = jnp.zeros((CFG.num_layers, n_rows, CFG.num_kv_heads, CFG.head_dim))
    mk = mv = mem
    tok = jnp.asarray(np.random.RandomState(0).randint(3, CFG.vocab_size, (n_rows, ROW)),
                      jnp.int32)
    val = jnp.ones((n_rows, ROW), bool)
    cache, mk, mv = enc(state, tok, val, cache, mk, mv + 0, jnp.int32(0))
    mk.block_until_ready()
    t = time.perf_counter()
    for j in range(calls):
      cache, mk, mv = enc(state, tok, val, cache, mk, mv, jnp.int32(j % n_rows))
    mk.block_until_ready()
    return (time.perf_counter() - t) / calls * 1e3
  finally:
    llama._HALF = saved
    steps.encode_fn.cache_clear()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rows", default="256,1024,4096")
  p.add_argument("--calls", type=int, default=50)
  a = p.parse_args()
  model = add_candidates(LlamaForCausalLM(CFG, nnx.Rngs(0), std=0.02))
  print(f"loadavg {os.getloadavg()[0]:.2f}; SmolLM2-135M shape, bfloat16 chunk cache, "
        f"rows of {ROW} tokens, {a.calls} calls each", flush=True)
  for n in (int(r) for r in a.rows.split(",")):
    new = per_call_ms(model, n, a.calls, True)
    old = per_call_ms(model, n, a.calls, False)
    gb = 2 * CFG.num_layers * n * (ROW + 15) * CFG.num_kv_heads * CFG.head_dim * 2 / 1e9
    print(f"rows {n:6d} (cache {gb:6.2f} GB): in place {new:8.2f} ms/call, "
          f"plain dynamic_update_slice {old:8.2f} ms/call, plain/in place {old / new:6.2f}",
          flush=True)


if __name__ == "__main__":
  main()
