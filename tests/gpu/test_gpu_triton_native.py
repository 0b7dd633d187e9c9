"""triton_native backend (jax-triton) on a real GPU against the fp32 dense reference (bf16 inputs).

Run on the device machine with jax-triton installed:
``python -m pytest -q -m gpu tests/gpu/test_gpu_triton_native.py``.
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.backends import triton_native
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

_PROBE = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.bfloat16)
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(triton_native.why_unsupported(_PROBE, _PROBE, _PROBE, "full") is not None,
                       reason=str(triton_native.why_unsupported(_PROBE, _PROBE, _PROBE, "full"))),
]


def _qkv(seed, T=1024, Hq=4, Hkv=2, D=128, Tk=None):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  Tk = T if Tk is None else Tk
  mk = lambda key, t, h: jax.random.normal(key, (1, t, h, D), jnp.float32).astype(jnp.bfloat16)
  return mk(ks[0], T, Hq), mk(ks[1], Tk, Hkv), mk(ks[2], Tk, Hkv)


def _rel(a, b):
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


CASES = [
    dict(spec=AttentionSpec.sink_window(64, 256)),
    dict(spec=AttentionSpec.strided(2, 3)),
    dict(spec=AttentionSpec.full()),
    dict(spec=AttentionSpec.sink_window(100, 128, 64), T=1000, D=64),      # ragged, small head
    dict(spec=AttentionSpec.full(), T=512, Tk=384, q_offset=384, kv_offset=128),
    dict(spec=AttentionSpec.sink_window(64, 256), seg=True),
    # The fourth pattern: its Triton predicate is generated from patterns/chunked.py alone.
    dict(spec=AttentionSpec.chunked(256), T=1000),
    dict(spec=AttentionSpec.chunked(256), seg=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c["spec"]) + ("+seg" if c.get("seg")
                                                                        else ""))
def test_forward_lse_and_grads(case):
  spec = case["spec"]
  q, k, v = _qkv(0, T=case.get("T", 1024), D=case.get("D", 128), Tk=case.get("Tk"))
  kw = dict(q_offset=case.get("q_offset", 0), kv_offset=case.get("kv_offset", 0))
  if case.get("seg"):
    seg = (jnp.arange(q.shape[1]) >= 300).astype(jnp.int32)[None] + 1
    kw["segment_ids"] = seg
  out, lse = triton_native.native_attention(q, k, v, spec, return_lse=True, **kw)
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  ref, ref_lse = reference_attention(*f32, spec, return_lse=True, **kw)
  assert _rel(out, ref) < 1e-2
  fin = jnp.isfinite(ref_lse)
  assert bool(jnp.all(jnp.isfinite(lse) == fin))
  assert float(jnp.max(jnp.abs(jnp.where(fin, lse - ref_lse, 0.0)))) < 5e-2

  w_o = jax.random.normal(jax.random.PRNGKey(1), q.shape, jnp.float32)
  w_l = jax.random.normal(jax.random.PRNGKey(2), lse.shape, jnp.float32)

  def loss(fn, q, k, v):
    o, l = fn(q, k, v, return_lse=True, **kw)
    return jnp.sum(o.astype(jnp.float32) * w_o) + jnp.sum(jnp.where(fin, l, 0.0) * w_l)

  g = jax.grad(functools.partial(loss, functools.partial(triton_native.native_attention, spec=spec)),
               argnums=(0, 1, 2))(q, k, v)
  g_ref = jax.grad(functools.partial(loss, functools.partial(reference_attention, spec=spec)),
                   argnums=(0, 1, 2))(*f32)
  for name, a, b in zip("qkv", g, g_ref):
    assert _rel(a, b) < 2e-2, name
