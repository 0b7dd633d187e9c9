"""Registration of every attention backend: one ``register_backend`` line each.

Imported lazily by ``pallas_kernels.api`` on first use. Use ``"module:attr"`` strings for backends
whose modules must not be imported on other platforms (they are imported only when considered).
``backend="auto"`` tries higher priorities first; ``xla`` (priority -100) runs everywhere.

GPU backends register here too, e.g.
  register_backend("pallas_gpu", "pallas_kernels.gpu_flash:attention",
                   supports="pallas_kernels.gpu_flash:supports", priority=50, platforms=("gpu",))
(``platforms`` refuses other platforms without importing the module).
"""

from __future__ import annotations

from pallas_kernels.api import register_backend
from pallas_kernels.split import split_attention


def _reference_only_small(platform, spec, shapes, dtype):
  del platform, spec, dtype
  if shapes.q_len * shapes.kv_len > 1 << 26:
    return f"dense reference would allocate {shapes.q_len} x {shapes.kv_len} scores (tests only)"
  return None


register_backend("reference", "pallas_kernels.reference:reference_attention",
                 _reference_only_small, auto=False)
register_backend("xla", "pallas_kernels.xla_blocked:xla_attention", None, priority=-100)
register_backend("pallas_tpu", "pallas_kernels.tpu:tpu_attention", None, priority=100,
                 platforms=("tpu",))
register_backend("pallas_gpu", "pallas_kernels.gpu_triton:attention",
                 "pallas_kernels.gpu_triton:supports", priority=50, platforms=("gpu",))
# Measured on one H100 (docs/kernels.md, benchmarks/results/attention_2026-11-24.json): cuDNN is the
# fastest full causal kernel and the fastest sink+window forward+backward (window + LSE-merged sinks);
# packed rows (segment ids) go through cuDNN's packed layout on sm_90 with cuDNN >= 9.6; it refuses
# fp32, offsets of packed rows and strided patterns, which then fall to pallas_gpu.
register_backend("cudnn", "pallas_kernels.gpu_cudnn:cudnn_attention",
                 "pallas_kernels.gpu_cudnn:registry_supports", priority=70, platforms=("gpu",))
# Native Triton through jax-triton: slower than pallas_gpu on every pattern; kept as the fallback for
# when Pallas' (deprecated) Triton lowering goes away.
register_backend("triton_native", "pallas_kernels.gpu_native:native_attention",
                 "pallas_kernels.gpu_native:registry_supports", priority=40, platforms=("gpu",))
# Sink+window on Hopper: the Mosaic GPU forward (pallas_gpu) is the fastest forward and cuDNN the
# fastest forward+backward (docs/benchmarks.md), so ``auto`` takes a split backend that runs the
# first when the call is not differentiated and the second under autodiff (pallas_kernels/split.py).
register_backend("split_gpu", split_attention("pallas_gpu", "cudnn"),
                 "pallas_kernels.split:mosaic_sink_window_supports", priority=80,
                 platforms=("gpu",))
