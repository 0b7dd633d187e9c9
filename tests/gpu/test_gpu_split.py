"""GPU: ``auto`` among our kernels. On Hopper, without segment ids, it takes ``pallas_gpu_mosaic``
(pallas_gpu's Mosaic forward and fused Mosaic backward) for every pattern; below that row,
sink+window goes to ``split_gpu`` (Mosaic forward, cuDNN under autodiff). Where FlashAttention-4 is
installed ``auto`` takes it first (``test_gpu_fa4.py``); these tests take it out of the registry
(``api.backends_removed``), as a user keeping ``auto`` on our kernels does with
``api.unregister_backend("fa4")``. The CPU side of the choice is ``tests/test_auto_hopper.py``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import api
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

pytestmark = pytest.mark.gpu
SPEC = AttentionSpec.sink_window(64, 1024)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(name="ours_only")
def _ours_only():
  with api.backends_removed("fa4"):
    yield


@pytest.fixture(name="below_mosaic")
def _below_mosaic():
  with api.backends_removed("fa4", "pallas_gpu_mosaic"):
    yield


def _inputs(seed: int, T: int, Hq: int = 8, Hkv: int = 2, D: int = 128):
  """bf16 q, k, v [1, T, H, D] and an fp32 output weight w (the loss is sum(out * w))."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(ks[0], (1, T, Hq, D)).astype(jnp.bfloat16)
  k = jax.random.normal(ks[1], (1, T, Hkv, D)).astype(jnp.bfloat16)
  v = jax.random.normal(ks[2], (1, T, Hkv, D)).astype(jnp.bfloat16)
  return q, k, v, jax.random.normal(ks[3], (1, T, Hq, D))


def _reference(spec, q, k, v, w):
  """The fp32 dense reference: (out, (dq, dk, dv) of sum(out * w))."""
  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
  ref = lambda q, k, v: reference_attention(f32(q), f32(k), f32(v), spec)  # noqa: E731
  with jax.default_matmul_precision("float32"):
    out = jax.jit(ref)(q, k, v)
    grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(ref(q, k, v) * w), argnums=(0, 1, 2)))(
        q, k, v)
  return out, grads


@pytest.mark.parametrize("spec", ["full", "sink_window:64:1024", "strided:4:4"])
def test_auto_on_hopper_is_pallas_gpu(ours_only, spec):  # pylint: disable=unused-argument
  """Without segment ids ``auto`` runs pallas_gpu's kernels: the same loss and gradients as
  ``backend="pallas_gpu"`` (dQ up to its reduce-add order), and close to the reference."""
  spec = AttentionSpec.parse(spec)
  if jax.devices()[0].compute_capability != "9.0":
    pytest.skip("Hopper only")
  T = 4096 + 64      # ragged: padded to the tiles
  q, k, v, w = _inputs(1, T)
  shapes = api.AttentionShapes(1, T, T, 8, 2, 128, 0, 0, False)
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
  for a, b in zip(got[1], _reference(spec, q, k, v, w)[1]):
    assert _rel(a, b) < 2e-2


def test_auto_split_matches_parts_and_reference(below_mosaic):  # pylint: disable=unused-argument
  T = 4096
  q, k, v, w = _inputs(0, T)
  shapes = api.AttentionShapes(1, T, T, 8, 2, 128, 0, 0, False)
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
  ref, rg = _reference(SPEC, q, k, v, w)
  assert _rel(out, ref) < 1e-2
  for a, b in zip(g, rg):
    assert _rel(a, b) < 2e-2
