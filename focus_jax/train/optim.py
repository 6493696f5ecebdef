"""Learning-rate schedules and the AdamW optimiser of the candidate projections."""
from __future__ import annotations

import math

import optax

SCHEDULES = ("linear", "cosine", "constant")


def make_schedule(lr: float, steps: int, warmup_steps: int = 0, decay: str = "linear",
                  end_lr_factor: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 to lr over warmup_steps, then `decay` to lr * end_lr_factor at `steps`.

  A warmup longer than the run is allowed (short test runs of a long config):
  the run then ends inside the warmup. The numbers' ranges are a TrainConfig's
  (train.run_config).
  """
  if decay not in SCHEDULES:
    raise ValueError(f"unknown lr decay {decay!r}; expected one of {SCHEDULES}")
  rest = max(steps - warmup_steps, 1)
  end = lr * end_lr_factor
  if decay == "linear":
    main = optax.linear_schedule(lr, end, rest)
  elif decay == "cosine":
    main = optax.cosine_decay_schedule(lr, rest, alpha=end_lr_factor)
  else:
    main = optax.constant_schedule(lr)
  if warmup_steps == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), main],
                              [warmup_steps])


def make_optimizer(schedule: optax.Schedule, *, weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8,
                   clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  """Global-norm clipping (when clip_norm > 0; 0 or None: off) followed by AdamW."""
  if clip_norm is not None and not (math.isfinite(clip_norm) and clip_norm >= 0):
    raise ValueError(f"clip_norm must be a finite number >= 0 (0 disables clipping), "
                     f"got {clip_norm}")
  parts = []
  if clip_norm:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return optax.chain(*parts)
