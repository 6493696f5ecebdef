r"""The paper's evaluations for one checkpoint and one decoding mode.

  python -m launch.evaluate --checkpoint=DIR --mode=plain|selfextend|focus [mode flags] \
      --task=passkey|perplexity|longbench|infinitebench --out=OUT [task flags]

  passkey        --lengths=4096,8192 --depths=0,0.25,0.5,0.75,1 --seeds=3
                 [--haystack=FILE --needle_template="The pass key is {key}. ..."]
  perplexity     [--data=FILE,FOLDER,X.jsonl (default: the held-out plays)] --lengths=...
                 [--stride=2048 --max_windows=100 --loss_tokens=256 --jsonl_field=text]
                 [--context=N: control, the scored tokens see only the last N before them]
  longbench      --data_dir=DIR --datasets=narrativeqa,qasper,... [--max_length=15500
                 --limit=N --chat_template]
  infinitebench  --data_dir=DIR --datasets=passkey,number_string,... [--max_length --limit]
                 or --synthetic --lengths=... [--datasets=passkey,number_string,kv_retrieval,
                 math_find --seeds=N]: InfiniteBench's synthetic tasks generated at each length
                 (N samples; files under OUT/infinitebench_data/LENGTH/)
  ruler          --lengths=4096,8192 [--ruler_tasks=niah_single_1,...,vt,cwe,fwe --seeds=N
                 --haystack=FILE (essay tasks; default the Shakespeare plays)]: RULER's
                 synthetic tasks, N samples per task and length; OUT/ruler.png

Every finished case is one line of OUT/results.jsonl and is skipped when the
command runs again (resume); OUT/run.json records the settings and the
checkpoint's identity, and a resumed run must match both. OUT must be new, empty
or an evaluation folder (its run.json). OUT/summary.json holds the scores of
every finished case in OUT (a later call with more lengths or seeds extends the
run; written atomically); passkey also writes OUT/passkey.png, perplexity
OUT/perplexity.png, the benchmarks their official pred files under
OUT/longbench/ or OUT/infinitebench/. The last stdout line is the summary as one JSON object.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import sys
import time

from absl import app, flags

from launch import modes

FLAGS = flags.FLAGS
TASKS = ("passkey", "perplexity", "longbench", "infinitebench", "ruler")
flags.DEFINE_string("checkpoint", None, "focus_jax checkpoint directory (launch.convert output).")
flags.DEFINE_string("task", None, f"One of {', '.join(TASKS)}.")
flags.DEFINE_string("out", None, "Output folder (created; an existing one is resumed).")
flags.DEFINE_enum("tokenizer", "checkpoint", ["checkpoint", "byte"],
                  "checkpoint: the checkpoint's HF tokenizer; byte: UTF-8 bytes (tiny models).")
flags.DEFINE_list("lengths", ["4096", "8192"], "passkey / perplexity: lengths in tokens.")
flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"], "passkey: key depths in [0, 1].")
flags.DEFINE_integer("seeds", 1, "passkey: seeds (keys) per length and depth.")
flags.DEFINE_string("haystack", None, "passkey: text file replacing the official filler.")
flags.DEFINE_string("needle_template", None, "passkey (with --haystack): the key line, with "
                    "{key} where the key goes (default: the official line).")
flags.DEFINE_string("data", None, "perplexity: comma-separated files, folders, .jsonl, and "
                    "corpus:plays (default: the held-out plays) or corpus:canterbury.")
flags.DEFINE_string("jsonl_field", "text", "perplexity: text field of .jsonl documents.")
flags.DEFINE_integer("stride", 2048, "perplexity: window stride (0: one window per document).")
flags.DEFINE_integer("max_windows", 100, "perplexity: windows per length at most.")
flags.DEFINE_integer("loss_tokens", 256, "perplexity: scored tokens at the end of each window.")
flags.DEFINE_integer("context", None, "perplexity: a control run; the scored tokens see only "
                     "BOS and the last N tokens before them (default: the whole window).")
flags.DEFINE_string("data_dir", None, "longbench / infinitebench: folder of <dataset>.jsonl.")
flags.DEFINE_list("datasets", None, "longbench / infinitebench: datasets (default: all English "
                  "LongBench sets / the six InfiniteBench tasks of the paper).")
flags.DEFINE_integer("max_length", 15500, "longbench / infinitebench: prompt tokens at most "
                     "(cut from the middle).")
flags.DEFINE_integer("limit", None, "longbench / infinitebench: first N samples per dataset.")
flags.DEFINE_list("ruler_tasks", None, "ruler: tasks (default: all of RULER's synthetic "
                  "tasks: niah_*, vt, cwe, fwe).")
flags.DEFINE_boolean("synthetic", False, "infinitebench: generate passkey, number_string, "
                     "kv_retrieval and math_find at each --lengths (--seeds samples) instead "
                     "of reading --data_dir.")
flags.DEFINE_boolean("chat_template", False, "longbench: wrap prompts in the tokenizer's chat "
                     "template (not for trec, triviaqa, samsum, lsht, lcc, repobench-p).")


def _ints(values, name):
  try:
    return [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name} must be comma-separated integers, got {','.join(values)}") from None


def _finished(out):
  """Every finished case of the folder: a run extended by later calls (more lengths,
  seeds or windows with the same settings) is scored and drawn as a whole."""
  from focus_jax.eval.results import read_results
  return list(read_results(out).values())


def _haystack_text():
  """--haystack's text, or None."""
  if not FLAGS.haystack:
    return None
  if not os.path.isfile(FLAGS.haystack):
    raise FileNotFoundError(f"--haystack={FLAGS.haystack}: no such file")
  return Path(FLAGS.haystack).read_text(encoding="utf-8", errors="replace")


