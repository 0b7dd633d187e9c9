"""LongGenConfig: a Llama config plus one static attention pattern per layer.

This file is shipped verbatim into every hybrid export (``trust_remote_code=True``); it may only
import torch-free parts of ``transformers``. Each entry of ``longgen_layers`` is the dict form of
``pallas_kernels.AttentionSpec``::

  {"kind": "full" | "sink_window" | "strided" | "chunked", "block": int, "sink": int, "window": int,
   "local_blocks": int, "vert_stride": int}

Semantics (query at position i, key at position j, both absolute positions in the sequence):
  full:         j <= i
  sink_window:  j <= i and (j < sink or i - j < window)
  strided:      j <= i and (i//block - j//block < local_blocks or (j//block) % vert_stride == 0)
  chunked:      j <= i and i//window == j//window

Torch-only mirror of ``pallas_kernels/patterns/``: tests/test_hf_patterns.py checks that the kinds
and their validation agree with the pattern modules on every registered kind.
"""

from transformers import LlamaConfig

PATTERN_KINDS = ("full", "sink_window", "strided", "chunked")
PATTERN_FIELDS = ("kind", "block", "sink", "window", "local_blocks", "vert_stride")


def normalize_pattern(layer: int, spec: dict) -> dict:
  """Validates one layer pattern and returns it with every field present (ints)."""
  if not isinstance(spec, dict):
    raise ValueError(f"longgen_layers[{layer}] must be a dict, got {type(spec).__name__}")
  unknown = set(spec) - set(PATTERN_FIELDS)
  if unknown:
    raise ValueError(f"longgen_layers[{layer}] has unknown field(s) {sorted(unknown)}")
  out = {"kind": str(spec.get("kind", "full")), "block": int(spec.get("block", 128))}
  for name in PATTERN_FIELDS[2:]:
    out[name] = int(spec.get(name, 0))
  kind = out["kind"]
  if kind not in PATTERN_KINDS:
    raise ValueError(f"longgen_layers[{layer}].kind={kind!r} is not one of {PATTERN_KINDS}")
  if kind == "sink_window" and (out["window"] < 1 or out["sink"] < 0):
    raise ValueError(f"longgen_layers[{layer}] sink_window needs window >= 1 and sink >= 0: {out}")
  if kind == "strided" and (out["local_blocks"] < 1 or out["vert_stride"] < 1 or out["block"] < 1):
    raise ValueError(f"longgen_layers[{layer}] strided needs block, local_blocks and "
                     f"vert_stride >= 1: {out}")
  if kind == "chunked" and out["window"] < 1:
    raise ValueError(f"longgen_layers[{layer}] chunked needs window (the chunk) >= 1: {out}")
  return out


class LongGenConfig(LlamaConfig):
  """Llama configuration whose layers each carry a static attention pattern (``longgen_layers``)."""

  model_type = "longgen"
  longgen_layers: list | None = None

  def __post_init__(self, **kwargs):
    super().__post_init__(**kwargs)
    if self.longgen_layers is None:
      self.longgen_layers = [{"kind": "full"}] * self.num_hidden_layers
    if len(self.longgen_layers) != self.num_hidden_layers:
      raise ValueError(f"longgen_layers has {len(self.longgen_layers)} entries but "
                       f"num_hidden_layers={self.num_hidden_layers}")
    self.longgen_layers = [normalize_pattern(i, s) for i, s in enumerate(self.longgen_layers)]


__all__ = ["LongGenConfig"]
