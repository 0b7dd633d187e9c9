"""Every built-in attention backend: one row of a plain table, read by ``pallas_kernels.api``.

Each row holds the ``register_backend`` arguments. ``fn`` / ``supports`` are ``"module:attr"``
strings, imported only when the backend is considered (so GPU modules are never imported on other
platforms, and this table imports nothing: no cycle with ``api``). ``backend="auto"`` tries
higher priorities first; ``xla`` (priority -100) runs everywhere. A plugin adds its own backend
with ``pallas_kernels.api.register_backend(...)``.
"""

from __future__ import annotations

_P = "pallas_kernels.backends."
GPU = ("gpu",)

BACKENDS = (
    dict(name="reference", fn="pallas_kernels.reference:reference_attention",
         supports="pallas_kernels.reference:registry_supports", auto=False),
    dict(name="xla", fn=_P + "xla:xla_attention", priority=-100),
    dict(name="pallas_tpu", fn=_P + "pallas_tpu:tpu_attention", priority=100, platforms=("tpu",)),
    dict(name="pallas_gpu", fn=_P + "pallas_gpu:attention", supports=_P + "pallas_gpu:supports",
         priority=50, platforms=GPU),
    # Measured on one H100 (docs/kernels.md, benchmarks/results/attention_2026-11-24.json): cuDNN
    # is the fastest full causal kernel and the fastest sink+window forward+backward (window +
    # LSE-merged sinks); packed rows (segment ids) go through cuDNN's packed layout on sm_90 with
    # cuDNN >= 9.6; it refuses fp32, offsets of packed rows and the other patterns, which then
    # fall to pallas_gpu.
    dict(name="cudnn", fn=_P + "cudnn:cudnn_attention", supports=_P + "cudnn:registry_supports",
         priority=70, platforms=GPU),
    # Native Triton through jax-triton: slower than pallas_gpu on every pattern; kept as the
    # fallback for when Pallas' (deprecated) Triton lowering goes away.
    dict(name="triton_native", fn=_P + "triton_native:native_attention",
         supports=_P + "triton_native:registry_supports", priority=40, platforms=GPU),
    # Sink+window on Hopper with segment ids (without them pallas_gpu_mosaic comes first): the
    # Mosaic GPU forward (pallas_gpu) when the call is not differentiated, cuDNN (its packed
    # layout) under autodiff. Until 2026-12-07 it took every sink+window call on Hopper: cuDNN's
    # backward was faster than ours then (docs/benchmarks.md).
    dict(name="split_gpu", fn=_P + "split:split_gpu_attention",
         supports=_P + "split:mosaic_sink_window_supports", priority=80, platforms=GPU),
    # Hopper, no segment ids: pallas_gpu where it runs the Mosaic GPU forward and the fused Mosaic
    # GPU backward (``pallas_gpu:mosaic_supports``), before cuDNN and split_gpu. One H100, one run
    # (docs/benchmarks.md, 2026-12-07, twelfth sitting), forward+backward at 64K: 1.12x split_gpu
    # for sink+window (1.15x GQA 32/8), 1.02x cuDNN for full causal; forward within 1% of the
    # fastest of them; the 128K training step 1.02x faster. Packed rows stay with cuDNN's packed
    # layout (split_gpu / cudnn below), faster in the 128K step on 2026-12-05.
    dict(name="pallas_gpu_mosaic", fn=_P + "pallas_gpu:attention",
         supports=_P + "pallas_gpu:mosaic_supports", priority=85, platforms=GPU),
    # FlashAttention-4 (optional extra ``fa4``) bound through a buffer callback: first for ``auto``
    # wherever it is installed and runs the call (bf16/fp16, whole rows, Hopper). On an H100 it was
    # the fastest kernel in every cell measured (16K / 64K / 128K, MHA and GQA 32/8, every pattern,
    # forward and forward+backward) and the 128K training step was faster with it in all four
    # cases measured: hybrid / full x one document / packed (1.03-1.11x; docs/benchmarks.md,
    # 2026-12-06, fifth sitting). Elsewhere (not installed, fp32, offsets, other GPUs) ``auto``
    # takes ours; ``api.unregister_backend("fa4")`` keeps ours everywhere.
    dict(name="fa4", fn=_P + "fa4:fa4_attention", supports=_P + "fa4:registry_supports",
         priority=90, platforms=GPU),
)
