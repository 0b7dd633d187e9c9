"""The one public attention entry point and its backend dispatch.

PLACEHOLDER CONTRACT (the kernel work fills in the backends; the signature is fixed):

  attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, backend="auto",
            q_offset=0, kv_offset=0, scale=None, return_lse=False)

  q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D], Hq % Hkv == 0; positions are q_offset + arange(Tq) and
  kv_offset + arange(Tk) (static ints) so sequence-parallel chunks and chunked prefill reuse the
  same kernels. Returns out [B, Tq, Hq, D] in q.dtype, plus lse [B, Hq, Tq] fp32 (natural log,
  -inf for rows that see nothing) when return_lse. Differentiable in q, k, v (lse too).
"""

from __future__ import annotations

import logging

from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec, as_spec

_log = logging.getLogger(__name__)

_BACKENDS = {"reference": reference_attention}


def available_backends() -> list[str]:
  return sorted(_BACKENDS)


def attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, backend: str = "auto",
              q_offset: int = 0, kv_offset: int = 0, scale: float | None = None,
              return_lse: bool = False):
  spec = as_spec(spec)
  name = "reference" if backend == "auto" else backend
  if name not in _BACKENDS:
    raise ValueError(f"unknown attention backend {backend!r}; available: {available_backends()}")
  return _BACKENDS[name](q, k, v, spec, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                         q_offset=q_offset, kv_offset=kv_offset, scale=scale, return_lse=return_lse)
