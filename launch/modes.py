"""Decoding-mode flags shared by launch.generate and launch.evaluate.

--mode (one of focus_jax.generation.MODES) and each mode's settings;
`check_mode_flags` refuses bad ones before JAX starts and `mode_setup` turns
them into a focus_jax.generation.modes.ModeSetup (the one object every model
call of the launchers goes through).
"""
from __future__ import annotations

from absl import flags, logging

from focus_jax.generation import MODES, check_mode

FLAGS = flags.FLAGS

flags.DEFINE_string("mode", "plain", f"Decoding mode: one of {', '.join(MODES)}.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_enum("attention", "auto", ["auto", "reference", "pallas", "cudnn", "splash"],
                  "Attention kernel (focus_jax.model.kernels): auto = cuDNN / Pallas on GPU, "
                  "splash on TPU, the blockwise reference on CPU; reference = blockwise.")
# --mode=selfextend: SelfExtend grouped + neighbour attention (focus_jax.selfextend).
flags.DEFINE_integer("group_size", None, "selfextend: group size G (default: the smallest G "
                     "that covers prompt + new tokens with the model's trained context).")
flags.DEFINE_integer("neighbor_window", 1024, "selfextend: neighbour window W.")
# --mode=focus: FocusLLM parallel decoding (focus_jax.focus.inference).
flags.DEFINE_integer("chunk_size", 2048, "focus: chunk size S (official memory_stride).")
flags.DEFINE_integer("local_window", 3072, "focus: local window Wl.")
flags.DEFINE_integer("fragment_len", 512, "focus: fragment length cap (F = min(this, S, Wl)).")
flags.DEFINE_integer("min_focus_len", 4096, "focus: shorter prompts run the plain model.")
flags.DEFINE_enum("focus_decode", "exact", ["exact", "fast"],
                  "focus: exact (official) or fast (memory frozen after prefill; approximate).")
flags.DEFINE_string("mesh", "", "focus: device mesh, e.g. 'chunk:8', 'data:2,chunk:4', "
                    "'fsdp:2,chunk:4' or 'fsdp:2,chunk:2,tensor:2'.")
flags.DEFINE_integer("chunk_batch", 1, "focus: chunk rows per device per call (bounds memory).")
flags.DEFINE_enum("chunk_cache_dtype", None, ["float32", "bfloat16", "int8"],
                  "focus, exact decoding: storage of the chunk K/V caches (bfloat16: half "
                  "the memory; int8: one byte per entry plus a float32 scale per vector, "
                  "about a quarter; computation still in --dtype; default --dtype).")


FOCUS_FLAGS = ("chunk_size", "local_window", "fragment_len", "min_focus_len")
# The flags of each mode: given with another --mode they would be silently ignored.
MODE_FLAGS = {"selfextend": ("group_size", "neighbor_window"),
              "focus": FOCUS_FLAGS + ("focus_decode", "mesh", "chunk_batch",
                                      "chunk_cache_dtype")}


def at_least(low, *names):
  """Refuses a flag (of `names`) below `low`; an unset one (None) passes."""
  for name in names:
    v = FLAGS[name].value
    if v is not None and v < low:
      raise ValueError(f"--{name} must be >= {low}, got {v}")


def check_mode_flags():
  """Refuses an unknown --mode, a mode's flag given with another --mode (it would have
  no effect), and a bad value of the mode's flags (a --mesh that the devices cannot hold)."""
  check_mode(FLAGS.mode)
  for mode, names in MODE_FLAGS.items():
    given = [f"--{n}" for n in names if FLAGS[n].present]
    if given and FLAGS.mode != mode:
      raise ValueError(f"{', '.join(given)} belong{'s' if len(given) == 1 else ''} to "
                       f"--mode={mode}, not --mode={FLAGS.mode}; drop "
                       f"{'it' if len(given) == 1 else 'them'} or pass --mode={mode}")
  if FLAGS.mode == "selfextend":
    at_least(1, "group_size", "neighbor_window")
  if FLAGS.mode == "focus":
    at_least(1, "chunk_size", "local_window", "fragment_len", "chunk_batch")
    at_least(0, "min_focus_len")
    from focus_jax.parallel import make_mesh
    make_mesh(FLAGS.mesh)  # the mesh must fit the devices


def focus_settings(saved=None):
  """FocusConfig of --mode=focus: flags given on the command line, else the
  checkpoint's focus_config.json (`saved`, the settings it was trained with),
  else the flag defaults (the official values)."""
  from focus_jax.config import FocusConfig
  base = saved.to_dict() if saved is not None else {}
  given = {n: FLAGS[n].value for n in FOCUS_FLAGS if FLAGS[n].present or n not in base}
  fc = FocusConfig.from_dict({**base, **given})
  if saved is not None:
    kept = [n for n in FOCUS_FLAGS if n not in given]
    if kept:
      logging.info("focus settings from the checkpoint's focus_config.json: %s",
                   ", ".join(f"{n}={getattr(fc, n)}" for n in kept))
  return fc


def mode_setup(model, progress: bool = True, saved_focus=None):
  """The ModeSetup named by the flags (candidate projections added when missing).

  saved_focus: the checkpoint's FocusConfig (load_checkpoint's extras), used
  for the focus settings not given as flags.
  """
  from focus_jax.model.attention import set_default_attention
  set_default_attention(FLAGS.attention)
  from focus_jax.generation.modes import ModeSetup
  if check_mode(FLAGS.mode) == "plain":
    return ModeSetup("plain", model)
  if FLAGS.mode == "selfextend":
    return ModeSetup("selfextend", model, group_size=FLAGS.group_size,
                     neighbor_window=FLAGS.neighbor_window)
  from focus_jax.model import add_candidates
  from focus_jax.parallel import axis_size, make_mesh
  fc = focus_settings(saved_focus)
  if not model.has_candidates:
    logging.warning("checkpoint has no candidate projections; using untrained copies of q/k/v/o")
    add_candidates(model, fc.candidate_projs)
  mesh = make_mesh(FLAGS.mesh)
  return ModeSetup("focus", model, focus=fc, focus_decode=FLAGS.focus_decode, mesh=mesh,
                   chunk_batch=FLAGS.chunk_batch * axis_size(mesh, "chunk"), progress=progress,
                   chunk_cache_dtype=FLAGS.chunk_cache_dtype)
