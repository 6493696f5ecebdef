"""How RULER's and InfiniteBench's synthetic prompts fill their lengths, and what they cost.

  python bench/synthetic_fit.py [--lengths=4096,32768,131072]

One sample (index 0) of every RULER task (focus_jax.eval.ruler; essay tasks on the
Shakespeare plays) and of InfiniteBench's four synthetic tasks
(focus_jax.eval.infinitebench_synth), tokenized with the embedded SmolLM2's tokenizer:
the prompt plus the task's new tokens (at most the length) and the seconds to generate
the sample (the haystack search included). Last line: one JSON object.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from focus_jax import assets
from focus_jax.eval import infinitebench as IB
from focus_jax.eval import infinitebench_synth as S
from focus_jax.eval import ruler as R


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--lengths", default="4096,32768,131072")
  args = ap.parse_args()
  from focus_jax.text import load_hf_tokenizer
  tok = load_hf_tokenizer(assets.smollm2_hf_dir())
  count = lambda t: len(tok(t)["input_ids"])
  hay = assets.shakespeare_text()
  out = {}
  for n in map(int, args.lengths.split(",")):
    for t in R.TASKS:
      t0 = time.time()
      s = R.make_sample(t, n, 0, count, hay)
      out[f"ruler/{t}/{n}"] = {"tokens": count(s["prompt"]) + s["max_new_tokens"],
                               "seconds": round(time.time() - t0, 1)}
    for t in S.TASKS:
      t0 = time.time()
      row = S.make_task(tok, t, n, 1)[0]
      out[f"infinitebench/{t}/{n}"] = {
          "tokens": len(IB.prompt_ids(tok, t, row, 10 ** 9)) + IB.MAX_NEW_TOKENS[t],
          "seconds": round(time.time() - t0, 1)}
    for k, v in out.items():
      if k.endswith(f"/{n}"):
        print(f"{k:40s} {v['tokens']:>7d} tokens  {v['seconds']:6.1f} s", flush=True)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
