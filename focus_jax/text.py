"""Text in and out: documents read from local files, and the tokenizers.

Documents. `read_documents(paths)` gives (name, text) of every document under
local paths, in a fixed order: a .txt/.text/.md file is one document named by
its file name, a folder contributes its files recursively (names sorted, a
folder's files before its subfolders), a .jsonl file one document per
non-blank line, from the field `jsonl_field` (named FILE#n). Text files are
read as UTF-8 with undecodable bytes replaced; a jsonl line that is not UTF-8
JSON holding the field as a string is refused by file and line number.

Tokenizers follow the HF calling convention: tok(text, add_special_tokens=True)
-> {"input_ids": ids}, tok.encode(text, add_special_tokens=True) -> ids,
tok.decode(ids, skip_special_tokens=True), tok.bos_token_id / eos_token_id.
`ByteTokenizer` is UTF-8 bytes (tests, tiny runs). Every HF tokenizer of the
project is read by `load_hf_tokenizer`, from a folder or a GGUF file's
metadata, with local_files_only=True and trust_remote_code=False: nothing
reaches for a model hub, and a folder whose config names custom code
(auto_map) is refused before transformers is asked.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Sequence

TEXT_SUFFIXES = (".txt", ".text", ".md")


def document_files(path: str) -> list[str]:
  """The document files of a path: itself, or a folder's text and jsonl files (sorted)."""
  if os.path.isdir(path):
    out = []
    for root, dirs, names in os.walk(path):
      dirs.sort()
      out += [os.path.join(root, n) for n in sorted(names)
              if n.endswith(TEXT_SUFFIXES + (".jsonl",))]
    return out
  if os.path.isfile(path):
    return [path]
  raise FileNotFoundError(f"data path {path!r} is neither a file nor a directory")


def _jsonl_documents(f: str, field: str):
  with open(f, "rb") as fh:
    for ln, raw in enumerate(fh, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{f}:{ln}: not UTF-8 text ({e.reason} at byte {e.start})") from None
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{f}:{ln}: not valid JSON ({e})") from None
      if not isinstance(rec, dict):
        raise ValueError(f"{f}:{ln}: expected a JSON object, got {type(rec).__name__}")
      if field not in rec:
        raise ValueError(f"{f}:{ln} has no field {field!r} (fields: {sorted(rec)})")
      if not isinstance(rec[field], str):
        raise ValueError(f"{f}:{ln}: field {field!r} must be a string, got "
                         f"{type(rec[field]).__name__}")
      yield rec[field]


def read_documents(paths: Sequence[str], jsonl_field: str = "text") -> list[tuple[str, str]]:
  """(name, text) of every document under `paths`, in a fixed order; none is an error."""
  docs = []
  for path in paths:
    for f in document_files(path):
      name = os.path.basename(f)
      if f.endswith(".jsonl"):
        docs += [(f"{name}#{n}", t) for n, t in enumerate(_jsonl_documents(f, jsonl_field), 1)]
      else:
        with open(f, encoding="utf-8", errors="replace") as fh:
          docs.append((name, fh.read()))
  if not docs:
    raise ValueError(f"no documents in {', '.join(map(str, paths))}")
  return docs


class ByteTokenizer:
  """UTF-8 bytes shifted by 3 (0 pad, 1 BOS, 2 EOS): vocab 259, for tests and tiny runs."""
  bos_token_id, eos_token_id, vocab_size = 1, 2, 259

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    ids = [b + 3 for b in text.encode("utf-8")]
    return [self.bos_token_id] + ids if add_special_tokens else ids

  def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
    return {"input_ids": self.encode(text, add_special_tokens)}

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    """The text of the byte ids; special and out-of-vocabulary ids are dropped."""
    return bytes(int(i) - 3 for i in ids if 3 <= int(i) < 259).decode("utf-8", errors="replace")


def has_tokenizer(folder) -> bool:
  return bool(folder) and Path(folder).is_dir() and any(Path(folder).iterdir())


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


def load_hf_tokenizer(source):
  """The HF tokenizer saved in the folder `source`, or built from a .gguf file's metadata.

  A missing or empty folder, a tokenizer that needs custom code (auto_map)
  and unreadable tokenizer files are each refused with one ValueError naming
  the folder or file.
  """
  gguf = source is not None and Path(source).is_file() and Path(source).suffix == ".gguf"
  if not gguf and not has_tokenizer(source):
    raise ValueError(f"no tokenizer in {source}" if source else "the checkpoint has no tokenizer")
  source = Path(source)
  folder, extra = (source.parent, {"gguf_file": source.name}) if gguf else (source, {})
  remote = None if gguf else _remote_code(folder)
  if remote:
    raise ValueError(f"{folder / remote} names custom tokenizer code (auto_map); it is not run "
                     "(no trust_remote_code): save the tokenizer as tokenizer.json instead")
  from transformers import AutoTokenizer
  try:
    return AutoTokenizer.from_pretrained(str(folder), **extra, local_files_only=True,
                                         trust_remote_code=False)
  except Exception as e:  # tokenizers raises bare Exceptions on bad file contents
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if gguf:
      raise ValueError(f"{source}: cannot build a tokenizer from its metadata "
                       f"({type(e).__name__}: {first[:200]})") from None
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    raise ValueError(f"{folder}: its tokenizer files ({files}) cannot be read "
                     f"({type(e).__name__}: {first[:200]})") from None


def load_tokenizer(kind: str, tokenizer_dir: str | None):
  """kind "byte" (ByteTokenizer) or "checkpoint" (the HF tokenizer saved with the checkpoint)."""
  if kind == "byte":
    return ByteTokenizer()
  if kind != "checkpoint":
    raise ValueError(f"--tokenizer must be checkpoint or byte, got {kind!r}")
  if not has_tokenizer(tokenizer_dir):
    raise ValueError("the checkpoint has no tokenizer; pass --tokenizer=byte for byte-level ids")
  return load_hf_tokenizer(tokenizer_dir)


def hf_tokenizer(tokenizer_dir: str, add_special_tokens: bool = True):
  """A str -> ids callable from an HF tokenizer folder, and its name for caching."""
  tok = load_hf_tokenizer(tokenizer_dir)
  return (functools.partial(tok.encode, add_special_tokens=add_special_tokens),
          f"{type(tok).__name__}:{tok.name_or_path}:{len(tok)}:{add_special_tokens}")
