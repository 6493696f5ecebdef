"""SelfExtend against a naive O(L^2) reference written here.

The reference builds, for every (query i, key j), explicit position matrices
(ordinary positions where q_pos - k_pos < W, grouped ones beyond, with the
paper's shift s = W once the largest query position reaches W, else 0),
rotates q and k per pair, and runs one softmax. It is float64 numpy; only the
RoPE angle is rounded to float32 like every implementation (HF included).
"""
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functools

from flax import nnx

from focus_jax.generation import decode as gen_lib
from focus_jax.config import ModelConfig, SelfExtendConfig
from focus_jax.eval import passkey
from focus_jax.eval.passkey import make_passkey_prompt
from focus_jax.model import AttnOptions, LlamaForCausalLM, init_cache
from focus_jax.model.attention import attention as _attention
from focus_jax.model.rope import inv_frequencies
from focus_jax.generation.modes import ModeSetup, generate
from focus_jax.selfextend import choose_group_size, resolve

THETA = 10000.0
CFG = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=32,
                  rope=ModelConfig.__dataclass_fields__["rope"].default, eos_token_ids=())


@functools.partial(jax.jit, static_argnames=("graphdef", "attn"))
def _call(graphdef, state, tokens, positions, valid, cache, attn):
  return nnx.merge(graphdef, state)(tokens, positions, valid=valid, cache=cache, attn=attn)


def forward(model, tokens, positions, *, valid=None, cache=None, selfextend=None, **blocks):
  """The model call, jitted, with SelfExtend and blocking as keyword arguments."""
  attn = AttnOptions(selfextend=selfextend, **blocks)
  return _call(*nnx.split(model), tokens, positions, valid, cache, attn)
attention = jax.jit(_attention, static_argnames=("selfextend", "block_q", "block_k",
                                                 "dense_max"))


# ---------------------------------------------------------------- reference

def np_rope(x, pos):
  """Split-half RoPE of x [..., hd] at integer positions pos [...] (float64 out)."""
  hd = x.shape[-1]
  inv = (1.0 / (THETA ** (np.arange(0, hd, 2).astype(np.float32) / hd))).astype(np.float32)
  ang = (np.asarray(pos).astype(np.float32)[..., None] * inv).astype(np.float64)
  ang = np.concatenate([ang, ang], -1)
  x = np.asarray(x, np.float64)
  rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
  return x * np.cos(ang) + rot * np.sin(ang)


