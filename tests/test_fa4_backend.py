"""The ``fa4`` backend on the CPU: its block-sparse tables, support checks, and the buffer-callback
plumbing and custom gradient through ``impl="emulate"`` (a dense torch stand-in given exactly what
the FA4 call is given). The kernels themselves: tests/gpu/test_gpu_fa4.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import api
from pallas_kernels.backends import fa4, fa4_tables, registry
from pallas_kernels.spec import AttentionSpec
from pallas_kernels.testing import Case, assert_close, run_against_reference

SPECS = [AttentionSpec.sink_window(8, 128, block=64), AttentionSpec.sink_window(130, 256),
         AttentionSpec.strided(1, 3, block=64), AttentionSpec.strided(2, 2),
         AttentionSpec.chunked(256), AttentionSpec.full()]


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("L", [200, 640, 1000])
def test_tables_are_exactly_the_pattern(spec, L):
  fwd, bwd = fa4_tables.sparse_arrays(spec, L)
  pos = np.arange(L)
  want = spec.allowed(pos[:, None], pos[None, :]) & np.ones((L, L), bool)
  np.testing.assert_array_equal(fa4_tables.token_mask(spec, L, fwd), want)
  np.testing.assert_array_equal(fa4_tables.token_mask(spec, L, bwd, transposed=True), want)
  n = -(-L // fa4_tables.BLOCK)
  for arr in (fwd, bwd):
    assert arr.mask_cnt.shape == arr.full_cnt.shape == (n,)
    assert arr.mask_idx.shape[1] == max(int(arr.mask_cnt.max()), 1)   # compact
    assert arr.full_idx.shape[1] == max(int(arr.full_cnt.max()), 1)
    for cnt, idx in ((arr.mask_cnt, arr.mask_idx), (arr.full_cnt, arr.full_idx)):
      for r in range(n):
        row = idx[r, :cnt[r]]
        assert np.all(np.diff(row) > 0) and np.all((row >= 0) & (row < n))


def test_token_mask_catches_a_wrong_full_block():
  spec = AttentionSpec.sink_window(8, 128)
  fwd, _ = fa4_tables.sparse_arrays(spec, 512)
  full_cnt, full_idx = fwd.full_cnt.copy(), np.zeros((4, 4), np.int32)
  full_idx[:, :fwd.full_idx.shape[1]] = fwd.full_idx
  full_cnt[3] += 1                      # claim KV block 1 of query block 3 is entirely visible
  full_idx[3, full_cnt[3] - 1] = 1
  bad = fwd._replace(full_cnt=full_cnt, full_idx=full_idx)
  pos = np.arange(512)
  assert not np.array_equal(fa4_tables.token_mask(spec, 512, bad),
                            spec.allowed(pos[:, None], pos[None, :]))


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[2], SPECS[4], SPECS[5]], ids=str)
@pytest.mark.parametrize("T,Hq,Hkv", [(300, 4, 2), (256, 2, 2)])
def test_emulated_call_matches_reference(spec, T, Hq, Hkv):
  case = Case(spec, T=T, Hq=Hq, Hkv=Hkv, D=16)
  attn = lambda *a, **kw: fa4.fa4_attention(*a, impl="emulate", **kw)  # noqa: E731
  got, want = run_against_reference(attn, case)
  assert_close(got, want, case.dtype, label=str(spec))


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[3], SPECS[5]], ids=str)
@pytest.mark.parametrize("B,T", [(2, 300), (1, 512)])
def test_emulated_packed_rows_match_reference(spec, B, T):
  """Segment ids: per-row lists from ``segment_visits``, the mask_mod's id test (emulated)."""
  case = Case(spec, T=T, Hq=4, Hkv=2, D=16, B=B, seg=True)
  attn = lambda *a, **kw: fa4.fa4_attention(*a, impl="emulate", **kw)  # noqa: E731
  got, want = run_against_reference(attn, case)
  assert_close(got, want, case.dtype, label=f"{spec} packed")


def test_packed_lists_drop_cross_document_tiles():
  spec = AttentionSpec.full()
  seg = jnp.asarray(np.repeat(np.arange(4), 256)[None], jnp.int32)     # 4 documents x 2 blocks
  plan = fa4._Plan(spec, 1.0, "emulate", True)  # pylint: disable=protected-access
  extra = fa4._extra_inputs(plan, seg, seg, 1024, backward=False)
  mask_cnt, full_cnt = extra[0], extra[2]
  # each query block sees the (1 or 2) blocks of its own document only: 1 diagonal + 1 full max
  np.testing.assert_array_equal(np.asarray(mask_cnt)[0, 0], [1] * 8)
  np.testing.assert_array_equal(np.asarray(full_cnt)[0, 0], [0, 1] * 4)


def test_output_without_lse_and_default_scale():
  spec = AttentionSpec.strided(1, 2, block=64)
  q = jnp.asarray(np.random.default_rng(0).standard_normal((1, 256, 2, 32)), jnp.float32)
  out = fa4.fa4_attention(q, q, q, spec, impl="emulate")
  ref = api.attention(q, q, q, spec, backend="reference")
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw,msg", [
    (dict(q_offset=128), "q_offset == kv_offset == 0"),
    (dict(kv_len=512), "Tq == Tk"),
    (dict(dtype=jnp.float32), "bf16/fp16"),
    (dict(head_dim=256), "head_dim"),
    (dict(q_heads=3), "multiple of kv heads"),
])
def test_unsupported_reasons(kw, msg):
  facts = dict(q_len=256, kv_len=256, q_heads=4, kv_heads=2, head_dim=128, dtype=jnp.bfloat16)
  assert fa4.unsupported_reason(AttentionSpec.full(), check_platform=False, **facts) is None
  reason = fa4.unsupported_reason(AttentionSpec.full(), check_platform=False, **{**facts, **kw})
  assert reason and msg in reason and "\n" not in reason


