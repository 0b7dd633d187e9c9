"""Attention pattern kinds, one module each (``base.Pattern`` is the protocol).

``get_pattern(kind)`` returns a kind's pattern and raises ``SpecError`` for an unknown one;
``AttentionSpec.pattern`` is the usual way in.
"""

from pallas_kernels.patterns.base import Component, Pattern, SpecError
from pallas_kernels.patterns.registry import KINDS, PATTERNS, get_pattern

__all__ = ["Component", "Pattern", "SpecError", "KINDS", "PATTERNS", "get_pattern"]
