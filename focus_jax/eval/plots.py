"""Figures of evaluation runs (matplotlib, Agg backend, PNG).

  python -m focus_jax.eval.plots --out=docs/figures RUN_DIR...

Writes passkey_<name>.png (length x depth accuracy heatmap) for each passkey
run, ruler_<name>.png (task x length score heatmap) for each RULER run and perplexity.png (perplexity vs window length, one line per run) for
the perplexity runs. launch.evaluate draws the run's own figure as it ends.
--windows=N draws every perplexity run from the first N windows of each
length (in the order of the protocol: document, then start), so runs made with
different --max_windows compare on the same text.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def run_label(summary: dict) -> str:
  s = summary.get("settings", {})
  name = Path(s.get("checkpoint", "?")).name
  extra = ""
  if s.get("mode") == "selfextend":
    extra = f" W={s.get('neighbor_window')}" + (f" G={s['group_size']}" if s.get("group_size")
                                                  else "")
  if s.get("mode") == "focus":
    extra = f" S={s.get('chunk_size')} Wl={s.get('local_window')}"
  if s.get("context") is not None:
    extra += f" context={s['context']}"
  for key in ("haystack", "data"):   # other text than the default: its own row / line
    if s.get(key):
      extra += f" {key}={Path(str(s[key]).split(',')[0]).name}"
  return f"{name} {s.get('mode', '?')}{extra}"


def passkey_heatmap(rows, path, title: str = "passkey") -> None:
  """Accuracy per (length, depth) cell (colour: mean over seeds; text: correct / cases);
  missing cells blank."""
  import numpy as np
  plt = _plt()
  lengths = sorted({r["length"] for r in rows})
  depths = sorted({r["depth"] for r in rows})
  acc = np.full((len(depths), len(lengths)), np.nan)
  text = {}
  for i, d in enumerate(depths):
    for j, n in enumerate(lengths):
      v = [r["correct"] for r in rows if r["length"] == n and r["depth"] == d]
      if v:
        acc[i, j] = sum(v) / len(v)
        text[i, j] = f"{sum(v)}/{len(v)}"
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(lengths), 1.2 + 0.6 * len(depths)))
  im = ax.imshow(acc, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
  ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n % 1024 == 0 else str(n)
                                      for n in lengths])
  ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
  ax.set_xlabel("prompt length (tokens)")
  ax.set_ylabel("key depth")
  for (i, j), label in text.items():   # correct / cases (seeds) of the cell
    ax.text(j, i, label, ha="center", va="center", fontsize=8)
  fig.colorbar(im, ax=ax, label="accuracy")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _length_label(n: int) -> str:
  return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def ruler_heatmap(by_task: dict, path, title: str = "RULER") -> None:
  """RULER's score (0-100) per (task, length) cell, the value written in it; missing blank."""
  import numpy as np
  plt = _plt()
  tasks = list(by_task)
  lengths = sorted({int(n) for c in by_task.values() for n in c})
  acc = np.full((len(tasks), len(lengths)), np.nan)
  for i, t in enumerate(tasks):
    for j, n in enumerate(lengths):
      if str(n) in by_task[t]:
        acc[i, j] = by_task[t][str(n)]
  fig, ax = plt.subplots(figsize=(2.4 + 1.1 * len(lengths), 1.2 + 0.45 * len(tasks)))
  im = ax.imshow(acc, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
  ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths])
  ax.set_yticks(range(len(tasks)), tasks)
  ax.set_xlabel("prompt length (tokens)")
  for i in range(len(tasks)):
    for j in range(len(lengths)):
      if not np.isnan(acc[i, j]):
        ax.text(j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=8)
  fig.colorbar(im, ax=ax, label="score")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def perplexity_plot(series: dict, path) -> None:
  """series: label -> {length: ppl}; log-scale length axis."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, pts in series.items():
    xs = sorted(int(k) for k in pts)
    ax.plot(xs, [pts[str(x)] for x in xs], marker="o", label=label)
  ax.set_xscale("log", base=2)
  ticks = sorted({int(k) for pts in series.values() for k in pts})
  ax.set_xticks(ticks, [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in ticks])
  ax.minorticks_off()
  ax.set_xlabel("window length (tokens)")
  ax.set_ylabel("perplexity (last 256 tokens of each window)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def first_windows(rows, n: int | None) -> list[dict]:
  """The first n perplexity windows (by document, then start) of each length."""
  if n is None:
    return list(rows)
  if n < 1:
    raise ValueError(f"--windows must be >= 1, got {n}")
  out, seen = [], {}
  for r in sorted(rows, key=lambda r: (r["length"], r["doc"], r["start"])):
    if seen.get(r["length"], 0) < n:
      seen[r["length"]] = seen.get(r["length"], 0) + 1
      out.append(r)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m focus_jax.eval.plots", description=__doc__)
  ap.add_argument("runs", nargs="+", help="launch.evaluate output folders")
  ap.add_argument("--out", required=True, help="folder for the PNGs")
  ap.add_argument("--windows", type=int, default=None,
                  help="perplexity from the first N windows of each length of every run")
  args = ap.parse_args(argv)
  from focus_jax.eval.perplexity import summarize as ppl_summary
  from focus_jax.eval.results import read_jsonl
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  series = {}
  for run in args.runs:
    summary = json.loads((Path(run) / "summary.json").read_text(encoding="utf-8"))
    label = run_label(summary)
    if summary["task"] == "passkey":
      rows = read_jsonl(Path(run) / "results.jsonl")
      name = Path(run).name
      passkey_heatmap(rows, out / f"passkey_{name}.png", f"passkey: {label}")
      print(out / f"passkey_{name}.png")
    elif summary["task"] == "ruler":
      name = Path(run).name
      ruler_heatmap(summary["scores"]["by_task"], out / f"ruler_{name}.png", f"RULER: {label}")
      print(out / f"ruler_{name}.png")
    elif summary["task"] == "perplexity":
      scores = summary["scores"]
      if args.windows is not None:
        rows = read_jsonl(Path(run) / "results.jsonl")
        scores = ppl_summary(first_windows(rows, args.windows))
      series[label] = {k: v["ppl"] for k, v in scores.items()}
  if series:
    perplexity_plot(series, out / "perplexity.png")
    print(out / "perplexity.png")


if __name__ == "__main__":
  main()
