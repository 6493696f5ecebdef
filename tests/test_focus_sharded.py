"""FocusLLM over a device mesh equals the single-device run.

The default test process keeps its one CPU device (forcing 8 host devices
globally would slow every other test and change what they exercise). The
multi-device check therefore runs this file as a script in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu, where
`main()` compares meshes "chunk:8", "data:2,chunk:4" and "chunk:4" with
"chunk:1" (chunk counts 5 and 11: not multiples of the device count), exact
and fast decoding, with the weights also split over fsdp and tensor, and
checks that chunk caches stay sharded.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def test_mesh_strings():
  from focus_jax.parallel import make_mesh, parse_mesh, spec
  assert parse_mesh("data:2, chunk:4") == (("data", 2), ("chunk", 4))
  assert parse_mesh("") == ()
  for bad, msg in [("chunk", "name:size"), ("model:2", "unknown"), ("chunk:0", ">= 1"),
                   ("chunk:2,chunk:2", "twice"), ("chunk:x", "integer"),
                   ("data:-1,chunk:-1", "at most one")]:
    with pytest.raises(ValueError, match=msg):
      parse_mesh(bad)
  with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
    make_mesh("chunk:1024")
  mesh = make_mesh(None)
  assert mesh.axis_names == ("chunk",) and mesh.devices.size == 1
  assert tuple(spec(mesh, "data", "chunk")) == (None, "chunk")
  assert make_mesh("chunk:-1").devices.size == len(__import__("jax").devices())


def test_sharded_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, HERE]))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert "sharded runs match" in proc.stdout


def main():
  import jax
  from focus_reference import TINY, tiny_model
  from focus_jax.config import FocusConfig
  from focus_jax.focus.inference import encode_chunks
  from focus_jax.focus.plan import make_plan
  from focus_jax.generation.modes import ModeSetup, generate
  from focus_jax.parallel import make_mesh, replicate

  assert jax.device_count() == 8, jax.devices()
  model = tiny_model()
  fc = FocusConfig(chunk_size=16, local_window=24, fragment_len=8, min_focus_len=40)
  rng = np.random.default_rng(0)
  runs = [(24 + 5 * 16 - 3, "exact", ("chunk:8", "data:2,chunk:4", "fsdp:2,chunk:4",
                                      "fsdp:2,chunk:2,tensor:2")),
          (24 + 11 * 16 - 7, "exact", ("chunk:4",)),                  # 11 chunks
          (24 + 5 * 16 - 3, "fast", ("chunk:8", "fsdp:2,chunk:4", "chunk:4,tensor:2"))]
  # 5 chunks; fsdp: the weights split over fsdp, gathered layer by layer inside the
  # chunk encoding; tensor: heads and MLP width split (XLA's partitioner)
  for length, decode, meshes in runs:
    x = np.random.default_rng(length).integers(TINY.bos_token_id + 1, TINY.vocab_size,
                                               size=length).astype(np.int32)
    ref = generate(ModeSetup("focus", model, focus=fc, focus_decode=decode, chunk_batch=2,
                             mesh=make_mesh("chunk:1")), x, 5)
    for mesh in meshes:
      got = generate(ModeSetup("focus", model, focus=fc, focus_decode=decode, chunk_batch=8,
                               mesh=make_mesh(mesh)), x, 5)
      err = float(np.abs(got.logits - ref.logits).max())
      print(f"L={length} {decode} {mesh}: max |diff| {err:.2e}", flush=True)
      assert err < 1e-5 and got.tokens.tolist() == ref.tokens.tolist(), (length, decode, mesh)
  # the chunk caches stay split over the chunk axis, one block of rows per device
  mesh = make_mesh("chunk:8")
  plan = make_plan(x, TINY, fc, row_multiple=8)
  cache, mem_k, *_ = encode_chunks(replicate(model, mesh), plan, mesh, 8,
                                   keep_cache=True, cache_size=32)
  assert cache.k.sharding.spec[1] == "chunk" and mem_k.sharding.spec[1] == "chunk"
  assert {s.data.shape[1] for s in cache.k.addressable_shards} == {plan.n_rows // 8}
  print("sharded runs match")


if __name__ == "__main__":
  main()
