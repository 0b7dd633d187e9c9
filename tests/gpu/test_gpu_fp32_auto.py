"""GPU: ``backend="auto"`` with fp32 inputs at head dim 128 picks a kernel that compiles and runs.

fp32 D=128 used to make ``pallas_gpu`` request 384 KB of shared memory (Hopper has 227 KB per
block); ``auto`` picked it anyway and the model crashed at compile time, for sink+window and
strided alike. Now the tiles are sized for the dtype (``pallas_kernels/backends/gpu_smem.py``). Forward,
lse and gradients are compared with the dense fp32 reference. Imports only ``pallas_kernels``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import api
from pallas_kernels.backends import gpu_smem
from pallas_kernels.backends import pallas_gpu as gpu_triton
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

pytestmark = pytest.mark.gpu


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("spec", ["sink_window:64:512", "strided:4:4"])
def test_fp32_head_dim_128_via_auto(spec):
  spec = AttentionSpec.parse(spec)
  B, T, Hq, Hkv, D = 1, 2048, 8, 2, 128
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(ks[0], (B, T, Hq, D), jnp.float32)
  k = jax.random.normal(ks[1], (B, T, Hkv, D), jnp.float32)
  v = jax.random.normal(ks[2], (B, T, Hkv, D), jnp.float32)
  w = jax.random.normal(ks[3], (B, T, Hq, D), jnp.float32)
  shapes = api.AttentionShapes(B, T, T, Hq, Hkv, D, 0, 0, False)
  chosen = api.select_backend(spec, shapes, jnp.float32)
  if chosen == "pallas_gpu":   # its tiles, sized for fp32, fit this GPU
    cfg, why = gpu_smem.fit_config(gpu_triton.DEFAULT_CONFIG, D, jnp.float32,
                                   gpu_smem.smem_limit())
    assert why is None and max(gpu_smem.smem_estimate(cfg, D, jnp.float32).values()) \
        <= gpu_smem.smem_limit()

  def loss(fn):
    def f(q, k, v):
      out, lse = fn(q, k, v)
      return jnp.sum(out * w) + 0.1 * jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0)), (out, lse)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

  ours = lambda q, k, v: api.attention(q, k, v, spec, backend="auto", return_lse=True)  # noqa: E731
  ref = lambda q, k, v: reference_attention(q, k, v, spec, return_lse=True)  # noqa: E731
  (_, (out, lse)), grads = loss(ours)(q, k, v)   # compiles and runs: the regression
  with jax.default_matmul_precision("float32"):
    (_, (rout, rlse)), rgrads = loss(ref)(q, k, v)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
  fin = np.isfinite(np.asarray(rlse))
  assert _rel(np.asarray(lse)[fin], np.asarray(rlse)[fin]) < 1e-3
  # TF32 MMAs inside the kernels: looser than fp32 arithmetic, far tighter than bf16 (1e-2).
  assert _rel(out, rout) < 5e-3, (chosen, _rel(out, rout))
  for name, a, b in zip("qkv", grads, rgrads):
    assert _rel(a, b) < 1e-2, (chosen, name, _rel(a, b))
