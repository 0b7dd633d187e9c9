"""Sequence-parallel attention for the model: ``sharded_attention(mesh, ...)`` -> an attention fn.

``sharded_attention(mesh, layout=..., impl=...)`` returns a ``ShardedAttention``: a callable with
the signature of ``pallas_kernels.attention`` (plus ``constrain``), i.e. the ``AttentionFn`` the
model is handed (``longgen_jax/model/attention_fn.py``; the trainer gets it from
``Parallel.attention_fn``). On a one-device mesh it IS ``pallas_kernels.attention``. Otherwise it
runs the kernels per device under ``shard_map`` (Pallas kernels cannot be auto-partitioned by
XLA):

* batch split over ``("data", "fsdp")``, heads over ``"tensor"`` (when the KV heads divide),
  sequence over ``"sequence"``;
* with a ``sequence`` axis > 1: full layers use ring (or all-gather) attention, sparse layers
  the halo exchange; the row must be in the object's layout order (``reorder.reorder_batch``
  on the host batch, done once by the data path).

::

    attn = parallel.sharded_attention(mesh, layout="zigzag", impl="ring")
    out = attn(q, k, v, spec, segment_ids=seg)              # one call
    hidden = model.hidden_states(tokens, positions, seg, attention_fn=attn)   # the model
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import PartitionSpec as P

from pallas_kernels.api import attention as kernel_attention
from pallas_kernels.spec import as_spec

from longgen_jax.parallel import compat
from longgen_jax.parallel import rules as rules_lib
from longgen_jax.parallel.allgather import allgather_attention
from longgen_jax.parallel.halo import HaloConfig, halo_attention
from longgen_jax.parallel.mesh import BATCH_AXES, SEQUENCE_ATTENTION
from longgen_jax.parallel.reorder import SeqLayout
from longgen_jax.parallel.ring import RingConfig, ring_attention

SEQ_AXIS = "sequence"
HEAD_AXIS = "tensor"


def _batch_axes(mesh):
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


@dataclasses.dataclass(frozen=True)
class ShardedAttention:
  """Attention (and sharding hints) on ``mesh`` with a sequence ``layout`` (see module docstring).

  Build it with :func:`sharded_attention` (which validates ``impl``).
  """

  mesh: jax.sharding.Mesh
  layout: str = "zigzag"
  impl: str = "ring"

  @property
  def n_seq(self) -> int:
    return compat.axis_size(self.mesh, SEQ_AXIS)

  def constrain(self, x, logical):
    """``with_sharding_constraint`` by logical axis names (``rules.RULES``) on this mesh.

    A no-op on one device. ``None`` entries are replicated.
    """
    if self.mesh.size == 1:
      return x
    spec = rules_lib.logical_to_spec(logical, x.shape, self.mesh)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(self.mesh, spec))

  def __call__(self, q, k, v, spec, *, segment_ids=None, kv_segment_ids=None,
               backend: str = "auto", q_offset: int = 0, kv_offset: int = 0,
               scale: float | None = None, return_lse: bool = False):
    """``pallas_kernels.attention`` made mesh-aware (see module docstring)."""
    if self.mesh.size == 1:
      return kernel_attention(q, k, v, spec, segment_ids=segment_ids,
                              kv_segment_ids=kv_segment_ids, backend=backend, q_offset=q_offset,
                              kv_offset=kv_offset, scale=scale, return_lse=return_lse)
    spec = as_spec(spec)
    B, T, Hq, _ = q.shape
    Hkv = k.shape[2]
    if q_offset or kv_offset or k.shape[1] != T:
      raise ValueError("sharded attention is for training / full-row prefill: q and kv must be "
                       f"the same row (got Tq={T}, Tk={k.shape[1]}, q_offset={q_offset}, "
                       f"kv_offset={kv_offset})")
    if kv_segment_ids is not None and kv_segment_ids is not segment_ids:
      raise ValueError("sharded attention takes one segment_ids for queries and keys")
    mesh = self.mesh
    bdiv = 1
    for a in _batch_axes(mesh):
      bdiv *= compat.axis_size(mesh, a)
    if B % bdiv:
      raise ValueError(f"batch {B} is not divisible by data*fsdp = {bdiv}")
    tp = compat.axis_size(mesh, HEAD_AXIS)
    head = HEAD_AXIS if (HEAD_AXIS in mesh.axis_names and Hkv % tp == 0) else None
    n = self.n_seq
    seq = SEQ_AXIS if SEQ_AXIS in mesh.axis_names else None
    layout = SeqLayout(self.layout, n, T)
    if segment_ids is None:
      segment_ids = jax.numpy.ones((B, T), jax.numpy.int32)
    segment_ids = segment_ids.astype(jax.numpy.int32)

    def local(q, k, v, seg):
      if n == 1:
        return kernel_attention(q, k, v, spec, segment_ids=seg, backend=backend, scale=scale,
                                return_lse=True)
      if spec.is_full:
        cfg = RingConfig(SEQ_AXIS, n, layout.kind, spec, backend, scale)
        fn = ring_attention if self.impl == "ring" else allgather_attention
        return fn(q, k, v, seg, seg, cfg)
      return halo_attention(q, k, v, seg, seg,
                            HaloConfig(SEQ_AXIS, layout, spec, backend, scale))

    bspec = _batch_axes(mesh) or None
    x_spec = P(bspec, seq, head, None)
    # check_vma=False: kernels (Pallas calls, fori_loop carries started from constants) are not
    # written for shard_map's varying-axes typing; the specs above are exact, and the tests
    # compare every gradient with the single-device reference (replicated heads included).
    fn = compat.shard_map(local, mesh=mesh, in_specs=(x_spec, x_spec, x_spec, P(bspec, seq)),
                          out_specs=(x_spec, P(bspec, head, seq)), check_vma=False)
    out, lse = fn(q, k, v, segment_ids)
    return (out, lse) if return_lse else out


def sharded_attention(mesh, *, layout: str = "zigzag", impl: str = "ring") -> ShardedAttention:
  """The model's attention fn on ``mesh``: shard_map'ed ring / all-gather / halo attention."""
  if impl not in SEQUENCE_ATTENTION:
    raise ValueError(f"sequence attention impl {impl!r} is not one of {SEQUENCE_ATTENTION}")
  return ShardedAttention(mesh, layout, impl)