def _ruler(setup, tok, out):
  from focus_jax.eval import ruler as R
  from focus_jax.eval.driver import run_cases
  from focus_jax.eval.plots import ruler_heatmap
  tasks = R.parse_tasks(FLAGS.ruler_tasks)
  haystack = _haystack_text()
  if haystack is None and any(R.needs_essay(t) for t in tasks):
    from focus_jax import assets
    haystack = assets.shakespeare_text()
  cases = R.make_cases(tasks, _ints(FLAGS.lengths, "lengths"), FLAGS.seeds)
  run_cases(out, cases, lambda c: R.run_case(setup, tok, c, haystack), "ruler")
  scores = R.summarize(_finished(out))
  ruler_heatmap(scores["by_task"], out / "ruler.png", f"RULER: {setup.mode}")
  return scores


def _ib_synthetic(setup, tok, out):
  from focus_jax.eval import infinitebench as IB
  from focus_jax.eval import infinitebench_synth as S
  from focus_jax.eval.driver import run_cases
  from focus_jax.eval.results import write_jsonl
  names, lengths = FLAGS.datasets or list(S.TASKS), _ints(FLAGS.lengths, "lengths")
  data = {}
  for n in lengths:   # generated (or checked) before the first model call
    folder = out / "infinitebench_data" / str(n)
    S.write_tasks(folder, tok, names, n, FLAGS.seeds)
    data[n] = {name: IB.read_task(folder, name) for name in names}

  def run(c):
    eg = data[c["length"]][c["dataset"]][c["index"]]
    return {"dataset": c["dataset"], "length": c["length"], "index": c["index"],
            **IB.predict(setup, tok, c["dataset"], eg, c["length"])}

  cases = [{"case": f"{name}/L={n}/{i}", "dataset": name, "length": n, "index": i}
           for name in names for n in lengths for i in range(FLAGS.seeds)]
  run_cases(out, cases, run, "infinitebench")
  rows, scores = _finished(out), {}
  for name in names:
    for n in sorted({r["length"] for r in rows if r["dataset"] == name}):
      mine = [r for r in rows if r["dataset"] == name and r["length"] == n]
      every = (data[n][name] if n in data   # else a length of an earlier call, in OUT
               else IB.read_task(out / "infinitebench_data" / str(n), name))
      egs = [every[r["index"]] for r in mine]
      write_jsonl(out / "infinitebench" / str(n) / f"preds_{name}.jsonl",
                  [IB.pred_row(name, eg, r["pred"], r["index"]) for r, eg in zip(mine, egs)])
      scores.setdefault(name, {})[str(n)] = IB.score(name, egs, [r["pred"] for r in mine])
  return scores


