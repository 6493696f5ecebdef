"""A random tiny LLaMA on synthetic copy-task documents: seconds per step on a CPU.

Every training config defines these fields (override any with --config.NAME=VALUE).
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  # Model: "tiny" (random, sizes below) or a focus_jax checkpoint folder (launch.convert).
  c.model = "tiny"
  c.tiny = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_layers=2,
                num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=4096,
                # A random model needs weights larger than the usual 0.02 for its
                # logits to move at all (the final RMSNorm fixes the hidden scale).
                init_std=0.1)
  c.candidate_projs = ("q", "k", "v", "o")
  c.dtype = "float32"              # compute dtype: float32 or bfloat16 (params stay float32)
  # Data: "synthetic", "shakespeare" (embedded plays) or comma-separated files/dirs/*.jsonl.
  c.data = "synthetic"
  c.eval_data = ""                 # held-out data for launch.train --eval (default: data)
  c.synthetic = dict(n_docs=256, length=256, vocab=64, period=24)
  c.jsonl_field = "text"
  c.tokenizer = "byte"             # "byte" or "checkpoint" (the model's HF tokenizer)
  c.min_len = 96                   # windows shorter than this are dropped (paper: 3072)
  c.max_len = 256                  # documents are cut into windows of at most this (paper: 8192)
  c.local_window = 64              # Wl (paper: 3072)
  c.chunk_sizes = (32,)            # S, one drawn per step (paper: 64 .. 2048)
  c.fragment_max = 512             # F = min(fragment_max, S, m)
  c.span_min = 16                  # m in [span_min, Wl - target_tokens - 2] (paper: 30)
  c.target_tokens = 1              # K predicted tokens per task (paper: 1)
  c.retrieval_frac = 0.0           # share of samples made fact-retrieval documents (data.retrieval)
  c.loss_mix = "both"              # "both" (every sample, both losses) or "random" (one)
  c.row_buckets = "fixed"          # chunk rows: "fixed" (one shape per S) or "bucket"
  c.seed = 0
  # Optimisation: AdamW on the candidate projections only.
  c.steps = 40
  c.batch_size = 2                 # samples per micro-batch over all hosts
  c.accum = 1                      # micro-batches per optimiser step
  c.lr = 1e-2
  c.warmup_steps = 4
  c.decay = "cosine"               # "linear", "cosine" or "constant"
  c.end_lr_factor = 0.1
  c.weight_decay = 0.0
  c.b1, c.b2, c.eps = 0.9, 0.999, 1e-8
  c.clip_norm = 1.0                # 0 disables clipping
  c.stop_gradient_prefix = True    # False: back-propagate through the whole chunks
  c.bos_sees_memory = True         # False: the local BOS does not attend to the memory
  c.mesh = ""                      # e.g. "data:2,chunk:4", "fsdp:8"; "" is one device
  c.base_dtype = ""                # "bfloat16": store the frozen base in bf16 ("": as loaded)
  c.model_shape = None             # architecture for launch.plan when model is not a checkpoint
  c.remat = "none"                 # layer rematerialisation: none | full | dots | dots_no_batch
  c.fused_chunks = False           # chunk prefix + candidate in one layer scan (less memory)
  c.fused_groups = 0               # its checkpointed layer groups; 0: keep each layer's prefix K/V
  # Checkpoints, logs, output.
  c.checkpoint_every = 10
  c.keep_checkpoints = 2
  c.async_checkpoints = True
  c.resume = True
  c.tensorboard = True
  c.export_model = True            # write WORKDIR/model at the end (single process)
  # FocusLLM inference settings stored with the trained model.
  c.focus = dict(chunk_size=0, min_focus_len=128)  # chunk_size 0: the largest chunk_sizes
  return c
