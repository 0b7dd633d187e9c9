"""Integer positions whose ``//`` and ``%`` truncate (``lax.div`` / ``lax.rem``), for Mosaic TPU.

``jnp``'s ``//`` lowers to a floor division with a ``sign`` op whose Mosaic rule needs a TPU at
lowering time. Positions are non-negative, where truncation equals floor, so a pattern's
operator-only predicate evaluated on ``Truncating`` positions is the same predicate, lowerable
anywhere. Arithmetic stays ``Truncating``; comparisons return plain boolean arrays.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def _raw(x):
  return x.x if isinstance(x, Truncating) else x


def _as(x, like):
  return jnp.asarray(_raw(x), like.dtype)


class Truncating:
  """An int32 array wrapper: ``+ - *`` as usual, ``//`` and ``%`` truncating."""

  __slots__ = ("x",)

  def __init__(self, x):
    self.x = x

  def __add__(self, o):
    return Truncating(self.x + _raw(o))

  __radd__ = __add__

  def __sub__(self, o):
    return Truncating(self.x - _raw(o))

  def __rsub__(self, o):
    return Truncating(_raw(o) - self.x)

  def __mul__(self, o):
    return Truncating(self.x * _raw(o))

  __rmul__ = __mul__

  def __floordiv__(self, o):
    return Truncating(lax.div(self.x, _as(o, self.x)))

  def __mod__(self, o):
    return Truncating(lax.rem(self.x, _as(o, self.x)))

  def __lt__(self, o):
    return self.x < _raw(o)

  def __le__(self, o):
    return self.x <= _raw(o)

  def __gt__(self, o):
    return self.x > _raw(o)

  def __ge__(self, o):
    return self.x >= _raw(o)

  def __eq__(self, o):  # noqa: D105
    return self.x == _raw(o)

  def __ne__(self, o):
    return self.x != _raw(o)

  __hash__ = None


def allowed_truncating(spec, qpos, kpos):
  """``spec.allowed`` on non-negative int32 positions with truncating division (Mosaic)."""
  return spec.allowed(Truncating(qpos), Truncating(kpos))
