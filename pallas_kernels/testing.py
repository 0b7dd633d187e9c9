"""Test helpers: compare any attention backend with the dense reference (outputs, lse, grads).

Used by tests/test_attention_*.py; any backend with the ``attention`` signature can be checked:

  case = Case(AttentionSpec.sink_window(4, 32, 16), T=77, Hkv=1, seg=True)
  got, want = run_against_reference(my_attention, case)
  assert_close(got, want, case.dtype)

Tolerances (``assert_close``): fp32 rtol 1e-5 / atol 1e-4 everywhere. bf16: flash kernels round P
and dS to bf16 before their matmuls while the reference runs in fp32 from the same bf16 inputs:
out / dQ / dK / dV rtol 3e-2 / atol 3e-2, the (fp32) lse 1e-3.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

F32, BF16 = jnp.float32, jnp.bfloat16


@dataclasses.dataclass(frozen=True)
class Case:
  """One attention problem (``Tk`` defaults to ``T``)."""
  spec: AttentionSpec
  T: int = 64
  Tk: int | None = None
  Hq: int = 4
  Hkv: int = 2
  D: int = 64
  B: int = 1
  q_off: int = 0
  kv_off: int = 0
  seg: bool = False
  dtype: Any = F32

  @property
  def kv_len(self) -> int:
    return self.T if self.Tk is None else self.Tk


def make_inputs(c: Case, seed: int = 0):
  """q, k, v, segment ids (sorted random documents, or None), output and lse cotangents.

  Drawn with numpy (no per-shape XLA compilations for the random draws).
  """
  rng = np.random.default_rng(seed)
  normal = lambda shape, dtype=F32: jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
  q = normal((c.B, c.T, c.Hq, c.D), c.dtype)
  k = normal((c.B, c.kv_len, c.Hkv, c.D), c.dtype)
  v = normal((c.B, c.kv_len, c.Hkv, c.D), c.dtype)
  d_out = normal(q.shape)
  d_lse = normal((c.B, c.Hq, c.T))
  seg = kv_seg = None
  if c.seg:   # packed documents; self-attention shares the ids, chunks draw their own
    seg = jnp.asarray(np.sort(rng.integers(0, 3, (c.B, c.T)), axis=1), jnp.int32)
    kv_seg = seg
    if (c.kv_len, c.kv_off) != (c.T, c.q_off):
      kv_seg = jnp.asarray(np.sort(rng.integers(0, 3, (c.B, c.kv_len)), axis=1), jnp.int32)
  return q, k, v, seg, kv_seg, d_out, d_lse


def run_against_reference(fn, c: Case, seed: int = 0):
  """``((out, lse, dq, dk, dv) of fn, the same of the reference)``, both under one jit.

  The loss is ``sum(out * d_out) + sum(lse * d_lse)`` (finite lse entries), so the lse cotangent
  is exercised too (ring attention differentiates through the lse merge).
  """
  q, k, v, seg, kv_seg, d_out, d_lse = make_inputs(c, seed)

  def results(attn):
    def loss(q, k, v):
      out, lse = attn(q, k, v, c.spec, segment_ids=seg, kv_segment_ids=kv_seg,
                      q_offset=c.q_off, kv_offset=c.kv_off, return_lse=True)
      l_term = jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * d_lse)
      return jnp.sum(out.astype(F32) * d_out) + l_term, (out, lse)
    (_, (out, lse)), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
    return (out, lse, *grads)

  return jax.jit(lambda q, k, v: (results(fn), results(reference_attention)))(q, k, v)


def assert_close(got, want, dtype, label: str = "") -> None:
  """Checks (out, lse, dq, dk, dv) against the reference: no NaN, same -inf lse rows, tolerances."""
  for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
    g, w = np.asarray(g).astype(np.float32), np.asarray(w).astype(np.float32)
    assert g.shape == w.shape, f"{label} {name}: shape {g.shape} != {w.shape}"
    assert not np.isnan(g).any(), f"{label} {name} has NaN"
    if name == "lse":
      np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w), err_msg=f"{label} lse -inf")
      g, w = np.where(np.isinf(w), 0, g), np.where(np.isinf(w), 0, w)
      atol = 1e-4 if dtype == F32 else 1e-3
    else:
      atol = 1e-4 if dtype == F32 else 3e-2
    rtol = 1e-5 if dtype == F32 else 3e-2
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"{label} {name}")
