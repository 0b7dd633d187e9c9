"""Pallas TPU kernels in TPU interpret mode on CPU (forward, dQ, dK/dV, lse) vs the reference.

Interpret mode runs the kernel bodies, grids, index maps and scalar prefetch on CPU (both
``interpret=True`` and the ``pltpu.InterpretParams`` simulator, which fills uninitialised memory
with NaN and raises on out-of-bounds reads). Small tiles (8-32) keep the grids short; on a TPU
the default tiles are ``max(spec.block, 128)``. A last test lowers all three kernels to Mosaic for
a TPU target (jax.export, no TPU needed); Mosaic's own compilation needs a TPU and is not run.
Tolerances: see pallas_kernels.testing.assert_close.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.backends import pallas_tpu as tpu_lib
from pallas_kernels.backends._frame import make_problem
from pallas_kernels.block_tables import block_tables
from pallas_kernels.spec import AttentionSpec
from pallas_kernels.testing import BF16, Case, assert_close, run_against_reference

S = AttentionSpec
SIM = pltpu.InterpretParams()

# (case, (block_q, block_k), interpret, max_steps)
CASES = [
    (Case(S.sink_window(5, 32, 16), T=77, Hkv=1, B=2, seg=True), (16, 16), True, 1 << 14),
    (Case(S.strided(2, 3, 16), T=40, Tk=70, q_off=30, D=128), (8, 32), True, 12),  # split calls
    (Case(S.sink_window(4, 16, 16), T=40, Tk=32, kv_off=20, seg=True), (16, 16), SIM, 1 << 14),
    (Case(S.full(16), Hq=4, Hkv=1, D=128, seg=True, dtype=BF16), (32, 16), True, 1 << 14),
]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_matches_reference_in_interpret_mode(i):
  c, (bq, bk), interpret, max_steps = CASES[i]
  fn = lambda *a, **kw: tpu_lib.tpu_attention(*a, **kw, block_q=bq, block_k=bk,
                                              interpret=interpret, max_steps=max_steps)
  got, want = run_against_reference(fn, c)
  assert_close(got, want, c.dtype, label=f"case {i} {c.spec}")
  out, lse, dq = (np.asarray(x).astype(np.float32) for x in got[:3])
  empty = np.isneginf(lse).transpose(0, 2, 1)          # [B, T, Hq]: rows that see nothing
  assert empty.any() or c.kv_off <= c.q_off
  assert not (out[empty] != 0).any() and not (dq[empty] != 0).any()


@pytest.mark.parametrize("transposed", [False, True])
def test_schedule_flags_and_chunks(transposed):
  spec = S.sink_window(8, 32, 16)
  q = jnp.zeros((1, 100, 2, 16))
  k = jnp.zeros((1, 90, 2, 16))
  prob = make_problem(spec, q, k, q_offset=40, kv_offset=0, scale=None, block_q=16, block_k=8,
                      options={"interpret": tpu_lib._Hashable(True), "max_steps": 9})
  bt = block_tables(spec, 100, 90, block_q=16, block_k=8, q_offset=40)
  cnt, idx, part = ((bt.bwd_cnt, bt.bwd_idx, bt.bwd_partial) if transposed else
                    (bt.fwd_cnt, bt.fwd_idx, bt.fwd_partial))
  chunks = tpu_lib._schedule(prob, transposed)
  assert chunks[0].row0 == 0 and chunks[-1].row1 == len(cnt)
  for a, b in zip(chunks[:-1], chunks[1:]):
    assert a.row1 == b.row0
  for ch in chunks:
    assert len(ch.rows) <= 9 or ch.row1 - ch.row0 == 1
    rows, codes = ch.rows, ch.codes
    other, flags = codes >> 4, codes & 15
    for r in range(ch.row0, ch.row1):
      sel = rows == r
      f, o = flags[sel], other[sel]
      assert len(f) == max(cnt[r], 1)
      assert f[0] & tpu_lib._FIRST and f[-1] & tpu_lib._LAST
      assert not (f[1:] & tpu_lib._FIRST).any() and not (f[:-1] & tpu_lib._LAST).any()
      computed = (f & tpu_lib._COMPUTE) != 0
      assert computed.sum() == cnt[r]
      np.testing.assert_array_equal(o[computed], idx[r, :cnt[r]])
      np.testing.assert_array_equal((f[computed] & tpu_lib._PARTIAL) != 0, part[r, :cnt[r]])


def test_kernels_lower_to_mosaic_for_tpu():
  """Forward, dQ and dK/dV kernels lower (jaxpr -> Mosaic MLIR) with TPU-sized tiles."""
  spec = S.strided(2, 3, 128)
  B, T, hkv, g, d = 1, 300, 2, 2, 128
  qs = jax.ShapeDtypeStruct((B, T, hkv * g, d), BF16)
  ks = jax.ShapeDtypeStruct((B, T, hkv, d), BF16)
  seg = jax.ShapeDtypeStruct((B, T), jnp.int32)

  def grads(q, k, v, s):
    def loss(q, k, v):
      out, lse = tpu_lib.tpu_attention(q, k, v, spec, segment_ids=s, return_lse=True)
      return out.astype(jnp.float32).sum() + jnp.where(jnp.isfinite(lse), lse, 0).sum()
    return jax.grad(loss, (0, 1, 2))(q, k, v)

  exported = export.export(jax.jit(grads), platforms=["tpu"])(qs, ks, ks, seg)
  assert exported.mlir_module().count("tpu_custom_call") == 3