def position_matrices(q_pos, k_pos, g, w, shift=None):
  """[T,S] query and key RoPE positions of every pair for one row."""
  s = (w if q_pos.max() >= w else 0) if shift is None else shift
  near = (q_pos[:, None] - k_pos[None, :]) < w
  pq = np.where(near, q_pos[:, None], q_pos[:, None] // g + s - s // g)
  pk = np.where(near, k_pos[None, :], np.broadcast_to(k_pos[None, :] // g, near.shape))
  return pq, pk


def reference_attention(q, k, v, q_pos, k_pos, mask, selfextend, shift=None):
  """q [B,T,H,hd], k/v [B,S,KV,hd], mask [B,T,S]; one softmax per query row."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, t, h, hd = q.shape
  s, kvh = k.shape[1], k.shape[2]
  out = np.zeros((b, t, h, hd))
  for r in range(b):
    if selfextend is None:
      pq = np.broadcast_to(q_pos[r][:, None], (t, s))
      pk = np.broadcast_to(k_pos[r][None, :], (t, s))
    else:
      pq, pk = position_matrices(q_pos[r], k_pos[r], *selfextend, shift=shift)
    qr = np_rope(np.broadcast_to(q[r][:, None], (t, s, h, hd)), pq[..., None])  # [T,S,H,hd]
    kr = np_rope(np.broadcast_to(k[r][None], (t, s, kvh, hd)), pk[..., None])  # [T,S,KV,hd]
    kr = np.repeat(kr, h // kvh, axis=2)
    logits = np.einsum("tshd,tshd->ths", qr, kr) / np.sqrt(hd)
    logits = np.where(mask[r][:, None, :], logits, -np.inf)
    mx = logits.max(-1, keepdims=True)
    p = np.exp(logits - np.where(np.isfinite(mx), mx, 0))
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
    out[r] = np.einsum("ths,shd->thd", p, np.repeat(v[r], h // kvh, axis=1))
  return out


def reference_model(model, tokens, q_pos, valid, selfextend):
  """The decoder in numpy over the same module state; logits [B,T,V]."""
  cfg = model.config
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(model)))
  lay, att, mlp = p["model"]["layers"], p["model"]["layers"]["self_attn"], p["model"]["layers"]["mlp"]

  def norm(x, w):
    return w * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.rms_norm_eps)

  b, t = tokens.shape
  mask = valid[:, None, :] & (q_pos[:, None, :] <= q_pos[:, :, None])
  w = lambda d, name: d[name]["kernel"]
  x = p["model"]["embed_tokens"]["embedding"][tokens]
  for li in range(cfg.num_layers):
    hN = norm(x, lay["input_layernorm"]["weight"][li])
    q = (hN @ w(att, "q_proj")[li]).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = (hN @ w(att, "k_proj")[li]).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = (hN @ w(att, "v_proj")[li]).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    a = reference_attention(q, k, v, q_pos, q_pos, mask, selfextend).reshape(b, t, -1)
    x = x + a @ w(att, "o_proj")[li]
    hN = norm(x, lay["post_attention_layernorm"]["weight"][li])
    gate = hN @ w(mlp, "gate_proj")[li]
    x = x + ((gate / (1 + np.exp(-gate))) * (hN @ w(mlp, "up_proj")[li])) @ w(mlp, "down_proj")[li]
  x = norm(x, p["model"]["norm"]["weight"])
  head = (p["model"]["embed_tokens"]["embedding"].T if cfg.tie_word_embeddings
          else p["lm_head"]["kernel"])
  return x @ head


def left_padded(lengths, total, seed=0):
  """Token ids [B,total] (pads at the left are 0), positions starting at 0, validity."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, CFG.vocab_size, (len(lengths), total)).astype(np.int32)
  valid = np.arange(total)[None, :] >= (total - np.asarray(lengths))[:, None]
  pos = np.maximum(np.cumsum(valid, 1) - 1, 0)
  return np.where(valid, ids, 0), pos, valid


@pytest.fixture(scope="module")
def model():
  return LlamaForCausalLM(CFG, nnx.Rngs(0), std=0.05)


# ---------------------------------------------------------------- attention alone

@pytest.mark.parametrize("t,g,w", [(9, 5, 12), (12, 5, 12), (40, 5, 12), (97, 5, 12),
                                   (61, 4, 8), (50, 3, 1), (70, 7, 64)])
@pytest.mark.parametrize("blocks", [None, (7, 13), (16, 32)])
def test_attention_equals_reference(t, g, w, blocks):
  rng = np.random.default_rng(t + g + w)
  h, kvh, hd = 4, 2, 16
  q = rng.normal(size=(2, t, h, hd)).astype(np.float32)
  k = rng.normal(size=(2, t, kvh, hd)).astype(np.float32)
  v = rng.normal(size=(2, t, kvh, hd)).astype(np.float32)
  _, pos, valid = left_padded([t, max(1, t - 5)], t)
  kw = {} if blocks is None else dict(block_q=blocks[0], block_k=blocks[1], dense_max=0)
  out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(pos),
                  jnp.asarray(pos), jnp.asarray(pos), jnp.asarray(pos), jnp.asarray(valid),
                  inv_frequencies(CFG), selfextend=(g, w), **kw)
  mask = valid[:, None, :] & (pos[:, None, :] <= pos[:, :, None])
  ref = reference_attention(q, k, v, pos, pos, mask, (g, w))
  real = valid[:, :, None, None]  # padded query rows are unspecified
  np.testing.assert_allclose(np.where(real, np.asarray(out), 0), np.where(real, ref, 0),
                             atol=1e-5, rtol=0)


@pytest.mark.parametrize("p", [5, 11, 12, 13, 40, 95])
def test_decode_query_equals_reference(p):
  """One query at position p over a cache of keys 0..p (plus free slots)."""
  g, w, s = 5, 12, 100
  rng = np.random.default_rng(p)
  q = rng.normal(size=(1, 1, 4, 16)).astype(np.float32)
  k = rng.normal(size=(1, s, 2, 16)).astype(np.float32)
  v = rng.normal(size=(1, s, 2, 16)).astype(np.float32)
  k_pos = np.arange(s)[None]
  k_valid = k_pos <= p
  q_pos = np.asarray([[p]])
  out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(q_pos),
                  jnp.asarray(k_pos), jnp.asarray(q_pos), jnp.asarray(k_pos),
                  jnp.asarray(k_valid), inv_frequencies(CFG), selfextend=(g, w))
  ref = reference_attention(q, k, v, q_pos, k_pos, k_valid[:, None, :], (g, w))
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("t", [1, 7, 12, 40])
def test_shift_only_matters_when_pairs_are_grouped(t):
  """The kernel always shifts grouped queries by s = W; the paper uses s = 0 while every
  query position is < W. Causally no pair is grouped then (t <= W), so the kernel equals
  the paper and ordinary attention; with grouped pairs (t = 40) the kernel follows s = W,
  which then differs from s = 0."""
  g, w = 5, 12
  rng = np.random.default_rng(t)
  q = rng.normal(size=(1, t, 4, 16)).astype(np.float32)
  k = rng.normal(size=(1, t, 2, 16)).astype(np.float32)
  v = rng.normal(size=(1, t, 2, 16)).astype(np.float32)
  pos = np.arange(t)[None]
  mask = pos[:, None, :] <= pos[:, :, None]
  args = [jnp.asarray(a) for a in (q, k, v, pos, pos, pos, pos, np.ones((1, t), bool))]
  kernel = np.asarray(attention(*args, inv_frequencies(CFG), selfextend=(g, w)))
  kernel_plain = np.asarray(attention(*args, inv_frequencies(CFG)))
  shift_w = reference_attention(q, k, v, pos, pos, mask, (g, w), shift=w)
  shift_0 = reference_attention(q, k, v, pos, pos, mask, (g, w), shift=0)
  np.testing.assert_allclose(kernel, shift_w, atol=1e-5, rtol=0)
  if t <= w:
    np.testing.assert_allclose(kernel, shift_0, atol=1e-5, rtol=0)
    np.testing.assert_allclose(kernel, kernel_plain, atol=1e-6, rtol=0)
    pq, _ = position_matrices(pos[0], pos[0], g, w)
    assert np.all((pq == pos[0][:, None]) | ~mask[0])  # every visible pair is a neighbour
  else:
    assert np.abs(kernel - shift_0).max() > 1e-2
    assert np.abs(kernel - kernel_plain).max() > 1e-2


# ---------------------------------------------------------------- full model

@pytest.mark.parametrize("t,g,w", [(10, 5, 12), (45, 5, 12), (90, 3, 8), (64, 2, 16)])
def test_model_forward_equals_reference(model, t, g, w):
  ids, pos, valid = left_padded([t, t - 6], t, seed=t)
  ref = reference_model(model, ids, pos, valid, (g, w))
  for kw in ({}, dict(block_q=8, block_k=16, dense_max=0)):
    out = forward(model, jnp.asarray(ids), jnp.asarray(pos), valid=jnp.asarray(valid),
                  selfextend=(g, w), **kw).logits
    np.testing.assert_allclose(np.where(valid[..., None], np.asarray(out), 0),
                               np.where(valid[..., None], ref, 0), atol=1e-5, rtol=0)


def test_blockwise_equals_dense(model):
  ids, pos, valid = left_padded([150, 133], 150, seed=7)
  args = (model, jnp.asarray(ids), jnp.asarray(pos))
  dense = forward(*args, valid=jnp.asarray(valid), selfextend=(6, 20)).logits
  block = forward(*args, valid=jnp.asarray(valid), selfextend=(6, 20), block_q=16,
                  block_k=24, dense_max=0).logits
  np.testing.assert_allclose(np.asarray(block), np.asarray(dense), atol=1e-5, rtol=0)


def test_equals_plain_model_below_window(model):
  ids, pos, valid = left_padded([30, 24], 30, seed=3)
  args = (model, jnp.asarray(ids), jnp.asarray(pos))
  plain = forward(*args, valid=jnp.asarray(valid)).logits
  for kw in ({}, dict(block_q=8, block_k=8, dense_max=0)):
    se = forward(*args, valid=jnp.asarray(valid), selfextend=(4, 31), **kw).logits
    np.testing.assert_allclose(np.asarray(se), np.asarray(plain), atol=1e-6, rtol=0)


def test_group_size_one_equals_plain_model(model):
  ids, pos, valid = left_padded([80], 80, seed=4)
  args = (model, jnp.asarray(ids), jnp.asarray(pos))
  plain = forward(*args).logits
  se = forward(*args, selfextend=(1, 10)).logits
  np.testing.assert_allclose(np.asarray(se), np.asarray(plain), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- decoding

def test_cached_decode_equals_recomputation(model):
  g, w, t, split = 5, 12, 70, 9  # the prompt is inside W, decoding crosses it
  ids, pos, _ = left_padded([t], t, seed=5)
  full = forward(model, jnp.asarray(ids), jnp.asarray(pos), selfextend=(g, w)).logits
  out = forward(model, jnp.asarray(ids[:, :split]), jnp.asarray(pos[:, :split]),
                cache=init_cache(CFG, 1, 80), selfextend=(g, w))
  cache, rows = out.cache, [out.logits]
  for i in range(split, t):
    out = forward(model, jnp.asarray(ids[:, i:i + 1]), jnp.asarray(pos[:, i:i + 1]),
                  cache=cache, selfextend=(g, w))
    cache = out.cache
    rows.append(out.logits)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(rows, 1)), np.asarray(full),
                             atol=1e-5, rtol=0)


