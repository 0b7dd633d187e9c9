"""GPU: ``auto`` among our kernels. On Hopper, without segment ids, it takes ``pallas_gpu_mosaic``
(pallas_gpu's Mosaic forward and fused Mosaic backward) for every pattern; below that row,
sink+window goes to ``split_gpu`` (Mosaic forward, cuDNN under autodiff). Where FlashAttention-4 is
installed ``auto`` takes it first (``test_gpu_fa4.py``); these tests take it out of the registry,
as a user keeping ``auto`` on our kernels does (``api.unregister_backend("fa4")``). The CPU side of
the choice is ``tests/test_auto_hopper.py``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import api
from pallas_kernels.backends import registry
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

pytestmark = pytest.mark.gpu
SPEC = AttentionSpec.sink_window(64, 1024)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _without(*names):
  rows = [r for r in registry.BACKENDS if r["name"] in names]
  for name in names:
    api.unregister_backend(name)
  try:
    yield
  finally:
    for row in rows:
      api.register_backend(**row)


@pytest.fixture(name="ours_only")
def _ours_only():
  yield from _without("fa4")


@pytest.fixture(name="below_mosaic")
def _below_mosaic():
  yield from _without("fa4", "pallas_gpu_mosaic")


@pytest.mark.parametrize("spec", ["full", "sink_window:64:1024", "strided:4:4"])
def test_auto_on_hopper_is_pallas_gpu(ours_only, spec):  # pylint: disable=unused-argument
  """Without segment ids ``auto`` runs pallas_gpu's kernels: the same loss and gradients as
  ``backend="pallas_gpu"`` (dQ up to its reduce-add order), and close to the reference."""
  spec = AttentionSpec.parse(spec)
  if jax.devices()[0].compute_capability != "9.0":
    pytest.skip("Hopper only")
  ks = jax.random.split(jax.random.PRNGKey(1), 4)
  B, T, Hq, Hkv, D = 1, 4096 + 64, 8, 2, 128      # ragged: padded to the tiles
  q = jax.random.normal(ks[0], (B, T, Hq, D)).astype(jnp.bfloat16)
  k = jax.random.normal(ks[1], (B, T, Hkv, D)).astype(jnp.bfloat16)
  v = jax.random.normal(ks[2], (B, T, Hkv, D)).astype(jnp.bfloat16)
  w = jax.random.normal(ks[3], (B, T, Hq, D))
  shapes = api.AttentionShapes(B, T, T, Hq, Hkv, D, 0, 0, False)
  assert api.select_backend(spec, shapes, jnp.bfloat16) == "pallas_gpu_mosaic"
  assert api.select_backend(spec, shapes._replace(has_segment_ids=True),
                            jnp.bfloat16) != "pallas_gpu_mosaic"
  grad = lambda name: jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(  # noqa: E731
      api.attention(q, k, v, spec, backend=name).astype(jnp.float32) * w), argnums=(0, 1, 2)))
  got, want = grad("auto")(q, k, v), grad("pallas_gpu")(q, k, v)
  # The loss, dK and dV are bit for bit equal; the fused backward reduce-adds fp32 dQ tiles
  # across CTAs in whatever order they finish, so dQ differs by rounding run to run (measured on
  # an H100: <= 20 of 4.3M elements, 2.4e-4 max abs), checked far below the bf16 error.
  for a, b in zip((got[0], *got[1][1:]), (want[0], *want[1][1:])):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  assert _rel(got[1][0], want[1][0]) < 1e-4
  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
  with jax.default_matmul_precision("float32"):
    rg = jax.jit(jax.grad(lambda q, k, v: jnp.sum(reference_attention(
        f32(q), f32(k), f32(v), spec) * w), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(got[1], rg):
    assert _rel(a, b) < 2e-2


def test_auto_split_matches_parts_and_reference(below_mosaic):  # pylint: disable=unused-argument
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  B, T, Hq, Hkv, D = 1, 4096, 8, 2, 128
  q = jax.random.normal(ks[0], (B, T, Hq, D)).astype(jnp.bfloat16)
  k = jax.random.normal(ks[1], (B, T, Hkv, D)).astype(jnp.bfloat16)
  v = jax.random.normal(ks[2], (B, T, Hkv, D)).astype(jnp.bfloat16)
  w = jax.random.normal(ks[3], (B, T, Hq, D))
  shapes = api.AttentionShapes(B, T, T, Hq, Hkv, D, 0, 0, False)
  assert api.select_backend(SPEC, shapes, jnp.bfloat16) == "split_gpu"
  run = lambda name: jax.jit(lambda q, k, v: api.attention(q, k, v, SPEC, backend=name))  # noqa
  out = run("auto")(q, k, v)
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(run("pallas_gpu")(q, k, v), np.float32))
  grad = lambda name: jax.jit(jax.grad(lambda q, k, v: jnp.sum(  # noqa: E731
      api.attention(q, k, v, SPEC, backend=name).astype(jnp.float32) * w), argnums=(0, 1, 2)))
  g = grad("auto")(q, k, v)
  # cuDNN's backward is not bitwise deterministic run to run (measured: 2.4e-4 max abs on
  # values ~5e-2), so "the same kernel ran" is checked to well below the bf16-vs-fp32 error.
  for a, b in zip(g, grad("cudnn")(q, k, v)):
    assert _rel(a, b) < 2e-3
  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
  with jax.default_matmul_precision("float32"):
    ref = jax.jit(lambda q, k, v: reference_attention(f32(q), f32(k), f32(v), SPEC))(q, k, v)
    rg = jax.jit(jax.grad(lambda q, k, v: jnp.sum(reference_attention(
        f32(q), f32(k), f32(v), SPEC) * w), argnums=(0, 1, 2)))(q, k, v)
  assert _rel(out, ref) < 1e-2
  for a, b in zip(g, rg):
    assert _rel(a, b) < 2e-2
