"""Carrying a tokenizer along with a checkpoint: its files copied from an HF folder, or
built from a GGUF's metadata (by focus_jax.text.load_hf_tokenizer: local files only,
no remote code) and saved."""
from __future__ import annotations

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
    from focus_jax.text import load_hf_tokenizer
    load_hf_tokenizer(src).save_pretrained(str(dst))
    return sorted(p.name for p in dst.iterdir())
  if not src.is_dir():
    raise FileNotFoundError(f"tokenizer source {src} is neither a folder nor a .gguf file")
  copied = []
  for name in TOKENIZER_FILES:
    if (src / name).is_file():
      shutil.copy2(src / name, dst / name)
      copied.append(name)
  return copied
