"""Grouping the layer list into scanned segments.

A ``Segment`` is a super-block of consecutive layer specs repeated ``repeats`` times. A segment
with ``repeats > 1`` becomes ONE ``nnx.scan`` whose body traces its super-block once (parameters
stacked along a leading axis of size ``repeats``); ``repeats == 1`` runs unscanned.

Rule (``plan_segments``): among these candidates pick the one with the fewest traced layer bodies
(sum of super-block lengths), then the fewest segments, then the smallest period:

* runs: each maximal run of identical specs is one segment (``S×10 F×11 S×11`` -> 3 segments,
  3 bodies: the LongGen layouts, which are not periodic);
* periodic: the shortest super-block of ``p`` specs such that the first ``R = n // p >= 2``
  repeats match exactly, then the leftover ``n - R p < p`` layers as runs
  (``(S S S F)×8`` -> 1 segment of 4 bodies; Gemma-3 style ``(S×5 F)×4 S S`` -> 2 segments).

All layers with the same spec share the remat policy (``ModelConfig.remat_for``), so a body is
determined by its specs alone.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from pallas_kernels.spec import AttentionSpec


@dataclasses.dataclass(frozen=True)
class Segment:
  """Layers ``start .. start + len(specs) * repeats - 1``: ``specs`` repeated ``repeats`` times."""

  start: int
  specs: tuple[AttentionSpec, ...]
  repeats: int

  @property
  def n_layers(self) -> int:
    return len(self.specs) * self.repeats

  @property
  def scanned(self) -> bool:
    return self.repeats > 1

  def layer_index(self, repeat: int, j: int) -> int:
    """Global index of the ``j``-th layer of the super-block in repeat ``repeat``."""
    return self.start + repeat * len(self.specs) + j


def _runs(layers: Sequence[AttentionSpec], start: int = 0) -> list[Segment]:
  out: list[Segment] = []
  i = 0
  while i < len(layers):
    j = i
    while j < len(layers) and layers[j] == layers[i]:
      j += 1
    out.append(Segment(start + i, (layers[i],), j - i))
    i = j
  return out


def _cost(plan: list[Segment]) -> tuple[int, int]:
  return sum(len(s.specs) for s in plan), len(plan)


def plan_segments(layers: Sequence[AttentionSpec], scan: bool = True) -> tuple[Segment, ...]:
  """The segments of ``layers`` (see module docstring); ``scan=False``: one segment per layer."""
  layers = tuple(layers)
  n = len(layers)
  if not scan:
    return tuple(Segment(i, (s,), 1) for i, s in enumerate(layers))
  best = _runs(layers)
  for p in range(1, n // 2 + 1):
    R = n // p
    if all(layers[i] == layers[i - p] for i in range(p, R * p)):
      plan = [Segment(0, layers[:p], R)] + _runs(layers[R * p:], R * p)
      if _cost(plan) < _cost(best):
        best = plan
  return tuple(best)


def layer_locations(plan: Sequence[Segment]) -> list[tuple[int, int, int]]:
  """For each global layer index: ``(segment index, repeat, position in the super-block)``."""
  out = []
  for si, seg in enumerate(plan):
    for r in range(seg.repeats):
      for j in range(len(seg.specs)):
        out.append((si, r, j))
  return out


def describe_plan(plan: Sequence[Segment]) -> str:
  """E.g. ``"scan[F]×11 | scan[S F]×4 | S"``."""
  parts = []
  for seg in plan:
    body = " ".join("F" if s.is_full else "S" for s in seg.specs)
    parts.append(f"scan[{body}]×{seg.repeats}" if seg.scanned else body)
  return " | ".join(parts)
