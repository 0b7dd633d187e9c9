"""GPU: the ``fa4`` backend (FlashAttention-4 through a buffer callback) against the dense fp32
reference: outputs, lse and all gradients (the lse cotangent included), MHA and GQA, bf16 and
fp16, ragged lengths, packed rows (segment ids), every pattern kind it runs; the api running it
by name and as ``auto``'s first choice where it is installed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flash_attn.cute")

from pallas_kernels import api  # noqa: E402  pylint: disable=wrong-import-position
from pallas_kernels.backends import fa4  # noqa: E402  pylint: disable=wrong-import-position
from pallas_kernels.spec import AttentionSpec  # noqa: E402  pylint: disable=wrong-import-position
from pallas_kernels.testing import Case, assert_close, run_against_reference  # noqa: E402

pytestmark = pytest.mark.gpu
BF16, F16 = jnp.bfloat16, jnp.float16

CASES = [
    Case(AttentionSpec.sink_window(64, 512), T=2048, Hq=8, Hkv=2, D=128, dtype=BF16),
    Case(AttentionSpec.strided(2, 4), T=2048, Hq=4, Hkv=4, D=128, dtype=BF16),
    Case(AttentionSpec.full(), T=2048, Hq=4, Hkv=1, D=128, dtype=BF16),
    Case(AttentionSpec.sink_window(100, 256), T=1000, Hq=4, Hkv=2, D=64, dtype=F16),
    Case(AttentionSpec.strided(1, 3, block=64), T=1111, Hq=4, Hkv=2, D=128, dtype=BF16, B=2),
    Case(AttentionSpec.chunked(512), T=1536, Hq=4, Hkv=4, D=128, dtype=BF16),
    # packed rows (segment ids): per-row block lists, the mask_mod reads the ids
    Case(AttentionSpec.sink_window(64, 512), T=2048, Hq=8, Hkv=2, D=128, dtype=BF16, B=2,
         seg=True),
    Case(AttentionSpec.full(), T=1000, Hq=4, Hkv=2, D=128, dtype=F16, seg=True),
    Case(AttentionSpec.strided(2, 4), T=1536, Hq=4, Hkv=4, D=64, dtype=BF16, seg=True),
]


def _id(c):
  return f"{c.spec}-B{c.B}-T{c.T}-{c.Hq}/{c.Hkv}-D{c.D}{'-packed' if c.seg else ''}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_fa4_matches_reference(case):
  got, want = run_against_reference(fa4.fa4_attention, case)
  assert_close(got, want, case.dtype, label=str(case.spec))


def test_api_runs_fa4_by_name_and_as_auto():
  spec = AttentionSpec.sink_window(64, 512)
  shapes = api.AttentionShapes(1, 2048, 2048, 8, 2, 128, 0, 0, False)
  assert api.select_backend(spec, shapes, BF16, backend="fa4") == "fa4"
  assert api.select_backend(spec, shapes, BF16) == "fa4"          # auto's first choice
  assert api.select_backend(spec, shapes, jnp.float32) != "fa4"   # FA4 has no fp32: ours
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.standard_normal((1, 2048, 8, 128)), BF16)
  k = jnp.asarray(rng.standard_normal((1, 2048, 2, 128)), BF16)
  seg = jnp.asarray(np.repeat([[0, 1]], 1024, axis=1), jnp.int32)
  for backend, kw in (("fa4", {}), ("fa4", {"segment_ids": seg}), ("auto", {})):
    via_api = jax.jit(lambda q, k, b=backend, kw=kw: api.attention(q, k, k, spec, backend=b, **kw))
    np.testing.assert_array_equal(np.asarray(via_api(q, k), np.float32),
                                  np.asarray(fa4.fa4_attention(q, k, k, spec, **kw), np.float32))
  # what it refuses is a one-line error naming the backend
  with pytest.raises(ValueError, match="fa4"):
    api.select_backend(spec, shapes._replace(q_offset=128, kv_len=1920), BF16, backend="fa4")