def test_left_padded_batch_decode_equals_rows_alone(model):
  """The decode.prefill / decode_step path: pads marked by valid, rows start at position 0."""
  g, w, steps = 3, 8, 6
  lengths, total = [41, 17], 48
  rng = np.random.default_rng(6)
  prompts = [rng.integers(0, CFG.vocab_size, n).astype(np.int32) for n in lengths]
  nxt = rng.integers(0, CFG.vocab_size, (2, steps)).astype(np.int32)  # forced next tokens
  batch = np.full((2, total), -1, np.int32)
  for r, p in enumerate(prompts):
    batch[r, total - p.size:] = p

  def run(tokens, forced):
    logits, cache, pos = gen_lib.prefill(*nnx.split(model), jnp.asarray(np.maximum(tokens, 0)),
                                         jnp.asarray(tokens >= 0), cache_size=64,
                                         attn=AttnOptions(selfextend=(g, w)))
    rows = [np.asarray(logits)]
    for i in range(steps):
      pos = pos + 1
      logits, cache = gen_lib.decode_step(*nnx.split(model), cache, jnp.asarray(forced[:, i]),
                                          pos, attn=AttnOptions(selfextend=(g, w)))
      rows.append(np.asarray(logits))
    return np.stack(rows, 1)  # [B, steps+1, V]

  together = run(batch, nxt)
  for r, p in enumerate(prompts):
    alone = run(p[None], nxt[r:r + 1])
    np.testing.assert_allclose(together[r], alone[0], atol=1e-5, rtol=0)
  # and the first row against the numpy reference model at its last prompt position
  ids, pos, valid = left_padded([lengths[0]], lengths[0])
  ref = reference_model(model, prompts[0][None], pos, valid, (g, w))
  np.testing.assert_allclose(together[0, 0], ref[0, -1], atol=1e-5, rtol=0)