def _passkey(setup, tok, out):
  from focus_jax.eval import passkey_grid as G
  from focus_jax.eval.driver import run_cases
  from focus_jax.eval.plots import passkey_heatmap
  try:
    depths = [float(d) for d in FLAGS.depths]
  except ValueError:
    raise ValueError(f"--depths must be numbers, got {','.join(FLAGS.depths)}") from None
  haystack = _haystack_text()
  cases = G.make_cases(_ints(FLAGS.lengths, "lengths"), depths, FLAGS.seeds)
  run_cases(out, cases, lambda c: G.run_case(setup, tok, c, haystack, FLAGS.needle_template),
            "passkey")
  rows = _finished(out)
  passkey_heatmap(rows, out / "passkey.png", f"passkey: {setup.mode}")
  return G.summarize(rows)


def _perplexity(setup, tok, out):
  from focus_jax.eval import perplexity as PP
  from focus_jax.text import read_documents
  from focus_jax.eval.driver import run_cases
  from focus_jax.eval.plots import perplexity_plot
  docs = read_documents(PP.data_paths(FLAGS.data), FLAGS.jsonl_field)
  ids = [tok(text, add_special_tokens=False)["input_ids"] for _, text in docs]
  names = [n for n, _ in docs]
  cases = PP.make_cases(ids, names, _ints(FLAGS.lengths, "lengths"), FLAGS.stride,
                        FLAGS.max_windows, FLAGS.loss_tokens)
  if not cases:
    raise ValueError("no document is as long as the shortest --lengths window")
  bos = setup.cfg.bos_token_id
  if FLAGS.context is not None and FLAGS.context < 1:
    raise ValueError(f"--context must be >= 1, got {FLAGS.context}")
  run_cases(out, cases, lambda c: PP.run_window(setup, ids[c["doc"]], c, bos, FLAGS.loss_tokens,
                                                FLAGS.context), "perplexity")
  rows = _finished(out)
  scores = PP.summarize(rows)
  perplexity_plot({setup.mode: {k: v["ppl"] for k, v in scores.items()}}, out / "perplexity.png")
  return scores


def _bench(setup, tok, out, which):
  from focus_jax.eval import infinitebench as IB
  from focus_jax.eval import longbench as LB
  from focus_jax.eval import metrics
  from focus_jax.generation.modes import generate
  from focus_jax.eval.driver import run_cases
  from focus_jax.eval.results import write_jsonl
  if not FLAGS.data_dir:
    raise ValueError(f"--task={which} needs --data_dir (a folder of <dataset>.jsonl files)")
  mod = LB if which == "longbench" else IB
  names = FLAGS.datasets or list(LB.ENGLISH if which == "longbench" else IB.DEFAULT_TASKS)
  data = {}
  for name in names:   # read and check every file before the first model call
    rows = LB.read_dataset(FLAGS.data_dir, name) if mod is LB else IB.read_task(FLAGS.data_dir,
                                                                                name)
    data[name] = rows[:FLAGS.limit] if FLAGS.limit else rows
  eos = list(setup.cfg.eos_token_ids)

  def run(case):
    name, eg = case["dataset"], data[case["dataset"]][case["index"]]
    if mod is LB:
      ids = LB.prompt_ids(tok, name, eg, FLAGS.max_length, FLAGS.chat_template)
    else:
      ids = IB.prompt_ids(tok, name, eg, FLAGS.max_length)
    stop = eos + (tok("\n", add_special_tokens=False)["input_ids"][-1:]
                  if name == "samsum" else [])
    gen = generate(setup, ids, mod.MAX_NEW_TOKENS[name], eos_ids=stop)
    pred = tok.decode([int(t) for t in gen.tokens], skip_special_tokens=True)
    return {"dataset": name, "index": case["index"], "prompt_tokens": len(ids), "pred": pred}

  cases = [{"case": f"{n}/{i}", "dataset": n, "index": i} for n in names
           for i in range(len(data[n]))]
  if not cases:
    raise ValueError(f"the datasets {', '.join(names)} in {FLAGS.data_dir} hold no samples")
  rows = run_cases(out, cases, run, which)
  scores = {}
  for name in names:
    mine = [r for r in rows if r["dataset"] == name]
    egs = [data[name][r["index"]] for r in mine]
    if mod is LB:
      write_jsonl(out / "longbench" / f"{name}.jsonl",
                  [LB.pred_row(r["pred"], eg) for r, eg in zip(mine, egs)])
      scores[name] = metrics.longbench_score(name, [r["pred"] for r in mine],
                                             [eg["answers"] for eg in egs],
                                             egs[0]["all_classes"] if egs else [])
    else:
      write_jsonl(out / "infinitebench" / f"preds_{name}.jsonl",
                  [IB.pred_row(name, eg, r["pred"], r["index"]) for r, eg in zip(mine, egs)])
      scores[name] = IB.score(name, egs, [r["pred"] for r in mine])
  return scores


