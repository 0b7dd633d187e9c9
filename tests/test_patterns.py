"""The pattern registry: every kind end to end, and an unregistered kind fails in every consumer.

``EXAMPLES`` must name every registered kind (a new pattern without examples fails here). The
fourth pattern, ``chunked`` (pallas_kernels/patterns/chunked.py), is checked here through the
block tables, the blocked-XLA kernel and both Pallas interpret-mode kernels (out, lse and all
gradients vs the dense reference); its KV cache (tests/test_infer_equivalence.py), halo sequence
parallelism (tests/test_parallel_attention.py) and HF export (tests/test_hf_export.py) are tested
with the other patterns.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import api, patterns
from pallas_kernels.backends import pallas_tpu as tpu_lib
from pallas_kernels.block_tables import block_tables
from pallas_kernels.spec import AttentionSpec, SpecError, dense_mask
from pallas_kernels.testing import Case, assert_close, run_against_reference

from longgen_jax.infer import buckets, slots
from longgen_jax.infer.cache import init_cache
from longgen_jax.parallel import halo as halo_lib
from longgen_jax.parallel.reorder import SeqLayout

S = AttentionSpec
EXAMPLES = {
    "full": [S.full(16)],
    "sink_window": [S.sink_window(4, 32, 16), S.sink_window(0, 16, 16)],
    "strided": [S.strided(2, 3, 16), S.strided(1, 2, 16)],
    "chunked": [S.chunked(32, 16), S.chunked(16, 16), S.chunked(64, 32)],
}


def test_every_registered_kind_has_examples():
  assert set(EXAMPLES) == set(patterns.KINDS)


@pytest.mark.parametrize("spec", [s for v in EXAMPLES.values() for s in v], ids=str)
def test_string_round_trip_and_predicate_forms_agree(spec):
  assert S.parse(str(spec)) == spec and S.from_dict(spec.to_dict()) == spec
  q, k = np.arange(300)[:, None], np.arange(300)[None, :]
  want = spec.allowed(q, k)
  np.testing.assert_array_equal(np.asarray(spec.allowed(jnp.asarray(q), jnp.asarray(k))), want)
  from pallas_kernels.patterns.truncating import allowed_truncating
  got = allowed_truncating(spec, jnp.asarray(q, jnp.int32), jnp.asarray(k, jnp.int32))
  np.testing.assert_array_equal(np.asarray(got), want)
  # kv_budget, visible_pairs and eviction are the predicate's consequences
  L = 300
  assert spec.visible_pairs(L) == int(want.sum())
  assert spec.kv_budget(L) >= int(want.sum(1).max())
  for t in (1, 17, 95, 160):
    needed = spec.allowed(np.arange(t, t + 400)[:, None], np.arange(t)[None, :]).any(0)
    kept = spec.pattern.still_needed(spec, np.arange(t), t)
    np.testing.assert_array_equal(np.broadcast_to(kept, (t,)), needed, err_msg=f"t={t}")


@pytest.mark.parametrize("spec", [s for v in EXAMPLES.values() for s in v], ids=str)
def test_predicate_source_is_the_predicate(spec):
  """The source form Triton compiles (``patterns.source``) means what ``visible`` means."""
  from pallas_kernels.backends import triton_native_kernels
  from pallas_kernels.patterns.source import predicate_source
  src = predicate_source(spec, "qpos", "kpos")
  q, k = np.arange(300)[:, None], np.arange(300)[None, :]
  got = np.broadcast_to(eval(src, {}, {"qpos": q, "kpos": k}), (300, 300))  # pylint: disable=eval-used
  np.testing.assert_array_equal(got & (k <= q), spec.allowed(q, k))
  kernels = triton_native_kernels.kernel_source(src)
  assert kernels.count(f"return ok & ({src})") == (src != "True")
  compile(kernels, "<kernels>", "exec")


def test_predicate_source_refuses_branching_predicates():
  from pallas_kernels.patterns import source

  class Branchy(patterns.Pattern):
    name = "branchy"

    def visible(self, q, k, spec):
      return q - k < 4 if q > 8 else True

  with pytest.raises(TypeError, match="operators only"):
    Branchy().visible(source.Sym("q"), source.Sym("k"), None)


def test_chunked_predicate():
  spec = S.parse("chunked:32@16")
  assert spec == S.chunked(32, 16) and str(spec) == "chunked:32@16"
  m = dense_mask(spec, 96)
  i, j = np.nonzero(m)
  assert (i // 32 == j // 32).all() and (j <= i).all() and m.sum() == 3 * 32 * 33 // 2
  assert spec.kv_budget(1000) == 32
  with pytest.raises(SpecError, match="not a multiple of the block"):
    S.chunked(24, 16)


@pytest.mark.parametrize("case", [(64, 64, 16, 16, 0, 0), (100, 130, 8, 64, 30, 0),
                                  (70, 90, 32, 16, 17, 3), (40, 200, 64, 64, 160, 0)])
@pytest.mark.parametrize("spec", EXAMPLES["chunked"], ids=str)
def test_chunked_block_tables_match_dense_mask(spec, case):
  q_len, kv_len, bq, bk, q_off, kv_off = case
  bt = block_tables(spec, q_len, kv_len, block_q=bq, block_k=bk, q_offset=q_off, kv_offset=kv_off)
  m = dense_mask(spec, q_len, kv_len, q_offset=q_off, kv_offset=kv_off)
  nq, nk = -(-q_len // bq), -(-kv_len // bk)
  padded = np.zeros((nq * bq, nk * bk), bool)
  padded[:q_len, :kv_len] = m
  t = padded.reshape(nq, bq, nk, bk)
  some, every = t.any((1, 3)), t.all((1, 3))
  for i in range(nq):
    cols = bt.fwd_indices[bt.fwd_indptr[i]:bt.fwd_indptr[i + 1]]
    part = bt.fwd_indices_partial[bt.fwd_indptr[i]:bt.fwd_indptr[i + 1]]
    np.testing.assert_array_equal(cols, np.nonzero(some[i])[0])
    np.testing.assert_array_equal(part, ~every[i, cols])
  for j in range(nk):
    rows = bt.bwd_indices[bt.bwd_indptr[j]:bt.bwd_indptr[j + 1]]
    np.testing.assert_array_equal(rows, np.nonzero(some[:, j])[0])


CHUNKED_CASES = [
    Case(S.chunked(32, 16), T=100, Hkv=1, B=2, seg=True),
    Case(S.chunked(16, 16), T=40, Tk=70, q_off=30, D=128),
    Case(S.chunked(32, 16), T=24, Tk=80, q_off=56),
]


@pytest.mark.parametrize("i", range(len(CHUNKED_CASES)))
def test_chunked_xla_kernel_matches_reference(i):
  c = CHUNKED_CASES[i]
  fn = lambda *a, **kw: api.attention(*a, **kw, backend="xla")
  got, want = run_against_reference(fn, c)
  assert_close(got, want, c.dtype, label=f"xla {c.spec}")


@pytest.mark.parametrize("i", range(len(CHUNKED_CASES)))
def test_chunked_tpu_interpret_matches_reference(i):
  c = CHUNKED_CASES[i]
  fn = lambda *a, **kw: tpu_lib.tpu_attention(*a, **kw, block_q=16, block_k=16, interpret=True)
  got, want = run_against_reference(fn, c)
  assert_close(got, want, c.dtype, label=f"pallas_tpu {c.spec}")


def test_chunked_pallas_gpu_interpret_matches_reference():
  from pallas_kernels.backends import pallas_gpu
  cfg = pallas_gpu.TritonConfig(block_q=16, block_k=16, block_q_dq=16, block_k_dq=16,
                                block_q_dkv=16, block_k_dkv=16, num_warps=1, num_stages=1)
  c = CHUNKED_CASES[0]
  fn = lambda *a, **kw: pallas_gpu.attention(*a, **kw, config=cfg, interpret=True)
  got, want = run_against_reference(fn, c)
  assert_close(got, want, c.dtype, label=f"pallas_gpu {c.spec}")


# ----------------------------------------------------------------------------- unknown kinds
def _unregistered():
  """A spec object of kind 'dilated' (not registered), built past the constructor's check."""
  spec = object.__new__(S)
  for f in dataclasses.fields(S):
    object.__setattr__(spec, f.name, f.default)
  object.__setattr__(spec, "kind", "dilated")
  object.__setattr__(spec, "block", 16)
  object.__setattr__(spec, "window", 32)
  return spec


