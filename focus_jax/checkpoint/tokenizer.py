"""Carrying a tokenizer along with a checkpoint (copied files, or built from a GGUF)."""
from __future__ import annotations

from pathlib import Path
import shutil

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
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
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
