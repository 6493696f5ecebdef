"""Per-step metrics: the log, WORKDIR/metrics.jsonl and TensorBoard event files.

Each step writes one JSON object per line (`step`, `loss`, the per-loss
values, grad_norm, lr, tokens/s, step time, ...). On resume the file is cut
back to the restored step, so it always describes one uninterrupted run.
Only process 0 writes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def _fmt_secs(s: float) -> str:
  s = int(s)
  h, rem = divmod(s, 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class MetricsWriter:
  """Writes metrics of each step; `enabled=False` (other processes) only logs."""

  def __init__(self, workdir: str, total_steps: int, *, enabled: bool = True,
               tensorboard: bool = True):
    self.total_steps, self.enabled = total_steps, enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._times: list[float] = []
    self._tb = None
    if enabled and tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate(self, last_step: int):
    """Keeps only the lines with step <= last_step (restart from a checkpoint)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [ln for ln in f if ln.strip()]
    keep = []
    for ln in lines:
      try:
        if json.loads(ln)["step"] <= last_step:
          keep.append(ln)
      except (ValueError, KeyError):
        continue  # a line cut by a kill
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, self.path)

  def eta(self, step: int) -> float | None:
    """Seconds left, from the median of recent step times (compiles excluded)."""
    if len(self._times) < 3:
      return None
    recent = sorted(self._times[-50:])
    return recent[len(recent) // 2] * (self.total_steps - step)

  def write(self, step: int, metrics: dict):
    """Records one step; `metrics` must hold `loss` and `step_time` (seconds)."""
    self._times.append(float(metrics["step_time"]))
    eta = self.eta(step)
    row = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
    if eta is not None:
      row["eta_s"] = round(eta, 1)
    done = min(1.0, step / max(self.total_steps, 1))
    bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
    parts = [f"[{bar}] {100 * done:3.0f}% step {step}/{self.total_steps}",
             f"loss {metrics['loss']:.4f}"]
    for k in ("loss_continuation", "loss_repetition"):
      if k in metrics:
        parts.append(f"{k[5:]} {metrics[k]:.4f}")
    parts += [f"gnorm {metrics.get('grad_norm', float('nan')):.3f}",
              f"lr {metrics.get('lr', 0.0):.2e}",
              f"{metrics.get('tokens_per_s', 0.0):.0f} tok/s",
              f"{metrics['step_time']:.2f}s/step"]
    if eta is not None:
      parts.append(f"ETA {_fmt_secs(eta)}")
    log.info(" | ".join(parts))
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(f"train/{k}", v, step)

  def close(self):
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def _clean(v):
  """Python scalars for JSON (non-finite floats become strings)."""
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


class Stopwatch:
  def __init__(self):
    self.t = time.perf_counter()

  def lap(self) -> float:
    now = time.perf_counter()
    dt, self.t = now - self.t, now
    return dt


def read_metrics(workdir: str) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl (a line cut by a kill is skipped)."""
  rows = []
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    for ln in f:
      if ln.strip():
        try:
          rows.append(json.loads(ln))
        except ValueError:
          continue
  return rows


def loss_curve(rows: list[dict], window: int,
               keys=("loss", "loss_continuation", "loss_repetition")) -> list[dict]:
  """Means of `keys` over consecutive windows of `window` steps (the loss curve).

  One-token losses are noisy step to step; window means show the trend.
  Non-finite values (written as strings) and missing keys are skipped.
  """
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  out = []
  rows = sorted(rows, key=lambda r: r["step"])
  for i in range(0, len(rows), window):
    part = rows[i:i + window]
    row = {"first_step": part[0]["step"], "last_step": part[-1]["step"]}
    for k in keys:
      vals = [r[k] for r in part if isinstance(r.get(k), (int, float))]
      if vals:
        row[k] = sum(vals) / len(vals)
    out.append(row)
  return out


def main(argv=None):
  """python -m focus_jax.train.metrics WORKDIR [--window=N]: the loss curve of a run."""
  import argparse
  ap = argparse.ArgumentParser(description=main.__doc__)
  ap.add_argument("workdir")
  ap.add_argument("--window", type=int, default=50)
  args = ap.parse_args(argv)
  curve = loss_curve(read_metrics(args.workdir), args.window)
  print("| steps | loss | continuation | repetition |\n|---|---|---|---|")
  fmt = lambda r, k: f"{r[k]:.3f}" if k in r else "-"
  for r in curve:
    print(f"| {r['first_step']}-{r['last_step']} | {fmt(r, 'loss')} | "
          f"{fmt(r, 'loss_continuation')} | {fmt(r, 'loss_repetition')} |")
  print(json.dumps(curve))


if __name__ == "__main__":
  main()
