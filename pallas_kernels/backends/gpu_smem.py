"""Shared-memory sizing of the ``pallas_gpu`` (Triton) kernels: tiles that fit the GPU.

Triton stages the K/V tiles of the forward (and the Q/dO or K/V tiles of the backward kernels) in
shared memory, ``num_stages`` deep. The defaults are tuned for bf16 at head dim 128; fp32 doubles
every tile, and the forward then asks for 3 stages x (K + V) x 128 x 128 x 4 bytes = 384 KB, more
than a Hopper SM has (227 KB per block), so the kernel fails to compile. :func:`fit_config` shrinks
a ``TritonConfig`` until every kernel's estimate fits: fewer pipeline stages first (down to 2),
then smaller KV tiles, then smaller query tiles (down to 16), then a single stage. The estimate
(bytes, per kernel, at the padded head dim ``d``):

  forward  itemsize x (num_stages x 2 x block_k x d  +  block_q x d)        K, V staged; Q tile
  dQ       itemsize x (num_stages x 2 x block_k x d  +  2 x block_q x d)    K, V staged; Q, dO
  dK/dV    itemsize x (num_stages x 2 x block_q x d  +  2 x block_k x d)    Q, dO staged; K, V

It reproduces the failing request (384 KB for the fp32 forward without the Q tile) and leaves the
tuned bf16 D=128 defaults unchanged on Hopper (224 KB forward). ``supports`` of the backend
refuses a call only when even the smallest tiles do not fit, so ``auto`` never picks a kernel that
cannot run.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

# Largest dynamic shared memory one thread block may opt into, by compute capability.
SMEM_BYTES = {"9.0": 232448, "10.0": 232448, "8.0": 166912, "8.7": 166912}
DEFAULT_SMEM_BYTES = 101376   # sm_75 / sm_86 / sm_89 and anything unknown
MIN_BLOCK = 16


def smem_limit(device=None) -> int:
  """Per-block shared memory of ``device`` (default: the first device; non-GPU: Hopper's)."""
  device = device or jax.devices()[0]
  if device.platform != "gpu":
    return SMEM_BYTES["9.0"]
  cc = getattr(device, "compute_capability", None)
  return SMEM_BYTES.get(str(cc), DEFAULT_SMEM_BYTES)


def smem_estimate(cfg, head_dim: int, dtype) -> dict[str, int]:
  """Estimated shared-memory bytes of the forward, dQ and dK/dV kernels of ``cfg``."""
  b, d = np.dtype(dtype).itemsize, int(head_dim)
  return {
      "forward": b * (cfg.num_stages * 2 * cfg.block_k * d + cfg.block_q * d),
      "dq": b * (cfg.num_stages_dq * 2 * cfg.block_k_dq * d + 2 * cfg.block_q_dq * d),
      "dkv": b * (cfg.num_stages_dkv * 2 * cfg.block_q_dkv * d + 2 * cfg.block_k_dkv * d),
  }


# Per kernel: (stages field, staged block field, other block field).
_KERNELS = {"forward": ("num_stages", "block_k", "block_q"),
            "dq": ("num_stages_dq", "block_k_dq", "block_q_dq"),
            "dkv": ("num_stages_dkv", "block_q_dkv", "block_k_dkv")}


def _shrink_once(cfg, kernel: str):
  """One step down for ``kernel``, or None when it is at its smallest."""
  stages, staged, other = _KERNELS[kernel]
  if getattr(cfg, stages) > 2:
    return dataclasses.replace(cfg, **{stages: 2})
  for block in (staged, other):
    if getattr(cfg, block) > MIN_BLOCK:
      return dataclasses.replace(cfg, **{block: getattr(cfg, block) // 2})
  if getattr(cfg, stages) > 1:
    return dataclasses.replace(cfg, **{stages: 1})
  return None


def fit_config(cfg, head_dim: int, dtype, limit: int):
  """``cfg`` with each kernel's tiles shrunk until its estimate is <= ``limit`` bytes.

  Returns ``(config, None)``, or ``(None, reason)`` when even the smallest tiles do not fit.
  A config that already fits is returned unchanged.
  """
  for kernel in _KERNELS:
    while smem_estimate(cfg, head_dim, dtype)[kernel] > limit:
      smaller = _shrink_once(cfg, kernel)
      if smaller is None:
        need = smem_estimate(cfg, head_dim, dtype)[kernel]
        return None, (f"head_dim {head_dim} in {np.dtype(dtype).name}: the {kernel} kernel needs "
                      f"{need // 1024} KB of shared memory even with {MIN_BLOCK}-wide tiles "
                      f"(limit {limit // 1024} KB)")
      cfg = smaller
  return cfg, None