def validate_flags():
  """Checks the task's flags before JAX starts and the checkpoint loads: a run always has
  cases. A missing or unknown --task is left to evaluate()."""
  if FLAGS.task not in TASKS:
    return
  modes.check_mode_flags()
  if FLAGS.task in ("passkey", "perplexity"):
    lengths = _ints(FLAGS.lengths, "lengths")
    if not lengths or min(lengths) < 2:
      raise ValueError(f"--lengths must be window lengths >= 2 tokens, got "
                       f"{','.join(FLAGS.lengths) or 'none'}")
  if FLAGS.task == "passkey":
    modes.at_least(1, "seeds")
    try:
      depths = [float(d) for d in FLAGS.depths]
    except ValueError:
      raise ValueError(f"--depths must be numbers, got {','.join(FLAGS.depths)}") from None
    if not depths or not all(0 <= d <= 1 for d in depths):
      raise ValueError(f"--depths must be numbers in [0, 1], got "
                       f"{','.join(FLAGS.depths) or 'none'}")
    if FLAGS.needle_template is not None and "{key}" not in FLAGS.needle_template:
      raise ValueError(f"--needle_template={FLAGS.needle_template!r} has no {{key}} where "
                       "the key goes")
  elif FLAGS.task == "perplexity":
    modes.at_least(0, "stride")
    modes.at_least(1, "max_windows", "loss_tokens", "context")
    from focus_jax.eval.perplexity import CORPORA
    bad = [p for p in (FLAGS.data or "").split(",") if p.startswith("corpus:") and p not in CORPORA]
    if bad:
      raise ValueError(f"--data: unknown corpus {', '.join(bad)}; known: {', '.join(CORPORA)}")
    if FLAGS.loss_tokens >= min(_ints(FLAGS.lengths, "lengths")):
      raise ValueError(f"--loss_tokens={FLAGS.loss_tokens} must be below the shortest "
                       f"--lengths window ({min(_ints(FLAGS.lengths, 'lengths'))})")
  else:
    modes.at_least(1, "limit", "max_length")
  if FLAGS.task == "ruler" or FLAGS.synthetic:   # generated tasks: samples at each length
    from focus_jax.eval import infinitebench_synth, ruler
    modes.at_least(1, "seeds")
    lengths = _ints(FLAGS.lengths, "lengths")
    if not lengths or min(lengths) < 2:
      raise ValueError(f"--lengths must be prompt lengths >= 2 tokens, got "
                       f"{','.join(FLAGS.lengths) or 'none'}")
    if FLAGS.task == "ruler":
      ruler.parse_tasks(FLAGS.ruler_tasks)
    else:
      bad = [d for d in FLAGS.datasets or () if d not in infinitebench_synth.TASKS]
      if bad:
        raise ValueError(f"--synthetic has no task {', '.join(bad)}; known: "
                         f"{', '.join(infinitebench_synth.TASKS)}")