def test_unknown_kind_fails_at_parse_and_construction():
  with pytest.raises(SpecError, match="cannot parse"):
    S.parse("dilated:32")
  with pytest.raises(SpecError, match="'dilated' is not one of"):
    S(kind="dilated", block=16, window=32)
  with pytest.raises(SpecError, match="'dilated' is not one of"):
    S.from_dict({"kind": "dilated", "block": 16})


def _q():
  x = jnp.ones((1, 32, 2, 8), jnp.float32)
  return x, x, x


UNKNOWN_CONSUMERS = {
    "predicate": lambda sp: sp.allowed(np.arange(4)[:, None], np.arange(4)[None, :]),
    "kv_budget": lambda sp: sp.kv_budget(64),
    "str": str,
    "block_tables": lambda sp: block_tables(sp, 64),
    "xla kernel": lambda sp: api.attention(*_q(), sp, backend="xla"),
    "reference": lambda sp: api.attention(*_q(), sp, backend="reference"),
    "pallas_tpu interpret": lambda sp: tpu_lib.tpu_attention(*_q(), sp, block_q=16, block_k=16,
                                                             interpret=True),
    "cache": lambda sp: init_cache([sp], batch=1, capacity=64, n_kv_heads=1, head_dim=8),
    "cache slots": lambda sp: slots.slot_of(sp, 64, np.arange(8)),
    "prefill chunk": lambda sp: buckets.check_chunk(64, [sp]),
    "halo": lambda sp: halo_lib.plan(halo_lib.HaloConfig("sequence", SeqLayout("contiguous", 2,
                                                                               64), sp)),
}


@pytest.mark.parametrize("name", list(UNKNOWN_CONSUMERS))
def test_unknown_kind_fails_in_every_consumer(name):
  with pytest.raises(SpecError, match="'dilated' is not one of"):
    UNKNOWN_CONSUMERS[name](_unregistered())


def test_unknown_kind_fails_in_pallas_gpu_interpret():
  from pallas_kernels.backends import pallas_gpu
  with pytest.raises(SpecError, match="'dilated' is not one of"):
    pallas_gpu.attention(*_q(), _unregistered(), interpret=True)


def test_unknown_kind_fails_in_hf_config_and_cache():
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from longgen_jax.hf.cache_longgen import pattern_allows, still_needed
  from longgen_jax.hf.configuration_longgen import normalize_pattern
  d = {"kind": "dilated", "block": 16, "window": 32}
  with pytest.raises(ValueError, match="'dilated' is not one of"):
    normalize_pattern(0, d)
  with pytest.raises(ValueError, match="'dilated' is not one of"):
    pattern_allows(d, torch.arange(4)[:, None], torch.arange(4)[None, :])
  with pytest.raises(ValueError, match="'dilated' is not one of"):
    still_needed(d, torch.arange(4), torch.tensor(4))

