"""Carrying a tokenizer along with a checkpoint (copied files, or built from a GGUF), and
loading one: only from local files, never with remote code.

Every tokenizer of the project is loaded through `load_tokenizer` (an HF folder)
or `copy_tokenizer` (a GGUF's metadata): both pass local_files_only=True and
trust_remote_code=False, so nothing reaches for a model hub and a tokenizer
whose config names custom code (auto_map) is refused without a prompt.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
import shutil

log = logging.getLogger(__name__)

# Files an HF tokenizer may consist of.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")


def copy_tokenizer(src, dst: Path) -> list[str]:
  """Copies the tokenizer of `src` into the folder `dst`; returns the file names written.

  src is an HF folder (its tokenizer files are copied, none is fine) or a .gguf
  file (transformers builds the tokenizer from its metadata and saves it).
  """
  src, dst = Path(src), Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  if src.is_file() and src.suffix == ".gguf":
    from focus_jax.checkpoint.gguf import open_gguf
    if "tokenizer.ggml.tokens" not in open_gguf(src).fields:
      log.warning("%s holds no tokenizer metadata (tokenizer.ggml.tokens): the checkpoint gets "
                  "no tokenizer (use --input_ids to generate)", src)
      return []
    from transformers import AutoTokenizer
    try:
      tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name,
                                          local_files_only=True, trust_remote_code=False)
    except (KeyError, ValueError, TypeError, OSError) as e:
      raise ValueError(f"{src}: cannot build a tokenizer from its metadata "
                       f"({type(e).__name__}: {e})") from None
    tok.save_pretrained(str(dst))
    return sorted(p.name for p in dst.iterdir())
  if not src.is_dir():
    raise FileNotFoundError(f"tokenizer source {src} is neither a folder nor a .gguf file")
  copied = []
  for name in TOKENIZER_FILES:
    if (src / name).is_file():
      shutil.copy2(src / name, dst / name)
      copied.append(name)
  return copied


def _remote_code(folder: Path) -> str | None:
  """The file of `folder` that asks for custom tokenizer code (auto_map), if any; a file
  that is not JSON is refused by name."""
  for name in ("tokenizer_config.json", "config.json", "tokenizer.json"):
    f = folder / name
    if not f.is_file():
      continue
    try:
      d = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
      raise ValueError(f"{f} is not valid JSON ({e})") from None
    if name != "tokenizer.json" and isinstance(d, dict) and d.get("auto_map"):
      return name
  return None


def has_tokenizer(folder) -> bool:
  return bool(folder) and Path(folder).is_dir() and any(Path(folder).iterdir())


def load_tokenizer(folder):
  """The HF tokenizer saved in `folder` (local files only, no remote code).

  A missing or empty folder, a tokenizer that needs custom code (auto_map)
  and unreadable tokenizer files are each refused with one ValueError naming
  the folder or file.
  """
  if not has_tokenizer(folder):
    raise ValueError(f"no tokenizer in {folder}" if folder else "the checkpoint has no tokenizer")
  folder = Path(folder)
  remote = _remote_code(folder)
  if remote:
    raise ValueError(f"{folder / remote} names custom tokenizer code (auto_map); it is not run "
                     "(no trust_remote_code): save the tokenizer as tokenizer.json instead")
  from transformers import AutoTokenizer
  try:
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                         trust_remote_code=False)
  except Exception as e:  # tokenizers raises bare Exceptions on bad file contents
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    raise ValueError(f"{folder}: its tokenizer files ({files}) cannot be read "
                     f"({type(e).__name__}: {first[:200]})") from None
