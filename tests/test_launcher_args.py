"""Every launcher refuses positional arguments (absl passes them to main unparsed) with
one line naming them on stderr and exit status 1, before any work: one check
(launch.cli_errors.start) shared by all of them. Each launcher defines its own absl
flags, so each runs in its own process (started together)."""
import os
import subprocess
import sys

LAUNCHERS = ("convert", "demo_memory", "evaluate", "export_hf", "generate", "plan", "train")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_positional_arguments_are_one_error_in_every_launcher():
  code = ("import sys, importlib; m = importlib.import_module('launch.' + sys.argv[1]); "
          "m.main(['launch', 'stray', 'words'])")
  procs = {n: subprocess.Popen([sys.executable, "-c", code, n], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ, JAX_PLATFORMS="cpu"))
           for n in LAUNCHERS}
  for name, p in procs.items():
    out, err = p.communicate(timeout=300)
    assert p.returncode == 1, (name, p.returncode, err[-2000:])
    assert err.strip().splitlines() == [f"{name}: error: unexpected arguments: ['stray', 'words']"], name
    assert out == ""


def test_no_positional_argument_passes_the_check(capsys):
  from launch.cli_errors import start
  start("train", ["launch/train.py"])     # returns: logging set up, nothing printed
  assert capsys.readouterr().err == ""
