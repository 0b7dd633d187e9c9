"""Blocked XLA attention vs the dense reference (outputs, lse, dQ/dK/dV), and the api dispatch.

Tolerances (pallas_kernels.testing.assert_close): fp32 rtol 1e-5 / atol 1e-4 on everything; bf16
rtol 3e-2 / atol 3e-2 on outputs and gradients (the kernel rounds P and dS to bf16 before its
matmuls, the reference stays fp32), 1e-3 on the fp32 lse.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import api
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec
from pallas_kernels.testing import BF16, F32, Case, assert_close, run_against_reference
from pallas_kernels.backends.xla import xla_attention

S = AttentionSpec


def _random_cases(n, seed):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    kind = rng.choice(["full", "sink_window", "strided"])
    if kind == "full":
      spec = S.full(16)
    elif kind == "sink_window":
      spec = S.sink_window(int(rng.integers(0, 40)), 16 * int(rng.integers(1, 4)), 16)
    else:
      spec = S.strided(int(rng.integers(1, 3)), int(rng.integers(2, 4)), 16)
    hkv = int(rng.choice([1, 2]))
    out.append((Case(spec, T=int(rng.integers(20, 80)), Tk=int(rng.integers(20, 80)), Hq=2 * hkv,
                     Hkv=hkv, q_off=int(rng.integers(0, 48)), kv_off=int(rng.integers(0, 48)),
                     seg=bool(rng.random() < 0.5)), None))
  return out


# (case, (block_q, block_k) or None for the default tiles); each case mixes several features
CASES = [
    (Case(S.full(16)), None),                                        # GQA 4/2, D 64
    (Case(S.sink_window(4, 32, 16), T=77, Hkv=1, B=2, seg=True), None),  # ragged, MQA, packed
    (Case(S.sink_window(40, 16, 16), T=70, D=128), None),            # sink >= window, D 128
    (Case(S.sink_window(8, 128, 16), T=50), None),                   # window >= sequence
    (Case(S.sink_window(0, 32, 16), T=24, Tk=80, q_off=56), None),   # no sink, chunked prefill
    (Case(S.strided(3, 4, 16), T=100), (8, 32)),                     # tiles != pattern block
    (Case(S.strided(2, 3, 16), T=40, Tk=48, q_off=16, kv_off=32, seg=True), None),  # ring chunk,
                                                                     # rows 16..31 see nothing
    (Case(S.full(16), T=32, Tk=40, kv_off=100), None),               # every row sees nothing
    (Case(S.full(32), D=128, seg=True, dtype=BF16), None),
    (Case(S.sink_window(4, 32, 16), T=60, Tk=70, q_off=10, Hkv=1, dtype=BF16), None),
] + _random_cases(2, seed=7)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_matches_reference(i):
  c, tiles = CASES[i]
  bq, bk = tiles or (None, None)
  fn = lambda *a, **kw: xla_attention(*a, **kw, block_q=bq, block_k=bk)
  got, want = run_against_reference(fn, c)
  assert_close(got, want, c.dtype, label=f"case {i} {c.spec}")
  out, lse, dq = (np.asarray(x).astype(np.float32) for x in got[:3])
  empty = np.isneginf(lse).transpose(0, 2, 1)          # [B, T, Hq]: rows that see nothing
  assert not (out[empty] != 0).any() and not (dq[empty] != 0).any()


def _sub_jaxprs(eqn):
  for p in eqn.params.values():
    for obj in (p if isinstance(p, (tuple, list)) else (p,)):
      if hasattr(obj, "eqns"):
        yield obj
      elif hasattr(getattr(obj, "jaxpr", None), "eqns"):
        yield obj.jaxpr


def _max_intermediate(jaxpr):
  """Largest array (elements) produced anywhere in a jaxpr, sub-jaxprs (loops, vjp) included."""
  best = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      best = max(best, int(np.prod(getattr(var.aval, "shape", ()))))
    for sub in _sub_jaxprs(eqn):
      best = max(best, _max_intermediate(sub))
  return best


def test_never_builds_length_squared_arrays():
  T, H, D = 4096, 1, 16
  q = jax.ShapeDtypeStruct((1, T, H, D), F32)
  spec = S.sink_window(64, 256, 64)

  def loss(q, k, v):
    out, lse = xla_attention(q, k, v, spec, return_lse=True)
    return out.sum() + lse.sum()

  jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(q, q, q)
  biggest = _max_intermediate(jaxpr.jaxpr)
  assert biggest >= T * 64, "expected per-tile score blocks in the jaxpr"
  assert biggest <= T * 64 * H * 4, f"an intermediate has {biggest} elements (L^2 = {T * T})"


# ----------------------------------------------------------------------------- dispatch / api
def _shapes(T=64):
  return api.AttentionShapes(1, T, T, 4, 2, 64, 0, 0, False)


def test_auto_picks_xla_on_cpu_and_logs_once(caplog):
  api._LOGGED.clear()
  with caplog.at_level(logging.INFO, logger="pallas_kernels.api"):
    for _ in range(3):
      assert api.select_backend(S.strided(2, 3, 16), _shapes(), F32) == "xla"
  assert sum("backend 'xla'" in r.getMessage() for r in caplog.records) == 1
  q = jax.ShapeDtypeStruct((1, 32, 2, 16), F32)
  via_api = jax.make_jaxpr(lambda q: api.attention(q, q, q, "full@16"))(q)
  direct = jax.make_jaxpr(lambda q: xla_attention(q, q, q, S.full(16)))(q)
  assert str(via_api) == str(direct)


def test_unknown_backend_is_one_message_for_every_front_end():
  assert api.unknown_backend("xla") is None and api.unknown_backend("auto") is None
  msg = api.unknown_backend("nope")
  assert msg.startswith("unknown attention backend 'nope'; choose one of auto, ") and "xla" in msg
  assert "\n" not in msg
  assert api.unknown_backend("auto", allow_auto=False).startswith(
      "unknown attention backend 'auto'; choose one of ")
  with pytest.raises(ValueError, match="unknown attention backend 'auto'"):
    api.get_backend_fn("auto")      # auto is a choice of select_backend, not a backend


@pytest.mark.parametrize("backend, match", [("nope", "unknown attention backend 'nope'"),
                                            ("pallas_tpu", "runs on tpu only"),
                                            ("auto ", "unknown")])
def test_bad_backend_raises(backend, match):
  q = jnp.zeros((1, 16, 2, 16))
  with pytest.raises(ValueError, match=match):
    api.attention(q, q, q, "full@16", backend=backend)


def test_registered_backend_is_preferred_where_it_supports_the_call():
  def fake(q, k, v, spec, **kw):
    return q

  def supports(platform, spec, shapes, dtype):
    if platform != "gpu":
      return "gpu only"
    return "no strided" if spec.kind == "strided" else None

  top = 10**6    # above any real backend, so the test holds whatever else is registered
  api.register_backend("fake_gpu", fake, supports, priority=top)
  try:
    with pytest.raises(ValueError, match="already registered"):
      api.register_backend("fake_gpu", fake, supports)
    assert api.select_backend(S.full(16), _shapes(), F32, platform="gpu") == "fake_gpu"
    assert api.select_backend(S.strided(2, 2, 16), _shapes(), F32, platform="gpu") != "fake_gpu"
    assert api.select_backend(S.full(16), _shapes(), F32, platform="cpu") == "xla"
    with pytest.raises(ValueError, match="gpu only"):
      api.select_backend(S.full(16), _shapes(), F32, platform="cpu", backend="fake_gpu")
    api.register_backend("fake_gpu", fake, lambda *a: None, priority=top, platforms=("tpu",),
                         replace=True)
    assert api.select_backend(S.full(16), _shapes(), F32, platform="tpu") == "fake_gpu"
    assert api.select_backend(S.full(16), _shapes(), F32, platform="cpu") == "xla"
  finally:
    api.unregister_backend("fake_gpu")
  assert "fake_gpu" not in api.available_backends()


def test_builtins_can_be_removed_or_replaced_before_first_use():
  """A fresh process: removing a built-in (``fa4``, to keep ``auto`` on ours) or replacing one
  before any attention call sticks; the built-ins are loaded first, not over it afterwards."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  code = ("from pallas_kernels import api\n"
          "api.unregister_backend('fa4')\n"
          "api.register_backend('cudnn', lambda *a, **k: None, auto=False, replace=True)\n"
          "names = api.available_backends()\n"
          "assert 'fa4' not in names and 'xla' in names, names\n"
          "assert not api._BACKENDS['cudnn'].auto\n"
          "print('ok')\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       check=False)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_lazy_string_backends_resolve():
  api.register_backend("lazy_ref", "pallas_kernels.reference:reference_attention", auto=False)
  try:
    q = jax.random.normal(jax.random.PRNGKey(1), (1, 16, 2, 16))
    np.testing.assert_allclose(api.attention(q, q, q, "full@16", backend="lazy_ref"),
                               reference_attention(q, q, q, S.full(16)), rtol=1e-6)
    api.register_backend("broken", "pallas_kernels.does_not_exist:f", auto=True)
    with pytest.raises(ValueError, match="cannot import backend 'broken'"):
      api.select_backend(S.full(16), _shapes(), F32, backend="broken")
    assert api.select_backend(S.full(16), _shapes(), F32) == "xla"   # auto skips it
  finally:
    api.unregister_backend("lazy_ref")
    api.unregister_backend("broken")


