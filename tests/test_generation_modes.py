"""focus_jax.generation: the mode names declared once, and the one sampling loop.

launch.generate and launch.evaluate accept exactly the declared modes and refuse any
other with the same one-line error as ModeSetup; no other file spells the mode list.
The loop is checked on a scripted decoder (hand-written logits)."""
import ast
import json
import subprocess
import sys

import numpy as np
import pytest
from test_cli_safety import ROOT, one_line_error, run_cli

from focus_jax.generation import MODES
from focus_jax.generation.decode import NonFiniteLogits, sample
from focus_jax.generation.modes import ModeSetup
from focus_jax.sampling import Sampler

CANDIDATES = ("plain", "selfextend", "focus", "nope", "Plain", "exact", "fast", "")
REFUSAL = "unknown --mode={}; available: plain, selfextend, focus"

# Imports one launcher (its flags), then parses its argv with each --mode in turn and
# reports what its validate_flags says: null (accepted) or the error text.
SCRIPT = r"""
import json, sys
from absl import flags
mod = __import__(sys.argv[1], fromlist=["validate_flags"])
out = {}
for mode in sys.argv[3:]:
  flags.FLAGS.unparse_flags()
  flags.FLAGS([sys.argv[1]] + sys.argv[2].split() + [f"--mode={mode}"])
  try:
    mod.validate_flags()
    out[mode] = None
  except ValueError as e:
    out[mode] = str(e)
print(json.dumps(out))
"""
ARGV = {"launch.generate": "--checkpoint=x --input_ids=x.npy",
        "launch.evaluate": "--checkpoint=x --out=y --task=passkey"}


def _validate(module):
  r = subprocess.run([sys.executable, "-c", SCRIPT, module, ARGV[module], *CANDIDATES],
                     cwd=ROOT, capture_output=True, text=True, timeout=300,
                     env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
                          "PATH": "/usr/bin:/bin"})
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_launchers_accept_exactly_the_declared_modes():
  assert MODES == ("plain", "selfextend", "focus")
  for module in ARGV:
    got = _validate(module)
    assert {m for m, err in got.items() if err is None} == set(MODES), (module, got)
    for m in set(CANDIDATES) - set(MODES):
      assert got[m] == REFUSAL.format(m), (module, m, got[m])
  with pytest.raises(ValueError) as e:
    ModeSetup("nope", None)
  assert str(e.value) == REFUSAL.format("nope")


@pytest.mark.parametrize("module,prog", [("launch.generate", "generate"),
                                         ("launch.evaluate", "launch.evaluate")])
def test_unknown_mode_is_one_line(tmp_path, module, prog):
  argv = ARGV[module].replace("--out=y", f"--out={tmp_path / 'out'}").split()
  line = one_line_error(run_cli(module, *argv, "--mode=nope"), prog)
  assert line == f"{prog}: error: {REFUSAL.format('nope')}"


def test_the_mode_list_is_declared_once():
  """No tuple / list / set literal outside focus_jax/generation/__init__.py holds every
  mode name (a second declaration that could drift)."""
  where = []
  for f in sorted([*(ROOT / "focus_jax").rglob("*.py"), *(ROOT / "launch").rglob("*.py")]):
    for node in ast.walk(ast.parse(f.read_text())):
      if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        names = {e.value for e in node.elts if isinstance(e, ast.Constant)}
        if set(MODES) <= names:
          where.append(str(f.relative_to(ROOT)))
  assert where == ["focus_jax/generation/__init__.py"]


class Scripted:
  """A decoder whose logits are given rows; records the tokens it was stepped with."""

  def __init__(self, rows):
    self.rows, self.fed = [np.asarray(r, np.float32) for r in rows], []

  def prefill(self):
    return self.rows[0]

  def step(self, token):
    self.fed.append(token)
    return self.rows[len(self.fed)]


def test_sample_is_greedy_stops_and_refuses_non_finite():
  rows = [[0, 3, 1], [5, 0, 0], [0, 0, 2], [1, 0, 0]]   # argmax 1, 0, 2, 0
  d = Scripted(rows)
  gen = sample(d, 4, Sampler())
  assert gen.tokens.tolist() == [1, 0, 2, 0] and gen.tokens.dtype == np.int32
  np.testing.assert_array_equal(gen.logits, np.asarray(rows, np.float32))
  assert d.fed == [1, 0, 2]              # no step after the last token
  d = Scripted(rows)
  gen = sample(d, 4, Sampler(), stop={2})
  assert gen.tokens.tolist() == [1, 0, 2] and d.fed == [1, 0]
  d = Scripted(rows)
  assert sample(d, 2, Sampler()).tokens.tolist() == [1, 0] and d.fed == [1]
  with pytest.raises(NonFiniteLogits, match=r"\(1 of 3 NaN or inf\) at generation step 1"):
    sample(Scripted([[0, 1, 0], [0, np.nan, 0]]), 3, Sampler())
