"""The Mosaic GPU backward's tile algorithm, replayed in numpy on CPU.

The kernels of ``pallas_kernels/backends/pallas_gpu_mosaic_bwd.py`` themselves run on CPU in
``tests/test_mosaic_interpret.py`` (Mosaic GPU interpret mode, seconds per call). This replays
their loops in numpy, fast enough for more patterns (chunked) and GQA groups: the same block
tables in the same orientation (``.bwd`` for dK/dV with (block_q, 2 * block_kv) tiles, ``.fwd``
for dQ with (2 * block_q, block_kv)), two warpgroups per CTA, full entries unmasked and partial ones through
``spec.allowed``, base-2 lse with ``+inf`` on rows that see nothing, and the scale applied at the
end. It is checked against the dense reference gradients. A change to the kernels' tables,
masks or formulas must be mirrored here. Numerics on the hardware are checked on the GPU
(``tests/gpu/test_gpu_pallas_gpu.py -k mosaic_bwd``).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.backends.gpu_tables import kernel_tables
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

BQ, BKV = 16, 16


def _stats(q, k, v, do, spec):
  """out, base-2 lse (+inf where a row sees nothing) and delta, as pallas_gpu._bwd passes them."""
  out, lse = reference_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), spec,
                                 return_lse=True)
  out, lse = np.asarray(out, np.float64), np.asarray(lse, np.float64)
  lse2 = np.where(np.isfinite(lse), lse / math.log(2), np.inf)
  delta = np.einsum("bthd,bthd->bht", do, out)
  return lse2, np.where(np.isfinite(lse), delta, 0.0)


def _tile(qt, kt, vt, dot, lse2, dl, qpos, kpos, spec, c, masked):
  """One (query tile, key tile): p, dS (both [q, k]) as the kernels compute them."""
  p = np.exp2(qt @ kt.T * c - lse2[:, None])
  if masked:
    p = np.where(spec.allowed(qpos[:, None], kpos[None, :]), p, 0.0)
  ds = p * (dot @ vt.T - dl[:, None])
  return p, ds


def _replay(q, k, v, do, spec):
  B, T, hq, d = q.shape
  g = hq // k.shape[2]
  sc = d ** -0.5
  c = sc * math.log2(math.e)
  lse2, delta = _stats(q, k, v, do, spec)
  dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
  bwd = kernel_tables(spec, T, T, BQ, 2 * BKV).bwd
  fwd = kernel_tables(spec, T, T, 2 * BQ, BKV).fwd
  for b in range(B):
    for h in range(hq):
      kh = h // g
      for row in range(T // (2 * BKV)):            # dK/dV CTAs
        n_full, n_tot = bwd[row, 0], bwd[row, 1]
        for wg in range(2):
          ks = slice(row * 2 * BKV + wg * BKV, row * 2 * BKV + (wg + 1) * BKV)
          kpos = np.arange(ks.start, ks.stop)
          for e in range(n_tot):
            qb = bwd[row, e + 2]
            qs = slice(qb * BQ, (qb + 1) * BQ)
            p, ds = _tile(q[b, qs, h], k[b, ks, kh], v[b, ks, kh], do[b, qs, h], lse2[b, h, qs],
                          delta[b, h, qs], np.arange(qs.start, qs.stop), kpos, spec, c,
                          e >= n_full)
            dv[b, ks, kh] += p.T @ do[b, qs, h]
            dk[b, ks, kh] += sc * ds.T @ q[b, qs, h]
      for row in range(T // (2 * BQ)):               # dQ CTAs
        n_full, n_tot = fwd[row, 0], fwd[row, 1]
        for wg in range(2):
          qs = slice(row * 2 * BQ + wg * BQ, row * 2 * BQ + (wg + 1) * BQ)
          for e in range(n_tot):
            kb = fwd[row, e + 2]
            ks = slice(kb * BKV, (kb + 1) * BKV)
            _, ds = _tile(q[b, qs, h], k[b, ks, kh], v[b, ks, kh], do[b, qs, h], lse2[b, h, qs],
                          delta[b, h, qs], np.arange(qs.start, qs.stop),
                          np.arange(ks.start, ks.stop), spec, c, e >= n_full)
            dq[b, qs, h] += sc * ds @ k[b, ks, kh]
  return dq, dk, dv


@pytest.mark.parametrize("spec", ["sink_window:8:48@16", "strided:2:3@16", "full@16",
                                  "chunked:48@16"])
@pytest.mark.parametrize("hkv", [4, 2])
def test_tile_replay_matches_dense_gradients(spec, hkv):
  spec = AttentionSpec.parse(spec)
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  T, hq, d = 128, 4, 16
  q, k, v, do = (np.asarray(jax.random.normal(kk, shape), np.float64) for kk, shape in zip(
      ks, [(1, T, hq, d), (1, T, hkv, d), (1, T, hkv, d), (1, T, hq, d)]))
  _, vjp = jax.vjp(lambda q, k, v: reference_attention(q, k, v, spec), *(
      jnp.asarray(x, jnp.float32) for x in (q, k, v)))
  want = vjp(jnp.asarray(do, jnp.float32))
  got = _replay(q, k, v, do, spec)
  for name, a, b in zip("qkv", got, want):
    b = np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4, name