_Q = jnp.zeros((2, 16, 4, 8))
_K = jnp.zeros((2, 16, 2, 8))
_SEG = jnp.zeros((2, 16), jnp.int32)


@pytest.mark.parametrize("args, kwargs, match", [
    ((_Q[0], _K, _K), {}, "ranks"),
    ((_Q, _K, _K[:, :, :1]), {}, "same shape"),
    ((_Q, _K[:1], _K[:1]), {}, "batch or head_dim"),
    ((_Q[:, :, :3], _K, _K), {}, "not a multiple of kv heads"),
    ((_Q.astype(jnp.int32), _K, _K), {}, "dtype"),
    ((_Q, _K.astype(BF16), _K.astype(BF16)), {}, "share a dtype"),
    ((_Q, _K, _K), {"segment_ids": _SEG[:, :8]}, "segment_ids must have shape"),
    ((_Q, _K, _K), {"segment_ids": _SEG.astype(F32)}, "integers"),
    ((_Q, _K, _K), {"kv_segment_ids": _SEG}, "without segment_ids"),
    ((_Q, _K, _K), {"q_offset": -1}, "q_offset"),
    ((_Q, _K, _K), {"scale": jnp.float32(1.0)}, "scale"),
])
def test_input_validation(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    api.attention(*args, "full@16", **kwargs)
