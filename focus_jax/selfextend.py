"""SelfExtend: a training-free long-context mode (arXiv 2401.01325).

Inside a neighbour window W the model attends with its ordinary positions;
beyond it, keys sit at p // G and queries at p // G + W - W // G, so every
relative distance the model sees stays below its trained context. Both logit
kinds are merged in one softmax by `focus_jax.model.attention` (blockwise,
memory O(L * block)), so nothing here touches the model: this module picks G
(focus_jax.generation runs the mode: the plain decoder with these positions).

The longest input a setting covers is (train_len - W) * G + W.
"""
from __future__ import annotations

from absl import logging

from focus_jax.config import ModelConfig, SelfExtendConfig

# Group sizes the paper evaluates (2..64); beyond this the grouped positions are
# so coarse that retrieval quality is not expected to survive.
MAX_SENSIBLE_GROUP = 64
DEFAULT_NEIGHBOR_WINDOW = 1024


def choose_group_size(input_len: int, train_len: int, neighbor_window: int,
                      max_group: int = MAX_SENSIBLE_GROUP) -> int:
  """Smallest G with (train_len - W) * G + W >= input_len.

  Returns 1 (SelfExtend equals the plain model) when the input already fits.
  Logs a warning and still returns the covering G when it exceeds `max_group`.
  """
  if input_len < 1:
    raise ValueError(f"input_len must be >= 1, got {input_len}")
  if not 1 <= neighbor_window < train_len:
    raise ValueError(f"neighbor_window must lie in [1, train_len={train_len}), "
                     f"got {neighbor_window}")
  span = train_len - neighbor_window
  group = max(1, -(-(input_len - neighbor_window) // span))
  if group > max_group:
    logging.warning(
        "SelfExtend: %d tokens need group size %d with train_len=%d and W=%d; groups above "
        "%d are outside the tested range and quality will likely collapse",
        input_len, group, train_len, neighbor_window, max_group)
  return group


def resolve(cfg: ModelConfig, total_len: int, group_size: int | None = None,
            neighbor_window: int = DEFAULT_NEIGHBOR_WINDOW) -> SelfExtendConfig:
  """The SelfExtend setting for `total_len` tokens (prompt + generated).

  group_size None: chosen by `choose_group_size` with train_len equal to the
  model's max_position_embeddings. A given group size that does not cover
  total_len is kept, with a warning.
  """
  train_len = cfg.max_position_embeddings
  if not 1 <= neighbor_window < train_len:
    raise ValueError(f"neighbor_window ({neighbor_window}) must lie in [1, {train_len}), "
                     f"the model's trained context")
  if group_size is None:
    group_size = choose_group_size(total_len, train_len, neighbor_window)
  se = SelfExtendConfig(group_size=group_size, neighbor_window=neighbor_window)
  if se.max_length(train_len) < total_len:
    logging.warning("SelfExtend G=%d, W=%d covers %d tokens, fewer than the %d requested",
                    group_size, neighbor_window, se.max_length(train_len), total_len)
  return se

