"""``auto`` on a (pretend) Hopper GPU without FlashAttention-4 (CPU; no GPU needed).

Where the Mosaic GPU forward and the fused Mosaic GPU backward both run a call and it has no
segment ids, ``auto`` takes ``pallas_gpu_mosaic`` (pallas_gpu's kernels) before cuDNN and
``split_gpu``: the twelfth sitting's 64K run measured it faster in every pattern
(docs/benchmarks.md). Packed rows, fp32, offsets, Tq != Tk, head dims off a multiple of 64 and
other GPUs fall through to the next row. The GPU side (the same choice on a real H100, and auto's
loss and gradients the same as pallas_gpu's, dQ up to rounding) is ``tests/gpu/test_gpu_split.py``.
"""

import types

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import api
from pallas_kernels.backends import cudnn, fa4, gpu_smem
from pallas_kernels.backends import pallas_gpu
from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb
from pallas_kernels.spec import AttentionSpec

SPECS = (AttentionSpec.full(), AttentionSpec.sink_window(64, 1024), AttentionSpec.strided(4, 4))
SHAPES = api.AttentionShapes(1, 4096, 4096, 8, 2, 128, 0, 0, False)


@pytest.fixture(name="hopper")
def _hopper(monkeypatch):
  """A pretend H100 as jax.devices()[0], no FA4, cuDNN available (its own checks skipped)."""
  dev = types.SimpleNamespace(platform="gpu", compute_capability="9.0",
                              device_kind="NVIDIA H100 80GB HBM3")
  monkeypatch.setattr(jax, "devices", lambda *a, **k: [dev])
  monkeypatch.setattr(fa4, "_platform_problem", lambda: "flash-attn-4 is not importable")
  monkeypatch.setattr(cudnn, "_platform_problem", lambda: None)
  monkeypatch.setattr(cudnn, "_packed_platform_problem", lambda: None)
  return dev


def auto(spec, shapes=SHAPES, dtype=jnp.bfloat16):
  return api.select_backend(spec, shapes, dtype, platform="gpu")


def test_auto_takes_the_mosaic_kernels_where_both_run(hopper):
  del hopper
  assert gpu_smem.smem_limit() == gpu_smem.SMEM_BYTES["9.0"]
  for spec in SPECS:
    assert pallas_gpu.mosaic_supports("gpu", spec, SHAPES, jnp.bfloat16) is None
    assert auto(spec) == "pallas_gpu_mosaic"
    assert auto(spec, dtype=jnp.float16) == "pallas_gpu_mosaic"
    assert auto(spec, SHAPES._replace(q_heads=32, kv_heads=32, head_dim=64)) == "pallas_gpu_mosaic"
    # A ragged length: pallas_gpu zero-pads it to the tiles of both kernels.
    ragged = SHAPES._replace(q_len=4097, kv_len=4097)
    assert pallas_gpu.padded_lengths(4097, 4097, 128, jnp.bfloat16)[0] % mb.step() == 0
    assert auto(spec, ragged) == "pallas_gpu_mosaic"


def test_everything_else_falls_through(hopper):
  """Each refusal is one line naming its reason, and auto lands on the next backend."""
  def why(spec, shapes=SHAPES, dtype=jnp.bfloat16):
    reason = pallas_gpu.mosaic_supports("gpu", spec, shapes, dtype)
    assert reason and "\n" not in reason
    return reason

  sw, strided = SPECS[1], SPECS[2]
  packed = SHAPES._replace(has_segment_ids=True)
  assert "segment ids" in why(sw, packed)
  assert auto(sw, packed) == "split_gpu" and auto(SPECS[0], packed) == "cudnn"
  assert auto(strided, packed) == "pallas_gpu"
  assert "float32" in why(sw, dtype=jnp.float32) and auto(sw, dtype=jnp.float32) == "pallas_gpu"
  offsets = SHAPES._replace(q_len=2048, q_offset=2048)
  assert "offsets" in why(strided, offsets) and auto(strided, offsets) == "pallas_gpu"
  assert "head_dim 96" in why(sw, SHAPES._replace(head_dim=96))
  assert "Tq != Tk" in why(sw, SHAPES._replace(q_len=2048))
  with pytest.raises(ValueError, match=r"'pallas_gpu_mosaic' cannot run this call on gpu: .*"
                     r"segment ids") as err:
    api.select_backend(sw, packed, jnp.bfloat16, platform="gpu", backend="pallas_gpu_mosaic")
  assert "\n" not in str(err.value)
  hopper.compute_capability = "8.0"
  assert "not sm_90" in why(sw)
  assert auto(sw) == "cudnn" and auto(strided) == "pallas_gpu"


def test_refused_off_gpu():
  assert "CUDA GPU" in pallas_gpu.mosaic_supports("cpu", SPECS[0], SHAPES, jnp.bfloat16)
  assert api.select_backend(SPECS[0], SHAPES, jnp.bfloat16, platform="cpu") == "xla"
  with pytest.raises(ValueError, match="pallas_gpu_mosaic"):
    api.select_backend(SPECS[0], SHAPES, jnp.bfloat16, platform="cpu",
                       backend="pallas_gpu_mosaic")


def test_backends_removed_is_auto_without_the_row_and_restores_it(hopper):
  """What ``train_step.py`` / ``serving.py --without`` use for their A/B runs."""
  del hopper
  sw = SPECS[1]
  with api.backends_removed("pallas_gpu_mosaic", "fa4"):
    assert auto(sw) == "split_gpu" and auto(SPECS[0]) == "cudnn"
    assert "pallas_gpu_mosaic" not in api.available_backends()
  assert auto(sw) == "pallas_gpu_mosaic" and "fa4" in api.available_backends()
  with pytest.raises(RuntimeError, match="inside"):
    with api.backends_removed("pallas_gpu_mosaic"):
      raise RuntimeError("inside")
  assert auto(sw) == "pallas_gpu_mosaic"
  with pytest.raises(ValueError, match="unknown attention backend 'mosaic'"):
    with api.backends_removed("pallas_gpu_mosaic", "mosaic"):
      pass
  assert auto(sw) == "pallas_gpu_mosaic"


def test_parse_without_names_and_complaints():
  """The ``--without`` flag of ``train_step.py`` and ``serving.py``."""
  assert api.parse_without("", "auto") == ((), None)
  assert api.parse_without("pallas_gpu_mosaic,,fa4", "auto") == (("pallas_gpu_mosaic", "fa4"),
                                                                  None)
  names, problem = api.parse_without("fa4,flash2", "auto")
  assert names == ("fa4", "flash2")
  assert problem.startswith("--without: unknown attention backend 'flash2'; choose one of ")
  assert api.parse_without("xla", "xla")[1] == "--without takes out 'xla', the --backend asked for"
  assert api.parse_without("auto", "xla")[1].startswith("--without: unknown attention backend "
                                                        "'auto'")
