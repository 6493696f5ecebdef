r"""Times focus_jax.model.attention (jit): a causal prefill and a one-query decode.

  python bench/attention_nan.py [--repeats=30] [--against=OLD_attention.py]

With --against (e.g. `git show REV:focus_jax/model/attention.py > /tmp/old.py`)
both versions run interleaved on the same inputs, their outputs are checked
bit-identical, and the ratios of median wall and process CPU times are printed
(CPU time is less sensitive to other jobs on the machine).
"""
import argparse
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.model.attention import attention


def case(t, s, h=8, kvh=2, hd=64, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(k[0], (1, t, h, hd), jnp.float32)
  kk = jax.random.normal(k[1], (1, s, kvh, hd), jnp.float32)
  v = jax.random.normal(k[2], (1, s, kvh, hd), jnp.float32)
  qp, kp = jnp.arange(s - t, s)[None], jnp.arange(s)[None]
  inv = 1.0 / 10000 ** (jnp.arange(0, hd, 2) / hd)
  return q, kk, v, qp, kp, qp, kp, jnp.ones((1, s), bool), inv


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--repeats", type=int, default=30)
  ap.add_argument("--against", default=None)
  args = ap.parse_args()
  fns = {"new": jax.jit(attention)}
  if args.against:
    spec = importlib.util.spec_from_file_location("attention_old", args.against)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    fns["old"] = jax.jit(old.attention)
  for name, (t, s) in {"prefill 2048": (2048, 2048), "decode 1x4096": (1, 4096)}.items():
    a = case(t, s)
    outs = {k: np.asarray(f(*a).block_until_ready()) for k, f in fns.items()}
    same = all(np.array_equal(outs["new"], o) for o in outs.values())
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(args.repeats):
      for k, f in fns.items():
        t0, c0 = time.perf_counter(), time.process_time()
        f(*a).block_until_ready()
        wall[k].append(time.perf_counter() - t0)
        cpu[k].append(time.process_time() - c0)
    for label, times in (("wall", wall), ("cpu", cpu)):
      med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
      line = f"{name} ({label}): new {med['new']:.2f} ms"
      if "old" in med:
        line += (f", old {med['old']:.2f} ms, new/old {med['new'] / med['old']:.3f}, "
                 f"outputs {'bit-identical' if same else 'DIFFER'}")
      print(line, flush=True)


if __name__ == "__main__":
  main()
