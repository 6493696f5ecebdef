"""The FocusLLM paper's training setup: LLaMA-2-7B chat, Wl=3072, S in 64..2048.

Official recipe (FOCUSLLM.md): AdamW, lr 5e-5 with linear decay, global batch
8 (8 x A100, one sample each), 3072 <= L <= 8192, one epoch over about 0.5B
tokens of RedPajama-sample + LongAlpaca. Both losses are computed on every
sample here (`loss_mix="random"` is the official one-loss-per-sample draw).

  python -m launch.convert --hf_model=PATH/Llama-2-7b-chat-hf --out=checkpoints/llama2_7b_chat
  python -m launch.plan --config=configs/llama2_7b_paper.py --mesh=fsdp:8,chunk:2 --devices=16
  python -m launch.train --config=configs/llama2_7b_paper.py --workdir=runs/focus_7b \
      --config.mesh=data:2,fsdp:8 --config.data=DATA/redpajama_sample.jsonl,DATA/longalpaca.jsonl

On a pod the frozen base is stored in bfloat16 and split over "fsdp" with the
candidates, their gradients and AdamW state (float32); see docs/RESULTS.md for
the planner's per-device figures behind `remat`.
"""
from configs import tiny


def get_config():
  c = tiny.get_config()
  c.model = "checkpoints/llama2_7b_chat"   # launch.convert output
  c.tokenizer = "checkpoint"
  c.dtype = "bfloat16"                     # compute; candidates and AdamW state stay float32
  c.base_dtype = "bfloat16"                # the frozen base (27 GB in float32) stored in bf16
  c.remat = "full"                         # per layer; chosen by launch.plan (docs/RESULTS.md)
  c.fused_chunks = True                    # chunk prefix + candidate in one layer scan, and
  c.fused_groups = 8                       # 8 checkpointed groups of 4 layers (docs/RESULTS.md)
  # LLaMA-2-7B's architecture, for launch.plan before the checkpoint exists
  c.model_shape = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                       rms_norm_eps=1e-5, max_position_embeddings=4096)
  c.data = "data/train.jsonl"              # files, folders or .jsonl (field jsonl_field)
  c.jsonl_field = "text"
  c.min_len = 3072
  c.max_len = 8192
  c.local_window = 3072
  c.chunk_sizes = (64, 128, 256, 512, 1024, 2048)
  c.fragment_max = 512
  c.span_min = 30
  c.target_tokens = 1
  c.loss_mix = "both"
  c.row_buckets = "fixed"
  # ~0.5B tokens / (8 samples x ~5.6K tokens) per step: one epoch in about 11K steps.
  c.steps = 11000
  c.batch_size = 8
  c.accum = 1
  c.lr = 5e-5
  c.warmup_steps = 0
  c.decay = "linear"
  c.end_lr_factor = 0.0
  c.weight_decay = 0.0
  c.clip_norm = 1.0
  c.mesh = "fsdp:-1"                       # all devices split the model; e.g. "data:2,fsdp:8"
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.focus = dict(chunk_size=2048, min_focus_len=4096)
  return c
