"""``pallas_gpu`` tile sizing for the shared memory (CPU; no GPU needed).

fp32 inputs at head dim 128 made the forward ask for 384 KB of shared memory (227 KB on Hopper)
and ``auto`` still picked it. Checks: the estimate reproduces that request, ``fit_config`` shrinks
it under the limit and leaves the tuned bf16 tiles alone, ``supports`` refuses only what cannot
fit, ``auto`` on a (pretend) GPU picks ``pallas_gpu`` for fp32 D=128 and the backend runs it with
the shrunk tiles, and those tiles compute the right thing (Pallas interpret mode vs the reference).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import api
from pallas_kernels.backends import gpu_smem
from pallas_kernels.backends import pallas_gpu as gpu_triton
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

HOPPER = gpu_smem.SMEM_BYTES["9.0"]
DEFAULT = gpu_triton.DEFAULT_CONFIG


def test_estimate_reproduces_the_fp32_failure_and_fit_shrinks_it():
  est = gpu_smem.smem_estimate(DEFAULT, 128, jnp.float32)
  assert est["forward"] - 128 * 128 * 4 == 384 * 1024      # the request the compiler refused
  cfg, why = gpu_smem.fit_config(DEFAULT, 128, jnp.float32, HOPPER)
  assert why is None and cfg != DEFAULT
  assert all(v <= HOPPER for v in gpu_smem.smem_estimate(cfg, 128, jnp.float32).values())
  assert cfg.block_q == DEFAULT.block_q and cfg.block_k < DEFAULT.block_k   # KV tiles first
  # The tuned bf16 tiles fit as they are; an A100 (164 KB) gets fewer stages.
  assert gpu_smem.fit_config(DEFAULT, 128, jnp.bfloat16, HOPPER) == (DEFAULT, None)
  a100, _ = gpu_smem.fit_config(DEFAULT, 128, jnp.bfloat16, gpu_smem.SMEM_BYTES["8.0"])
  assert a100.num_stages == 2 and a100.block_k == DEFAULT.block_k


def test_supports_refuses_only_what_cannot_fit():
  shapes = api.AttentionShapes(1, 4096, 4096, 8, 8, 128, 0, 0, False)
  spec = AttentionSpec.sink_window(64, 1024)
  assert gpu_triton.supports("gpu", spec, shapes, jnp.float32, smem_limit=HOPPER) is None
  why = gpu_triton.supports("gpu", spec, shapes, jnp.float32, smem_limit=16 * 1024)
  assert why and "shared memory" in why and "head_dim 128" in why


@pytest.mark.parametrize("spec", ["sink_window:64:1024", "strided:4:4"])
def test_auto_on_a_gpu_picks_a_kernel_that_fits_for_fp32_d128(monkeypatch, spec):
  """split_gpu and cudnn refuse fp32; auto must land on pallas_gpu, whose tiles then fit."""
  spec = AttentionSpec.parse(spec)
  shapes = api.AttentionShapes(1, 4096, 4096, 8, 8, 128, 0, 0, False)
  monkeypatch.setattr(gpu_smem, "smem_limit", lambda device=None: HOPPER)
  assert api.select_backend(spec, shapes, jnp.float32, platform="gpu") == "pallas_gpu"


def _loss_and_grads(fn, w):
  def loss(q, k, v):
    out, lse = fn(q, k, v)
    return jnp.sum(out * w) + 0.3 * jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0)), out
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("spec", [AttentionSpec.sink_window(16, 64, 16),
                                  AttentionSpec.strided(2, 2, 32)])
def test_shrunk_fp32_tiles_match_the_reference(spec):
  """The fitted fp32 D=128 config (KV tiles narrower than query tiles) in interpret mode."""
  cfg, _ = gpu_smem.fit_config(DEFAULT, 128, jnp.float32, HOPPER)
  assert (cfg.block_q, cfg.block_k) == (128, 64)
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v, w = (jax.random.normal(kk, (1, 128, 2, 128), jnp.float32) for kk in ks)
  ours = functools.partial(gpu_triton.attention, spec=spec, return_lse=True, config=cfg,
                           interpret=True)
  ref = functools.partial(reference_attention, spec=spec, return_lse=True)
  (_, out), grads = _loss_and_grads(ours, w)(q, k, v)
  (_, rout), rgrads = _loss_and_grads(ref, w)(q, k, v)
  np.testing.assert_allclose(out, rout, atol=2e-5)
  for a, b in zip(grads, rgrads):
    np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.max(jnp.abs(b))))

