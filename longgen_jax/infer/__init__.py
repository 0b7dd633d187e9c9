"""Serving: the hybrid KV cache, chunked prefill, split-K decode, sampling, generation.

See ``docs/inference.md``. Public surface:

  Engine, GenerationResult                 engine.py   (bucketed, jit-compiled prefill / decode)
  SamplingParams                           sampling.py (greedy / temperature / top-k / top-p)
  HybridCache, LayerCache, init_cache,     cache.py    (per-layer buffers sized by the pattern,
  partition_specs, analytic_kv_bytes                    PartitionSpecs for a mesh)
  prefill_chunk, decode_step,              forward.py  (pure functions over canonical params)
  serving_specs
  load_model, LoadedModel                  loading.py  (trainer / converted / random checkpoints)
  format_kv_report                         report.py
  InferError                               errors.py
"""

from longgen_jax.infer.errors import InferError
from longgen_jax.infer.cache import (HybridCache, LayerCache, analytic_kv_bytes, init_cache,
                                     partition_specs)
from longgen_jax.infer.forward import decode_step, prefill_chunk, serving_specs
from longgen_jax.infer.sampling import SamplingParams
from longgen_jax.infer.engine import Engine, GenerationResult
from longgen_jax.infer.loading import LoadedModel, load_model
from longgen_jax.infer.report import format_kv_report

__all__ = ["InferError", "HybridCache", "LayerCache", "analytic_kv_bytes", "init_cache",
           "partition_specs", "decode_step", "prefill_chunk", "serving_specs", "SamplingParams",
           "Engine", "GenerationResult", "LoadedModel", "load_model", "format_kv_report"]