def test_generate_selfextend_equals_naive_loop(model):
  prompt = np.asarray(jax.random.randint(jax.random.PRNGKey(8), (50,), 0, CFG.vocab_size))
  gen = generate(ModeSetup("selfextend", model, neighbor_window=12), prompt, 8)  # G chosen: 58
  g = choose_group_size(58, CFG.max_position_embeddings, 12)
  assert g == 3
  seq = list(prompt)
  for step in range(8):  # causal: a fixed-size buffer with trailing zeros needs one compilation
    buf = np.zeros((1, 58), np.int32)
    buf[0, :len(seq)] = seq
    logits = forward(model, jnp.asarray(buf), jnp.arange(58)[None],
                     selfextend=(g, 12)).logits[0, len(seq) - 1]
    np.testing.assert_allclose(gen.logits[step], np.asarray(logits), atol=1e-5)
    seq.append(int(jnp.argmax(logits)))
  assert gen.tokens.tolist() == seq[len(prompt):]


# ---------------------------------------------------------------- group size choice

@pytest.mark.parametrize("n,train,w,want", [(100, 200, 50, 1), (200, 200, 50, 1),
                                            (201, 200, 50, 2), (350, 200, 50, 2),
                                            (351, 200, 50, 3), (16384, 4096, 1024, 5),
                                            (65536, 8192, 1024, 9), (65537, 8192, 1024, 10)])
