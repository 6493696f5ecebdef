"""Tokenizers for the evaluations: the checkpoint's HF tokenizer, or bytes (tests, tiny runs).

Both are called as tok(text, add_special_tokens=True) -> {"input_ids": [...]}
and decoded with tok.decode(ids, skip_special_tokens=True).
"""
from __future__ import annotations

class ByteTok:
  """focus_jax.data.ByteTokenizer with the HF calling convention (BOS 1, EOS 2, vocab 259)."""
  bos_token_id, eos_token_id, vocab_size = 1, 2, 259

  def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
    ids = [b + 3 for b in text.encode("utf-8")]
    return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return bytes(int(i) - 3 for i in ids if 3 <= int(i) < 259).decode("utf-8", errors="replace")


def load(kind: str, tokenizer_dir: str | None):
  """kind "byte" or "checkpoint" (the HF tokenizer saved with the checkpoint)."""
  if kind == "byte":
    return ByteTok()
  if kind != "checkpoint":
    raise ValueError(f"--tokenizer must be checkpoint or byte, got {kind!r}")
  from focus_jax.checkpoint.tokenizer import has_tokenizer, load_tokenizer
  if not has_tokenizer(tokenizer_dir):
    raise ValueError("the checkpoint has no tokenizer; pass --tokenizer=byte for byte-level ids")
  return load_tokenizer(tokenizer_dir)
