"""Sequence-parallel attention (ring, all-gather, halo) against the single-device reference.

Runs on 8 fake CPU devices in a child process (``parallel.testing.multidevice``). Every case
checks the output AND all three gradients (dq, dk, dv) with packed documents and GQA, because
ring code typically fails in the backward only (stale KV, per-chunk softmax statistics).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

from longgen_jax.parallel import halo as halo_lib
from longgen_jax.parallel import mesh as mesh_lib
from longgen_jax.parallel import reorder as reorder_lib
from longgen_jax.parallel import sequence
from longgen_jax.parallel.testing import multidevice

FULL = AttentionSpec.full(16)
SINK_WIN = AttentionSpec.sink_window(4, 32, 16)


def _inputs(T, B=2, Hq=4, Hkv=2, D=8, seed=0, dtype=jnp.float32):
  ks = jax.random.split(jax.random.PRNGKey(seed), 6)
  q = jax.random.normal(ks[0], (B, T, Hq, D), dtype)
  k = jax.random.normal(ks[1], (B, T, Hkv, D), dtype)
  v = jax.random.normal(ks[2], (B, T, Hkv, D), dtype)
  do = jax.random.normal(ks[3], (B, T, Hq, D), jnp.float32)
  dl = jax.random.normal(ks[4], (B, Hq, T), jnp.float32)
  rng = np.random.default_rng(seed)
  seg = np.ones((B, T), np.int32)
  for b in range(B):  # three packed documents per row, random boundaries, padding at the end
    cuts = np.sort(rng.choice(np.arange(1, T), 2, replace=False))
    seg[b] = 1 + np.searchsorted(cuts, np.arange(T), side="right")
  seg[-1, T - 5:] = 0
  return q, k, v, do, dl, jnp.asarray(seg)


def _compare(mesh_cfg, spec, layout, impl="ring", T=256, with_lse=False, dtype=jnp.float32,
             tol=2e-5, backend="reference"):
  mesh = mesh_lib.make_mesh(mesh_cfg)
  n = dict(mesh.shape)["sequence"]
  lay = reorder_lib.SeqLayout(layout, n, T)
  q, k, v, do, dl, seg = _inputs(T, dtype=dtype)

  def ref_loss(q, k, v):
    o, lse = reference_attention(q, k, v, spec, segment_ids=seg, return_lse=True)
    return jnp.sum(o.astype(jnp.float32) * do) + (jnp.sum(lse * dl) if with_lse else 0.0)

  def sp_loss(q, k, v, seg, do, dl):
    attention = sequence.sharded_attention(mesh, layout=layout, impl=impl)
    o, lse = attention(q, k, v, spec, segment_ids=seg, backend=backend, return_lse=True)
    return jnp.sum(o.astype(jnp.float32) * do) + (jnp.sum(lse * dl) if with_lse else 0.0)

  r = lambda x, axis=1: reorder_lib.reorder(x, lay, axis)
  l0, g0 = jax.value_and_grad(ref_loss, argnums=(0, 1, 2))(q, k, v)
  l1, g1 = jax.jit(jax.value_and_grad(sp_loss, argnums=(0, 1, 2)))(
      r(q), r(k), r(v), r(seg), r(do), r(dl, 2))
  g1 = [reorder_lib.restore(g, lay, 1) for g in g1]
  scale = float(jnp.abs(l0)) + 1.0
  assert abs(float(l0) - float(l1)) <= tol * scale, (float(l0), float(l1))
  for name, a, b in zip(("dq", "dk", "dv"), g0, g1):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    err = np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12)
    assert err <= tol, f"{name}: relative error {err:.2e}"


# --------------------------------------------------------------------------- full layers
@multidevice(8)
@pytest.mark.parametrize("mesh_cfg,layout,impl", [
    ("sequence=8", "zigzag", "ring"),
    ("sequence=8", "striped", "ring"),
    ("fsdp=2,sequence=4", "contiguous", "ring"),
    ("tensor=2,sequence=4", "zigzag", "allgather"),
    ("tensor=4,sequence=2", "zigzag", "ring"),      # 2 KV heads on 4-way tensor: replicated
])
def test_full_layer_matches_reference(mesh_cfg, layout, impl):
  _compare(mesh_cfg, FULL, layout, impl)


@multidevice(8)
def test_ring_lse_gradient_and_bf16():
  """The lse output is differentiable too; bf16 inputs stay close to the fp32 reference."""
  _compare("sequence=4,fsdp=2", FULL, "zigzag", "ring", with_lse=True)
  _compare("sequence=4,fsdp=2", FULL, "zigzag", "ring", dtype=jnp.bfloat16, tol=3e-2)


# --------------------------------------------------------------------------- sparse layers
@multidevice(8)
@pytest.mark.parametrize("mesh_cfg,spec,layout", [
    # window 32 > chunk 16: the halo spans two previous chunks on other shards
    ("sequence=8", SINK_WIN, "zigzag"),
    ("fsdp=2,sequence=4", AttentionSpec.sink_window(8, 32, 16), "contiguous"),
    ("fsdp=2,sequence=4", AttentionSpec.strided(2, 2, 16), "zigzag"),
    ("tensor=2,sequence=4", AttentionSpec.strided(1, 2, 16), "zigzag"),   # no halo at all
    # the fourth pattern (pallas_kernels/patterns/chunked.py): chunk 32 divides both the
    # contiguous (64) and the zigzag (16 x 16) shard chunks, so no halo is exchanged
    ("sequence=8", AttentionSpec.chunked(32, 16), "contiguous"),
    ("fsdp=2,sequence=4", AttentionSpec.chunked(16, 16), "zigzag"),
])
def test_sparse_layer_matches_reference(mesh_cfg, spec, layout):
  _compare(mesh_cfg, spec, layout, with_lse=True)


@multidevice(8)
def test_sparse_layer_errors_are_clear():
  mesh = mesh_lib.make_mesh("sequence=8")
  q, k, v, _, _, seg = _inputs(256)
  attention = sequence.sharded_attention(mesh, layout="striped")
  with pytest.raises(halo_lib.HaloError, match="striped"):
    jax.eval_shape(lambda: attention(q, k, v, SINK_WIN, segment_ids=seg))
  attention = sequence.sharded_attention(mesh, layout="zigzag")
  with pytest.raises(halo_lib.HaloError, match="sink 64 exceeds"):
    jax.eval_shape(lambda: attention(q, k, v, AttentionSpec.sink_window(64, 64, 16),
                                     segment_ids=seg))


@multidevice(8)
@pytest.mark.parametrize("spec", [FULL, SINK_WIN, AttentionSpec.strided(2, 2, 16)])
def test_blocked_xla_kernel_under_sequence_parallelism(spec):
  """The portable blocked kernel (what runs on CPU/TPU without Pallas) per chunk and offset."""
  _compare("fsdp=2,sequence=4", spec, "zigzag", backend="xla", with_lse=True)


# --------------------------------------------------------------------------- communication
def _collectives(fn, *args):
  """(primitive, operand shape, ppermute pairs) of every collective in ``fn``'s jaxpr."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ("ppermute", "all_gather", "psum", "all_to_all",
                                "reduce_scatter", "psum_scatter"):
        found.append((eqn.primitive.name, tuple(eqn.invars[0].aval.shape),
                      tuple(eqn.params.get("perm", ()))))
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (list, tuple)) else [p]):
          if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
            walk(sub.jaxpr)
          elif hasattr(sub, "eqns"):
            walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


