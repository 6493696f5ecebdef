"""The FocusLLM paper's training setup: LLaMA-2-7B chat, Wl=3072, S in 64..2048.

Official recipe (FOCUSLLM.md): AdamW, lr 5e-5 with linear decay, global batch
8 (8 x A100, one sample each), 3072 <= L <= 8192, one epoch over about 0.5B
tokens of RedPajama-sample + LongAlpaca. Both losses are computed on every
sample here (`loss_mix="random"` is the official one-loss-per-sample draw).

  python -m launch.convert --hf_model=PATH/Llama-2-7b-chat-hf --out=checkpoints/llama2_7b_chat
  python -m launch.train --config=configs/llama2_7b_paper.py --workdir=runs/focus_7b \
      --config.data=DATA/redpajama_sample.jsonl,DATA/longalpaca.jsonl
"""
from configs import tiny


def get_config():
  c = tiny.get_config()
  c.model = "checkpoints/llama2_7b_chat"   # launch.convert output
  c.tokenizer = "checkpoint"
  c.dtype = "bfloat16"                     # compute; params and AdamW state stay float32
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
  c.mesh = "data:-1"                       # e.g. "data:8"; "data:2,chunk:4" splits chunks too
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.focus = dict(chunk_size=2048, min_focus_len=4096)
  return c