def test_cpu_refuses_in_one_line_and_auto_skips_it():
  q = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
  with pytest.raises(fa4.Fa4Error, match="fa4 backend: FA4 needs a CUDA GPU"):
    fa4.fa4_attention(q, q, q, AttentionSpec.full())
  with pytest.raises(fa4.Fa4Error, match="impl must be"):
    fa4.fa4_attention(q, q, q, AttentionSpec.full(), impl="dense")
  shapes = api.AttentionShapes(1, 256, 256, 2, 2, 64, 0, 0, False)
  assert api.select_backend(AttentionSpec.full(), shapes, jnp.bfloat16, platform="cpu") != "fa4"
  assert "CUDA GPU" in fa4.registry_supports("cpu", AttentionSpec.full(), shapes, jnp.bfloat16)
  with pytest.raises(ValueError, match="fa4"):
    api.select_backend(AttentionSpec.full(), shapes, jnp.bfloat16, platform="cpu", backend="fa4")


def test_auto_takes_it_first_where_it_runs_and_ours_elsewhere(monkeypatch):
  """Where FA4 runs the call ``auto`` takes it (the fastest kernel measured, per call and per
  step); fp32, offsets and a missing FA4 fall to our kernels; unregistering it keeps ours."""
  def auto_gpu(spec, shapes, dtype=jnp.bfloat16):
    return api.select_backend(spec, shapes, dtype, platform="gpu")

  monkeypatch.setattr(fa4, "_platform_problem", lambda: None)
  shapes = api.AttentionShapes(1, 2048, 2048, 8, 2, 128, 0, 0, False)
  specs = (AttentionSpec.full(), AttentionSpec.sink_window(64, 512), AttentionSpec.strided(2, 4))
  for spec in specs:
    assert fa4.registry_supports("gpu", spec, shapes, jnp.bfloat16) is None
    assert auto_gpu(spec, shapes) == "fa4"
    assert auto_gpu(spec, shapes._replace(has_segment_ids=True), jnp.float16) == "fa4"
    assert auto_gpu(spec, shapes, jnp.float32) != "fa4"
    assert auto_gpu(spec, shapes._replace(q_len=1920, q_offset=128)) != "fa4"
  monkeypatch.setattr(fa4, "_platform_problem", lambda: "flash-attn-4 is not importable")
  without = auto_gpu(specs[1], shapes)              # split_gpu on an H100; this CPU: pallas_gpu
  assert without != "fa4"
  monkeypatch.setattr(fa4, "_platform_problem", lambda: None)
  row = next(r for r in registry.BACKENDS if r["name"] == "fa4")
  api.unregister_backend("fa4")
  try:
    assert auto_gpu(specs[1], shapes) == without
    with pytest.raises(ValueError, match="unknown attention backend 'fa4'"):
      api.select_backend(specs[1], shapes, jnp.bfloat16, platform="gpu", backend="fa4")
  finally:
    api.register_backend(**row)
  assert auto_gpu(specs[1], shapes) == "fa4"


@pytest.mark.parametrize("remat,fwd_per_layer", [("save_attention", 1), ("full", 2)])
def test_step_runs_the_forward_once_per_layer_when_saved(monkeypatch, remat, fwd_per_layer):
  """The training step through the callback (emulated FA4 registered as a CPU backend): under
  ``save_attention`` JAX keeps ``attn_out`` / ``attn_lse`` and the backward does not call the
  forward again; under ``full`` it does. (On an H100 it ran twice under ``save_attention``
  before the optimization barrier, now in ``_frame.differentiable``: XLA:GPU's dynamic-slice
  fusion cloned the call, docs/benchmarks.md, 2026-12-06; XLA:CPU has no such pass.)"""
  import collections  # pylint: disable=import-outside-toplevel
  import functools  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
  import train_step  # pylint: disable=import-outside-toplevel
  calls = collections.Counter()
  fwd, bwd = fa4._fwd_callback, fa4._bwd_callback
  monkeypatch.setattr(fa4, "_fwd_callback", lambda *a: (calls.update(["fwd"]), fwd(*a))[1])
  monkeypatch.setattr(fa4, "_bwd_callback", lambda *a: (calls.update(["bwd"]), bwd(*a))[1])
  fa4._callbacks.cache_clear()
  jax.clear_caches()                      # traces holding another test's callbacks
  name = f"fa4_emulated_{remat}"
  api.register_backend(name, functools.partial(fa4.fa4_attention, impl="emulate"), None,
                       auto=False, platforms=("cpu",))
  try:
    train_step.run_one("full", 256, remat, 1, 0.0, tiny=True, segment_ids=False, backend=name)
  finally:
    api.unregister_backend(name)
    fa4._callbacks.cache_clear()
    jax.clear_caches()
  layers = train_step.model_config("full", 256, remat, tiny=True).n_layers
  runs = 2                                                        # warm-up + 1 timed step
  assert calls == {"fwd": fwd_per_layer * layers * runs, "bwd": layers * runs}


def test_forward_outputs_pass_an_optimization_barrier():
  """XLA:GPU's dynamic-slice fusion cloned the forward callback when its outputs were stored in a
  scanned residual stack (each FA4 forward ran twice on an H100; XLA:CPU has no such pass, so only
  the guard is checkable here): the callback's outputs go through an optimization barrier."""
  q = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
  f = lambda q: fa4.fa4_attention(q, q, q, AttentionSpec.full(), impl="emulate", return_lse=True)
  text = jax.jit(f).lower(q).as_text()
  call = text.index("xla_buffer_python_cpu_callback")
  assert "stablehlo.optimization_barrier" in text[call:]
