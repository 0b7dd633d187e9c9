"""CPU twin of tests/gpu/test_gpu_triton_native.py: what the triton_native backend can check
without a GPU (its kernels need triton, jax-triton and a CUDA GPU; outputs and gradients against
the dense reference are tested on the GPU machine).

* every registered pattern is accepted: the Triton predicate is generated from the pattern's own
  ``visible`` (``patterns/source.py``), so a new pattern needs no edit to the kernels;
* the generated kernel module is valid Python with the predicate in ``_visible`` exactly once;
* without triton / a GPU the backend says why in one line, and calling it raises.
"""

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import api, patterns
from pallas_kernels.backends import triton_native, triton_native_kernels
from pallas_kernels.patterns.source import predicate_source
from pallas_kernels.spec import AttentionSpec

SPECS = {"full": AttentionSpec.full(64), "sink_window": AttentionSpec.sink_window(64, 256, 64),
         "strided": AttentionSpec.strided(2, 4, 64), "chunked": AttentionSpec.chunked(256, 64)}


def test_every_registered_pattern_has_a_spec_here():
  assert set(SPECS) == set(patterns.KINDS)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_every_pattern_is_supported_and_its_kernel_source_compiles(kind):
  spec = SPECS[kind]
  sh = api.AttentionShapes(1, 4096, 4096, 32, 8, 128, 0, 0, False)
  why = triton_native.registry_supports("gpu", spec, sh, jnp.bfloat16)
  assert why is None or "triton" in why or "GPU" in why, why   # never the pattern
  src = predicate_source(spec, "qpos", "kpos")
  text = triton_native_kernels.kernel_source(src)
  compile(text, f"<{kind}>", "exec")
  if src != "True":
    assert text.count(f"return ok & ({src})") == 1
  assert "KIND" not in text    # no per-kind branch left in the kernels


def test_unavailable_backend_says_why_and_refuses():
  if triton_native_kernels.triton is not None and jax.default_backend() == "gpu":
    pytest.skip("triton and a GPU are present: tests/gpu covers this backend")
  spec = SPECS["sink_window"]
  q = jnp.zeros((1, 128, 4, 64), jnp.bfloat16)
  why = triton_native.why_unsupported(q, q, q, spec)
  assert why and "\n" not in why
  with pytest.raises(triton_native.TritonNativeError):
    triton_native.native_attention(q, q, q, spec)


def test_why_unsupported_reports_bad_arguments_in_one_line():
  q = jax.ShapeDtypeStruct((1, 128, 6, 64), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((1, 128, 4, 64), jnp.bfloat16)    # 6 query heads over 4 kv heads
  why = triton_native.why_unsupported(q, k, k, SPECS["full"])
  assert why == "query heads 6 are not a multiple of kv heads 4"
  seg = jax.ShapeDtypeStruct((1, 64), jnp.int32)             # wrong length
  why = triton_native.why_unsupported(k, k, k, SPECS["full"], segment_ids=seg)
  assert why.startswith("segment_ids must have shape (1, 128)")