@multidevice(8)
def test_halo_moves_only_window_tokens():
  """Sparse layers permute O(window) tokens (forward AND backward); full layers O(L / n)."""
  T, n, W, S = 16384, 4, 64, 16
  mesh = mesh_lib.make_mesh("sequence=4,fsdp=2")
  B, Hq, Hkv, D = 2, 4, 2, 8
  x = jax.ShapeDtypeStruct((B, T, Hq, D), jnp.float32)
  kv = jax.ShapeDtypeStruct((B, T, Hkv, D), jnp.float32)
  seg = jax.ShapeDtypeStruct((B, T), jnp.int32)

  def loss(spec):
    def f(q, k, v, s):
      attention = sequence.sharded_attention(mesh, layout="zigzag")
      return jnp.sum(attention(q, k, v, spec, segment_ids=s, backend="reference"))
    return jax.grad(f, argnums=(0, 1, 2))

  sparse = _collectives(loss(AttentionSpec.sink_window(S, W, 16)), x, kv, kv, seg)
  moved = [(s, perm) for name, s, perm in sparse if name == "ppermute"]
  gathered = [s for name, s, _ in sparse if name == "all_gather"]
  scattered = [s for name, s, _ in sparse if name == "reduce_scatter"]  # all_gather's transpose
  assert moved and gathered and scattered
  assert not [c for c in sparse if c[0] not in ("ppermute", "all_gather", "reduce_scatter")]
  # every halo transfer is [B/2, W, ...] (window tokens, nothing proportional to T) ...
  assert all(s[1] == W for s, _ in moved), moved
  assert all(s[1] == S for s in gathered) and all(s[2] == S for s in scattered)
  # ... and each device receives at most W K|V tokens per sub-chunk and direction:
  # 2 zigzag sub-chunks x (forward K|V + ids, backward dK|dV) = 6 W tokens.
  received = np.zeros(n)
  for s, perm in moved:
    for _, dst in perm:
      received[dst] += s[1]
  assert received.max() <= 6 * W, received

  full = _collectives(loss(FULL), x, kv, kv, seg)
  ring = [s for name, s, _ in full if name == "ppermute"]
  assert ring and all(s[1] == T // n for s in ring), ring


@multidevice(8)
def test_halo_hlo_collective_permutes_are_window_sized():
  """The lowered StableHLO has no collective_permute bigger than the window."""
  T, W = 16384, 64
  mesh = mesh_lib.make_mesh("sequence=8")
  q = jnp.zeros((1, T, 2, 8), jnp.float32)
  seg = jnp.ones((1, T), jnp.int32)

  def f(q, s):
    attention = sequence.sharded_attention(mesh, layout="zigzag")
    return attention(q, q, q, AttentionSpec.sink_window(4, W, 16), segment_ids=s,
                     backend="reference")

  text = jax.jit(f).lower(q, seg).as_text()
  shapes = re.findall(r"collective_permute.*?: \(tensor<([0-9x]+)x[a-z0-9]+>\)", text)
  assert shapes
  for s in shapes:
    dims = [int(d) for d in s.split("x")]
    assert dims[1] <= W, s
