"""Block-sparse attention for LongGen layers: pattern specs, analytic block tables, kernels.

Public surface:
  AttentionSpec / as_spec     the per-layer pattern (``full``, ``sink_window``, ``strided``).
  attention(q, k, v, spec, *, segment_ids=None, backend="auto", ...)   the ONE entry point.
"""

from pallas_kernels.spec import FULL, AttentionSpec, SpecError, as_spec, dense_mask
from pallas_kernels.api import attention, available_backends

__all__ = ["FULL", "AttentionSpec", "SpecError", "as_spec", "dense_mask", "attention",
           "available_backends"]
