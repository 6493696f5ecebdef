"""SmolLM2-135M-Instruct (embedded GGUF, converted) on the embedded Shakespeare plays.

Sized for a 2-core CPU: windows of 512..768 tokens, local window 256, chunk
sizes 64..256, one sample (both losses) per step. Convert the model first:
  python -m launch.convert --hf_model="$(python -c 'from focus_jax import assets;
      print(assets.smollm2_gguf())')" --out=out/smollm2
"""
from configs import tiny


def get_config():
  c = tiny.get_config()
  c.model = "out/smollm2"          # launch.convert output
  c.tokenizer = "checkpoint"
  c.data = "shakespeare:train"     # all plays but six (setup.SHAKESPEARE_EVAL)
  c.eval_data = "shakespeare:eval"
  c.min_len = 512
  c.max_len = 768
  c.local_window = 256
  c.chunk_sizes = (64, 128, 256)
  c.fragment_max = 128             # F = min(128, S, m): keeps chunk rows short on a CPU
  c.span_min = 30
  c.loss_mix = "both"
  c.steps = 90
  c.batch_size = 1
  c.accum = 1
  c.lr = 1e-4
  c.warmup_steps = 10
  c.decay = "linear"
  c.end_lr_factor = 0.0
  c.clip_norm = 1.0
  c.checkpoint_every = 25
  c.keep_checkpoints = 2
  c.focus = dict(chunk_size=256, min_focus_len=512)  # inference: S=256, Wl=256, F=128
  return c
