"""How the model runs attention: handed in by the caller, never looked up.

The model does not know about meshes. Whoever runs it passes an ``attention_fn`` down the call
path (``Llama.hidden_states(..., attention_fn=...)`` -> each ``DecoderLayer`` -> ``spec_attend``);
``None`` means :data:`SINGLE_DEVICE`, the kernel itself. The trainer passes the sequence-parallel
one it gets from its mesh (``longgen_jax.parallel.Parallel.attention_fn``, a
``parallel.sequence.ShardedAttention``)::

  train.make_train_step -> training.step.make_step(..., attention_fn=par.attention_fn)
    -> model.hidden_states(..., attention_fn=...) -> layers.spec_attend(cfg, spec, seg, fn)

An ``AttentionFn`` is two callables:

* ``fn(q, k, v, spec, *, segment_ids=None, backend="auto", scale=None)``: the signature of
  ``pallas_kernels.attention`` for a whole (packed) row;
* ``fn.constrain(x, logical)``: a sharding hint by logical axis names (``parallel/rules.py``);
  the identity on one device.
"""

from __future__ import annotations

from typing import Protocol

from pallas_kernels.api import attention as kernel_attention


class AttentionFn(Protocol):
  """The attention call (and sharding hint) the model is handed; see the module docstring."""

  def __call__(self, q, k, v, spec, *, segment_ids=None, backend: str = "auto",
               scale: float | None = None):
    ...

  def constrain(self, x, logical):
    ...


class SingleDeviceAttention:
  """``pallas_kernels.attention`` itself; no sharding hints."""

  def __call__(self, q, k, v, spec, *, segment_ids=None, backend: str = "auto",
               scale: float | None = None):
    return kernel_attention(q, k, v, spec, segment_ids=segment_ids, backend=backend, scale=scale)

  def constrain(self, x, logical):  # pylint: disable=unused-argument
    return x

  def __repr__(self):
    return "SINGLE_DEVICE"


SINGLE_DEVICE = SingleDeviceAttention()


def resolve(attention_fn: AttentionFn | None) -> AttentionFn:
  """``attention_fn``, or :data:`SINGLE_DEVICE` for None."""
  return SINGLE_DEVICE if attention_fn is None else attention_fn
