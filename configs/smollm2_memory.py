"""SmolLM2-135M-Instruct FocusLLM recipe for a 2-core CPU (make train-smollm2).

Against configs/smollm2_135m.py: cheaper steps (windows of 384-512 tokens,
Wl = 128, S in {64, 128}, F = 64), two samples per step, and a learning rate
of 1e-3 (only the candidate projections train; they tolerate a large one).
target_tokens K > 1 supervises the K tokens after the span from one memory
built at the span's end: that trains fast-mode decoding (memory frozen after
the prefill). Held-out losses (bench/memory_eval.py) always use K = 1.

retrieval_frac: half of the samples become fact-retrieval documents
(focus_jax.data.retrieval: "The locker code of Antonio is 48213." at random
depths of the memory, a question restating it at the end, one digit of the
number as the continuation target). Plays alone taught the memory to copy
long repeated spans (held-out repetition loss 1.28 against 3.77 without the
memory at step 200) but not to find a short key among many similar chunks
(passkey 0/6 at 2K-4K); the facts train exactly that, with wording disjoint
from the passkey evaluation.
"""
from configs import smollm2_135m


def get_config():
  c = smollm2_135m.get_config()
  c.min_len = 384
  c.max_len = 512
  c.local_window = 128
  c.chunk_sizes = (64, 128)
  c.fragment_max = 64
  c.span_min = 30
  c.target_tokens = 1
  c.bos_sees_memory = False         # not official: the local BOS (attention sink) does not see the memory
  c.batch_size = 2
  c.accum = 1
  c.lr = 1e-3
  c.warmup_steps = 20
  c.decay = "linear"
  c.end_lr_factor = 0.1
  c.retrieval_frac = 0.5
  c.steps = 600
  c.checkpoint_every = 50
  c.keep_checkpoints = 100
  c.focus = dict(chunk_size=128, min_focus_len=384)  # inference: S=128, Wl=128, F=64
  return c
