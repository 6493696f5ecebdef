r"""bfloat16 compute (weights, activations, KV cache) against float32 on SmolLM2's parity prompt.

  .venv/bin/python bench/bf16_parity.py [--tokens=1600] [--decode=16]

The prompt is the first --tokens tokens of the embedded Shakespeare text (the
prompt of tests/test_smollm2.py's logit parity with transformers). Both runs
load the embedded GGUF; the bfloat16 run casts the weights and computes in
bfloat16 (attention keeps float32 softmax statistics and accumulation). It
reports the distance of the prompt's logits, and of --decode greedy cached
decoding steps with the bfloat16 run forced onto the float32 run's tokens.
The last line is one JSON object.
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


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--tokens", type=int, default=1600)
  ap.add_argument("--decode", type=int, default=16)
  args = ap.parse_args()
  from flax import nnx
  from transformers import AutoTokenizer
  from focus_jax import assets
  from focus_jax.checkpoint.hf import load_hf
  from focus_jax.model import init_cache
  tok = AutoTokenizer.from_pretrained(assets.smollm2_hf_dir(), local_files_only=True,
                                      trust_remote_code=False)
  ids = tok(assets.shakespeare_text(n_chars=20000))["input_ids"][:args.tokens]
  n = len(ids)

  results = {}
  for name in ("float32", "bfloat16"):
    model, _ = load_hf(assets.smollm2_gguf(), dtype=name)
    model.set_config(model.config.replace(compute_dtype=name))
    graphdef, state = nnx.split(model)

    def go(state, prompt, forced, graphdef=graphdef, greedy=name == "float32"):
      """Prompt logits, then decoding steps: greedy (float32) or forced onto `forced`."""
      m = nnx.merge(graphdef, state)
      out = m(prompt, jnp.arange(n)[None], cache=init_cache(m.config, 1, n + args.decode + 1))
      first = jnp.argmax(out.logits[0, -1]).astype(jnp.int32)

      def step(carry, x):
        cache, prev = carry
        i, f = x
        t = prev if greedy else f
        o = m(t[None, None], (n + i)[None, None], cache=cache, logits="last")
        return (o.cache, jnp.argmax(o.logits[0, -1]).astype(jnp.int32)), (t, o.logits[0, -1])
      _, (fed, steps) = jax.lax.scan(step, (out.cache, first),
                                     (jnp.arange(args.decode), forced))
      return out.logits[0], fed, steps, out.cache.k[0, 0, 0, 0, :1]
    forced = (jnp.asarray(results["float32"]["fed"], jnp.int32) if name == "bfloat16"
              else jnp.zeros((args.decode,), jnp.int32))
    t = time.perf_counter()
    prompt_logits, fed, steps, cache_dtype = jax.jit(go)(state, jnp.asarray([ids], jnp.int32),
                                                        forced)
    results[name] = dict(prompt=np.asarray(prompt_logits, np.float32), fed=np.asarray(fed),
                         steps=np.asarray(steps, np.float32), seconds=time.perf_counter() - t,
                         cache_dtype=str(cache_dtype.dtype),
                         param_dtype=str(jax.tree.leaves(state)[0].dtype))
  a, b = results["float32"], results["bfloat16"]
  d = np.abs(a["prompt"] - b["prompt"])
  assert (a["fed"] == b["fed"]).all()
  ds = np.abs(a["steps"] - b["steps"])
  arg = (a["prompt"].argmax(-1) == b["prompt"].argmax(-1)).mean()
  arg_s = (a["steps"].argmax(-1) == b["steps"].argmax(-1)).mean()
  la = jax.nn.log_softmax(a["prompt"], -1)
  lb = jax.nn.log_softmax(b["prompt"], -1)
  kl = float(jnp.mean(jnp.sum(jnp.exp(la) * (la - lb), -1)))
  out = {"tokens": n, "decode_steps": args.decode, "prompt_max_abs_logit_diff": float(d.max()),
         "prompt_mean_abs_logit_diff": float(d.mean()), "prompt_argmax_agree": float(arg),
         "prompt_mean_kl_f32_bf16": kl, "decode_max_abs_logit_diff": float(ds.max()),
         "decode_argmax_agree": float(arg_s), "bf16_cache_dtype": b["cache_dtype"],
         "bf16_param_dtype": b["param_dtype"], "f32_s": a["seconds"], "bf16_s": b["seconds"]}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
