r"""Runs the same bench command on a base revision and on this working tree, alternately.

  python bench/compare_revisions.py --base=209e614 [--repeats=2] [--out=DIR] -- BENCH_CMD...
  python bench/compare_revisions.py --base=209e614 --cases=prefill_2048,train_step \
      [--checkpoint=DIR] [--out=DIR]

BENCH_CMD is a path inside the repository and its flags (e.g. `bench/prefill.py
--lengths=2048`); it runs with the repository root of each tree as working
directory and PYTHONPATH, under this same python, in the order base, new,
base, new, ... (--repeats pairs), so both see the same machine load. The base
tree is a temporary `git worktree` under /tmp, removed at the end. Each run's
last output line must be one JSON object; its numeric leaves are the metrics
(a named case keeps a chosen subset). Per metric the best (lowest) value over
the repeats is compared: base, new, ratio new/base. Process CPU seconds are the
figures to read (the machine is shared; wall times follow its load); compile
times are first call minus steady state, in wall seconds, as the benches
report them. --checkpoint: a focus_jax checkpoint in the base revision's
layout (the train_step case needs one both revisions read). With --out, every
run's output and a running summary are kept there. The last line is one JSON
object.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (command, metric keys kept: regular expressions on the flattened JSON keys)
CASES = {
    "prefill_2048": (["bench/prefill.py", "--lengths=2048", "--rss_length=0", "--repeats=2"],
                     [r"lengths\.\d+\.(jax_cpu_s|jax_s|jax_compile_s|hf_cpu_s|hf_s)$"]),
    "prefill_8192": (["bench/prefill.py", "--lengths=8192", "--rss_length=0", "--repeats=1"],
                     [r"lengths\.\d+\.(jax_cpu_s|jax_s|jax_compile_s|hf_cpu_s|hf_s)$"]),
    "train_step": (["bench/train_step.py", "--config=configs/smollm2_135m.py", "--repeats=1",
                    "--config.model={checkpoint}", "--workdir={tmp}/train_data"],
                   [r"^(step|full|forward)_(s|cpu_s|compile_s)$"]),
    "focus_6k": (["bench/focus_scaling.py", "--lengths=", "--agreement_seeds=0",
                  "--new_tokens=2"],
                 [r"first_call\.(exact|fast)\.(first_call_s|first_call_cpu_s|first_call_compile_s"
                  r"|warm_prefill_s|warm_prefill_cpu_s|warm_chunks_s|step_s|step_cpu_s)$"]),
}
# metrics that must stay within COMPILE_TARGET (the rest within TARGET) of the base
COMPILE_RE = re.compile(r"compile")
TARGET, COMPILE_TARGET = 1.03, 1.2


def flatten(obj, prefix=""):
  """Numeric leaves of a JSON value as {dotted.key: float}."""
  out = {}
  if isinstance(obj, dict):
    for k, v in obj.items():
      out.update(flatten(v, f"{prefix}{k}."))
  elif isinstance(obj, list):
    for i, v in enumerate(obj):
      out.update(flatten(v, f"{prefix}{i}."))
  elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
    out[prefix[:-1]] = float(obj)
  return out


def last_json(text: str) -> dict:
  lines = [l for l in text.strip().splitlines() if l.strip()]
  if not lines:
    raise ValueError("no output")
  return json.loads(lines[-1])


def git(*args, cwd=ROOT) -> str:
  return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                        text=True).stdout.strip()


def run_one(tree: str, cmd: list[str], log_path: str | None) -> dict:
  env = dict(os.environ, PYTHONPATH=tree)
  t0 = time.time()
  proc = subprocess.run([sys.executable, *cmd], cwd=tree, env=env, capture_output=True, text=True)
  if log_path:
    with open(log_path, "w") as f:
      f.write(proc.stdout + "\n--- stderr ---\n" + proc.stderr[-20000:])
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} in {tree} failed (exit {proc.returncode}): "
                       f"{proc.stderr.strip().splitlines()[-1:]}")
  out = flatten(last_json(proc.stdout))
  out["_process_wall_s"] = time.time() - t0
  return out


def summarize(runs: dict, keep: list[str] | None) -> dict:
  """{metric: {base, new, ratio, base_all, new_all}} with best (lowest) values."""
  keys = set(runs["base"][0]) & set(runs["new"][0]) if runs["base"] and runs["new"] else set()
  if keep:
    keys = {k for k in keys if any(re.search(p, k) for p in keep)}
  out = {}
  for k in sorted(keys):
    b = [r[k] for r in runs["base"] if k in r]
    n = [r[k] for r in runs["new"] if k in r]
    best_b, best_n = min(b), min(n)
    out[k] = {"base": round(best_b, 4), "new": round(best_n, 4),
              "ratio": round(best_n / best_b, 3) if best_b > 0 else None,
              "base_all": [round(x, 3) for x in b], "new_all": [round(x, 3) for x in n]}
  return out


def print_table(name: str, table: dict) -> None:
  print(f"\n{name}\n{'metric':52s} {'base':>10s} {'new':>10s} {'new/base':>9s}", flush=True)
  for k, v in table.items():
    limit = COMPILE_TARGET if COMPILE_RE.search(k) else TARGET
    flag = "" if v["ratio"] is None or v["ratio"] <= limit else "  > target"
    print(f"{k:52s} {v['base']:10.3f} {v['new']:10.3f} {v['ratio'] or float('nan'):9.3f}{flag}",
          flush=True)


def main():
  argv = sys.argv[1:]
  cmd = None
  if "--" in argv:
    i = argv.index("--")
    argv, cmd = argv[:i], argv[i + 1:]
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--base", default="209e614", help="git revision to compare against")
  ap.add_argument("--repeats", type=int, default=2, help="base/new pairs per case")
  ap.add_argument("--cases", default=",".join(CASES), help=f"named cases: {', '.join(CASES)}")
  ap.add_argument("--checkpoint", default=None,
                  help="focus_jax checkpoint in the base layout (train_step case)")
  ap.add_argument("--out", default=None, help="folder for run logs and the running summary")
  args = ap.parse_args(argv)
  if args.repeats < 1:
    raise SystemExit("--repeats must be >= 1")
  if cmd is not None:
    if not cmd:
      raise SystemExit("nothing after --: give a bench command, e.g. bench/prefill.py --lengths=2048")
    cases = {"command": (cmd, None)}
  else:
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
      raise SystemExit(f"--cases: unknown {sorted(unknown)}; choose from {', '.join(CASES)}")
    cases = {k: CASES[k] for k in args.cases.split(",")}
    if "train_step" in cases and not args.checkpoint:
      raise SystemExit("the train_step case needs --checkpoint (a checkpoint in the base layout)")
  base_sha = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
  new_desc = git("rev-parse", "HEAD") + (" (modified)" if git("status", "--porcelain") else "")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="focus_cmp_")
  base_tree = os.path.join(tmp, "base")
  git("worktree", "add", "--detach", base_tree, base_sha)
  results = {"base": base_sha, "new": new_desc, "repeats": args.repeats,
             "target": {"ratio": TARGET, "compile_ratio": COMPILE_TARGET}, "cases": {}}
  commands = {name: [a.format(checkpoint=os.path.abspath(args.checkpoint or ""), tmp=tmp)
                     if cmd is None else a for a in template]
              for name, (template, _) in cases.items()}
  runs = {name: {"base": [], "new": []} for name in cases}
  try:
    # round robin: every case gets a base/new pair before any gets a second one
    for rep in range(args.repeats):
      for name, (_, keep) in cases.items():
        if "error" in results["cases"].get(name, {}):
          continue
        entry = results["cases"].setdefault(name, {"command": " ".join(commands[name])})
        try:
          for which, tree in (("base", base_tree), ("new", ROOT)):
            log = os.path.join(args.out, f"{name}_{which}_{rep}.log") if args.out else None
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {which} run {rep + 1}/{args.repeats}",
                  flush=True)
            runs[name][which].append(run_one(tree, commands[name], log))
        except (RuntimeError, ValueError) as e:
          entry["error"] = str(e)
          print(f"{name}: {e}", flush=True)
          continue
        entry["pairs"] = rep + 1
        entry["metrics"] = summarize(runs[name], keep)
        print_table(name, entry["metrics"])
        if args.out:
          path = os.path.join(args.out, "summary.json")
          with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
          os.replace(path + ".tmp", path)
  finally:
    subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=ROOT,
                   capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