def test_choose_group_size(n, train, w, want):
  g = choose_group_size(n, train, w)
  assert g == want
  assert SelfExtendConfig(g, w).max_length(train) >= n
  assert g == 1 or SelfExtendConfig(g - 1, w).max_length(train) < n


def test_choose_group_size_warns_beyond_sensible_range(caplog):
  with caplog.at_level(logging.WARNING):
    assert choose_group_size(10**6, 4096, 1024) == 326
  assert any("group size 326" in r.getMessage() for r in caplog.records)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    choose_group_size(16384, 4096, 1024)
  assert not caplog.records


def test_bad_settings_rejected():
  with pytest.raises(ValueError, match="neighbor_window"):
    choose_group_size(100, 64, 64)
  with pytest.raises(ValueError, match="neighbor_window"):
    resolve(CFG, 100, neighbor_window=40)
  with pytest.raises(ValueError, match="group_size"):
    resolve(CFG, 100, group_size=0, neighbor_window=8)


# ---------------------------------------------------------------- passkey prompt, launch mode

class WordTokenizer:
  """Words, single digits and punctuation, one id each: enough for the builder's arithmetic."""

  def __init__(self):
    self.vocab = {}

  def __call__(self, text):
    words = re.findall(r"[A-Za-z]+|\d|[^\w\s]", text)
    return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) for w in words]}

  def decode(self, ids, skip_special_tokens=True):
    inv = {i: w for w, i in self.vocab.items()}
    return "".join(inv[i] for i in ids)


@pytest.mark.parametrize("n,depth", [(300, 0.0), (1000, 0.5), (2000, 1.0), (777, None)])
def test_passkey_prompt(n, depth):
  tok = WordTokenizer()
  ids, answer = make_passkey_prompt(tok, n, depth=depth, seed=3)
  per = len(tok(passkey.FILLER)["input_ids"])
  assert n - per < ids.size <= n and ids.dtype == np.int32
  assert 1 <= int(answer) <= 50000
  text = tok.decode(ids.tolist())
  assert text.startswith(tok.decode(tok(passkey.TASK)["input_ids"]))
  assert text.endswith(tok.decode(tok(passkey.QUESTION)["input_ids"]))
  at = text.index(tok.decode(tok(passkey.key_line(int(answer)))["input_ids"]))
  if depth is not None:  # the share of filler sentences before the key line
    assert abs(text[:at].count("grass") / text.count("grass") - depth) < 0.05
  again, answer2 = make_passkey_prompt(tok, n, depth=depth, seed=3)
  assert answer2 == answer and np.array_equal(again, ids)
  assert passkey.answer_token_count(tok, answer) == len(answer)
  assert passkey.is_correct(tok, tok(answer)["input_ids"], answer)
  assert not passkey.is_correct(tok, tok(answer[:-1] + "x")["input_ids"], answer)


def test_passkey_prompt_too_short():
  with pytest.raises(ValueError, match="no room"):
    make_passkey_prompt(WordTokenizer(), 20)


def test_launch_generate_has_selfextend_mode():
  from launch.modes import MODES   # the --mode names of launch.generate
  assert "selfextend" in MODES
