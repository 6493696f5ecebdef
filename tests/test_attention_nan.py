"""A NaN score must come out of the attention as NaN, not as a silent zero row; a row with
no visible key stays exactly zero (dense and blockwise paths)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.model.attention import attention

attn = jax.jit(attention, static_argnames=("selfextend", "block_q", "block_k", "dense_max"))


@pytest.mark.parametrize("blocks", [None, (4, 8)], ids=["dense", "blockwise"])
@pytest.mark.parametrize("selfextend", [None, (2, 4)])
def test_nan_row_stays_nan_and_masked_row_stays_zero(blocks, selfextend):
  t, h, kvh, hd = 16, 4, 2, 8
  rng = np.random.default_rng(0)
  q = rng.normal(size=(1, t, h, hd)).astype(np.float32)
  k = rng.normal(size=(1, t, kvh, hd)).astype(np.float32)
  v = rng.normal(size=(1, t, kvh, hd)).astype(np.float32)
  q[0, 9, 2] = np.nan                        # one query (row 9, head 2) is NaN
  pos = np.arange(t)[None]
  q_order = pos.copy()
  q_order[0, 5] = -1                          # row 5 sees no key (keys have order >= 0)
  inv = 1.0 / 10000 ** (np.arange(0, hd, 2) / hd)
  kw = {} if blocks is None else dict(block_q=blocks[0], block_k=blocks[1], dense_max=0)
  out = np.asarray(attn(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(pos),
                        jnp.asarray(pos), jnp.asarray(q_order), jnp.asarray(pos),
                        jnp.ones((1, t), bool), jnp.asarray(inv, jnp.float32),
                        selfextend=selfextend, **kw))
  assert np.isnan(out[0, 9, 2]).all()
  assert (out[0, 5] == 0).all()               # exact zeros, not NaN
  others = np.ones(out.shape, bool)
  others[0, 9, 2] = False
  others[0, 5] = False
  assert np.isfinite(out[others]).all()
  # Row 0 sees only key 0: its output is exactly that key's value (GQA head -> KV head).
  np.testing.assert_allclose(out[0, 0], np.repeat(v[0, 0], h // kvh, axis=0), rtol=1e-6)
