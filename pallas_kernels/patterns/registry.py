"""The pattern registry: the ONE place that maps a kind name to its ``Pattern``.

Adding a pattern = one module next to this one + one line in ``PATTERNS``. An unknown kind raises
``SpecError`` here, so no consumer can fall through to another pattern's mask.
"""

from __future__ import annotations

from pallas_kernels.patterns import chunked, full, sink_window, strided
from pallas_kernels.patterns.base import Pattern, SpecError

PATTERNS: dict[str, Pattern] = {
    "full": full.PATTERN,
    "sink_window": sink_window.PATTERN,
    "strided": strided.PATTERN,
    "chunked": chunked.PATTERN,   # experimental worked example (docs/architecture.md)
}
KINDS = tuple(PATTERNS)


def get_pattern(kind: str) -> Pattern:
  """The pattern of ``kind``; ``SpecError`` for an unregistered kind."""
  try:
    return PATTERNS[kind]
  except (KeyError, TypeError):
    raise SpecError(f"attention kind {kind!r} is not one of {KINDS}") from None
