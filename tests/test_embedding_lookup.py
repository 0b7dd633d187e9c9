"""The embedding lookup's gradient is summed in fp32 (longgen_jax/model/layers.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longgen_jax.model.config import ModelConfig
from longgen_jax.model.layers import embed_tokens, embedding_lookup

V, D = 264, 64


def _tokens(hot_share: float) -> jax.Array:
  rng = np.random.default_rng(0)
  toks = rng.integers(0, V, (8, 512))
  toks[rng.random(toks.shape) < hot_share] = 32     # one very frequent byte, as spaces in code
  return jnp.asarray(toks, jnp.int32)


def _grad(lookup, table, toks):
  w = jax.random.normal(jax.random.PRNGKey(1), toks.shape + (D,), jnp.bfloat16)
  return jax.jit(jax.grad(lambda t: jnp.sum((lookup(t, toks) * w).astype(jnp.float32))))(table)


@pytest.mark.parametrize("hot_share", [0.0, 0.3])
def test_bf16_embedding_gradient_matches_fp32_sum(hot_share):
  cfg = ModelConfig(vocab_size=V, d_model=D, n_layers=1, n_heads=1, n_kv_heads=1, ffn_dim=64,
                    dtype="bfloat16")
  table = jax.random.normal(jax.random.PRNGKey(0), (V, D), jnp.float32)
  toks = _tokens(hot_share)
  ref = _grad(lambda t, x: jnp.take(t, x, axis=0), table, toks)   # fp32 gather and sum
  got = _grad(lambda t, x: embed_tokens(cfg, t, x), table, toks)
  assert got.dtype == jnp.float32
  err = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
  assert err < 5e-3, err     # bf16 rounding of the summed rows only
  # The forward is the plain lookup.
  np.testing.assert_array_equal(np.asarray(embed_tokens(cfg, table, toks), np.float32),
                                np.asarray(table.astype(jnp.bfloat16)[toks], np.float32))


def test_fp32_table_gradient_is_exact():
  table = jax.random.normal(jax.random.PRNGKey(0), (V, D), jnp.float32)
  toks = _tokens(0.3)
  ref = _grad(lambda t, x: jnp.take(t, x, axis=0), table, toks)
  got = _grad(embedding_lookup, table, toks)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-4)