def check_lengths_fit(setup):
  """Refuses --lengths whose plain / SelfExtend KV cache cannot fit, before the first case."""
  if FLAGS.task not in ("passkey", "perplexity"):
    return
  import numpy as np
  from focus_jax.generation.decode import bucket, check_cache_fits
  n = max(_ints(FLAGS.lengths, "lengths"))
  tokens, prefill = bucket(bucket(n) + 16), bucket(n)
  if setup.mode == "focus":
    from focus_jax.focus.inference import cache_tokens
    from focus_jax.focus.plan import make_plan
    plan = make_plan(np.zeros(n, np.int32), setup.cfg, setup.focus, row_multiple=setup.chunk_batch)
    tokens, prefill = cache_tokens(plan, 16, setup.focus_decode == "exact"), 0
  check_cache_fits(setup.cfg, tokens, f"--lengths={n} (plus the answer)", prefill_tokens=prefill,
                   hint="lower --lengths")


def evaluate():
  from focus_jax.checkpoint.orbax import load_checkpoint
  from focus_jax.text import load_tokenizer
  from focus_jax.eval.results import check_out, check_run, checkpoint_identity, write_json
  for name in ("checkpoint", "task", "out"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required")
  if FLAGS.task not in TASKS:
    raise app.UsageError(f"unknown --task={FLAGS.task}; available: {', '.join(TASKS)}")
  if FLAGS.synthetic and FLAGS.task != "infinitebench":
    raise app.UsageError("--synthetic is for --task=infinitebench")
  if not os.path.isdir(FLAGS.checkpoint):
    raise FileNotFoundError(f"--checkpoint={FLAGS.checkpoint}: no such folder")
  check_out(FLAGS.out)   # a folder of other files is refused before the (slow) load
  model_id = checkpoint_identity(FLAGS.checkpoint)
  t0 = time.time()
  model, extras = load_checkpoint(FLAGS.checkpoint)
  model.set_config(model.config.replace(compute_dtype=FLAGS.dtype))
  tok = load_tokenizer(FLAGS.tokenizer, extras.get("tokenizer_dir"))
  setup = modes.mode_setup(model, progress=False, saved_focus=extras.get("focus_config"))
  check_lengths_fit(setup)
  out = Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  settings = {"checkpoint": os.path.abspath(FLAGS.checkpoint), "task": FLAGS.task,
              "tokenizer": FLAGS.tokenizer, "dtype": FLAGS.dtype, **setup.describe()}
  if FLAGS.task == "passkey":
    settings.update(haystack=FLAGS.haystack, needle_template=FLAGS.needle_template)
  elif FLAGS.task == "perplexity":
    settings.update(data=FLAGS.data, stride=FLAGS.stride, loss_tokens=FLAGS.loss_tokens)
    if FLAGS.context is not None:   # absent from older runs' run.json: they stay resumable
      settings.update(context=FLAGS.context)
  elif FLAGS.task == "ruler":
    settings.update(haystack=FLAGS.haystack)
  elif FLAGS.synthetic:
    settings.update(synthetic=True)
  else:
    settings.update(data_dir=os.path.abspath(FLAGS.data_dir or ""), max_length=FLAGS.max_length,
                    chat_template=FLAGS.chat_template)
  check_run(out, settings, model_id)
  if FLAGS.task == "passkey":
    scores = _passkey(setup, tok, out)
  elif FLAGS.task == "perplexity":
    scores = _perplexity(setup, tok, out)
  elif FLAGS.task == "ruler":
    scores = _ruler(setup, tok, out)
  elif FLAGS.synthetic:
    scores = _ib_synthetic(setup, tok, out)
  else:
    scores = _bench(setup, tok, out, FLAGS.task)
  summary = {"task": FLAGS.task, "settings": settings, "scores": scores,
             "seconds_this_call": round(time.time() - t0, 1)}
  write_json(out / "summary.json", summary)
  print(json.dumps(summary, ensure_ascii=False))
  sys.stdout.flush()


def main(argv):
  from launch.cli_errors import fail_cleanly, start
  start("evaluate", argv)
  fail_cleanly("launch.evaluate", validate_flags)
  fail_cleanly("launch.evaluate", evaluate)


if __name__ == "__main__":
  app.run(main)
