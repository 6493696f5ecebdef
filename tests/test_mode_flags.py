"""--mode=focus settings: flags given > the checkpoint's focus_config.json > official defaults.

A checkpoint written by launch.train carries the settings its candidates were
trained with; launch.generate and launch.evaluate must use them unless the
command line says otherwise (a trained S = 128 model run at the official
S = 2048, min_focus_len = 4096 silently becomes the plain model on 4K prompts).
"""
from absl import flags
from absl.testing import flagsaver

from focus_jax.config import FocusConfig
from launch import modes

FLAGS = flags.FLAGS
SAVED = FocusConfig(chunk_size=128, local_window=128, fragment_len=64, min_focus_len=384)


def _parse(*args):
  FLAGS.unparse_flags()
  FLAGS(["prog", *args], known_only=True)


def test_checkpoint_settings_unless_flags_say_otherwise():
  with flagsaver.flagsaver():
    _parse()
    assert modes.focus_settings(SAVED) == SAVED
    assert modes.focus_settings(None) == FocusConfig()          # official defaults
    _parse("--chunk_size=256", "--min_focus_len=0")
    got = modes.focus_settings(SAVED)
    assert (got.chunk_size, got.min_focus_len) == (256, 0)
    assert (got.local_window, got.fragment_len) == (128, 64)    # still the checkpoint's
    _parse("--chunk_size=2048")                                 # a flag equal to its default
    assert modes.focus_settings(SAVED).chunk_size == 2048       # still wins: it was given
