"""The hybrid KV cache: one buffer per layer, sized by the layer's attention pattern.

Keys are cached AFTER RoPE, rotated at their original positions (the convention of training, of
DuoAttention and of vLLM's sliding window; not StreamingLLM's re-positioning), so a cached key
never changes and the kernels see the same numbers as in training.

Per layer (``LayerCache``; slot layouts in ``slots.py``). Buffers are HEAD-MAJOR
(``[B, Hkv, slots, D]``): the decode and chunk kernels contract over the head dim with the
(row, KV head) batch dims outermost, reading the cache in place.

  kind          k, v                                   pos (slot -> position, -1 = empty)
  full          [B, Hkv, capacity, D]                  none (slot = position)
  paged         pool [num_pages, Hkv, page, D]         none; ``HybridCache.page_table [B, pages]``
  sink_window   [B, Hkv, min(sink + window, cap), D]   [B, slots] int32
  strided       [B, Hkv, (n_vertical + local) * block, D]   [B, slots] int32
  (any other)   [B, Hkv, Pattern.n_slots(spec, cap), D]   [B, slots] int32

``HybridCache`` holds the per-layer caches, ``lengths [B]`` (tokens cached per row = the next
position) and, for the paged layout, the page table shared by every full layer (all full layers
hold the same positions). Page 0 of a pool is a scratch page: unallocated table entries point at
it, so the padding of a short row can be written without a branch; whatever lands there is never
visible (it lies after the row's length, and attention is causal).

The cache is a pytree (``jax.tree_util.register_dataclass``): pass it through ``jit`` (donated,
updated in place). ``partition_specs`` gives its sharding: rows over the batch axes, KV heads over
the tensor axis, exactly like the activations and the ``wk``/``wv`` weights of the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pallas_kernels.spec import AttentionSpec

from longgen_jax.infer import slots
from longgen_jax.infer.errors import InferError

@dataclasses.dataclass(frozen=True)
class LayerCache:
  """One layer's KV buffers (data) plus its static layout (metadata)."""

  k: jax.Array
  v: jax.Array
  pos: jax.Array | None
  spec: AttentionSpec
  kind: str
  capacity: int

  @property
  def n_slots(self) -> int:
    return slots.n_slots(self.spec, self.capacity)


jax.tree_util.register_dataclass(LayerCache, data_fields=["k", "v", "pos"],
                                 meta_fields=["spec", "kind", "capacity"])


@dataclasses.dataclass(frozen=True)
class HybridCache:
  """All layers' caches, the per-row lengths and (paged layout) the page table."""

  layers: tuple
  lengths: jax.Array
  page_table: jax.Array | None

  @property
  def batch(self) -> int:
    return int(self.lengths.shape[0])

  @property
  def capacity(self) -> int:
    return self.layers[0].capacity


jax.tree_util.register_dataclass(HybridCache, data_fields=["layers", "lengths", "page_table"],
                                 meta_fields=[])


def layer_kind(spec: AttentionSpec, paged: bool) -> str:
  if spec.is_full:
    return "paged" if paged else "full"
  return spec.kind


def init_cache(specs: Sequence[AttentionSpec], *, batch: int, capacity: int, n_kv_heads: int,
               head_dim: int, dtype: Any = jnp.bfloat16, paged: bool = False,
               page_size: int = 128, num_pages: int | None = None) -> HybridCache:
  """An empty cache for ``batch`` rows of up to ``capacity`` positions.

  ``paged``: full layers use a pool of ``num_pages`` pages of ``page_size`` tokens (default: enough
  for every row at full capacity, plus the scratch page); ``capacity`` must be a multiple of
  ``page_size``. Allocation is the caller's (``paged.PageAllocator``); rows start with no pages.
  """
  if batch < 1 or capacity < 1:
    raise InferError(f"cache needs batch >= 1 and capacity >= 1, got {batch} and {capacity}")
  dtype = jnp.dtype(dtype)
  page_table = None
  if paged:
    if capacity % page_size:
      raise InferError(f"paged cache: capacity {capacity} is not a multiple of page_size "
                       f"{page_size}")
    pages_per_row = capacity // page_size
    if num_pages is None:
      num_pages = batch * pages_per_row + 1
    page_table = jnp.zeros((batch, pages_per_row), jnp.int32)
  layers = []
  for spec in specs:
    kind = layer_kind(spec, paged)
    if kind == "paged":
      shape = (num_pages, n_kv_heads, page_size, head_dim)
      pos = None
    else:
      n = slots.n_slots(spec, capacity)
      shape = (batch, n_kv_heads, n, head_dim)
      pos = None if kind == "full" else jnp.full((batch, n), -1, jnp.int32)
    layers.append(LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), pos, spec, kind,
                             int(capacity)))
  return HybridCache(tuple(layers), jnp.zeros((batch,), jnp.int32), page_table)


# ----------------------------------------------------------------------------- writes
def write_chunk(lc: LayerCache, k_new, v_new, start, limit, page_table=None) -> LayerCache:
  """Writes a prefill chunk: ``k_new/v_new [B, n, Hkv, D]`` hold positions ``start + arange(n)``.

  ``start`` may be traced; ``limit [B]``: positions ``>= limit[b]`` are right padding and are
  not written into the sparse caches (full caches take them: they lie past the row's length, are
  masked causally, and are overwritten by the first generated tokens).
  """
  B, n, H, D = k_new.shape
  kh = k_new.astype(lc.k.dtype).transpose(0, 2, 1, 3)       # [B, Hkv, n, D] (the chunk only)
  vh = v_new.astype(lc.v.dtype).transpose(0, 2, 1, 3)
  if lc.kind == "full":
    k = jax.lax.dynamic_update_slice_in_dim(lc.k, kh, start, axis=2)
    v = jax.lax.dynamic_update_slice_in_dim(lc.v, vh, start, axis=2)
    return dataclasses.replace(lc, k=k, v=v)
  if lc.kind == "paged":
    page = lc.k.shape[2]
    pages = jax.lax.dynamic_slice_in_dim(page_table, start // page, n // page, axis=1)

    def to_pages(x):   # [B, H, n, D] -> [B * n / page, H, page, D]
      x = x.reshape(B, H, n // page, page, D).transpose(0, 2, 1, 3, 4)
      return x.reshape(B * (n // page), H, page, D)

    idx = pages.reshape(-1)
    return dataclasses.replace(lc, k=lc.k.at[idx].set(to_pages(kh)),
                               v=lc.v.at[idx].set(to_pages(vh)))
  cand = slots.bulk_positions(lc.spec, lc.capacity, start, n, limit, xp=jnp)   # [B, S]
  take = jnp.clip(cand - start, 0, n - 1)[:, None, :, None]
  write = (cand >= 0)[:, None, :, None]
  k_g = jnp.take_along_axis(kh, take, axis=2)
  v_g = jnp.take_along_axis(vh, take, axis=2)
  return dataclasses.replace(lc, k=jnp.where(write, k_g, lc.k), v=jnp.where(write, v_g, lc.v),
                             pos=jnp.where(cand >= 0, cand, lc.pos))


def write_token(lc: LayerCache, k_new, v_new, pos, page_table=None) -> LayerCache:
  """Writes one decode token per row: ``k_new/v_new [B, 1, Hkv, D]`` at positions ``pos [B]``."""
  B = k_new.shape[0]
  rows = jnp.arange(B)
  kn, vn = k_new[:, 0].astype(lc.k.dtype), v_new[:, 0].astype(lc.v.dtype)   # [B, Hkv, D]
  if lc.kind == "paged":
    page = lc.k.shape[2]
    pg = page_table[rows, pos // page]
    off = pos % page
    return dataclasses.replace(lc, k=lc.k.at[pg, :, off].set(kn), v=lc.v.at[pg, :, off].set(vn))
  slot = slots.slot_of(lc.spec, lc.capacity, pos, xp=jnp)
  new = dataclasses.replace(lc, k=lc.k.at[rows, :, slot].set(kn),
                            v=lc.v.at[rows, :, slot].set(vn))
  if lc.pos is not None:
    new = dataclasses.replace(new, pos=lc.pos.at[rows, slot].set(pos))
  return new


# ----------------------------------------------------------------------------- sizes & sharding
def bytes_per_token(n_kv_heads: int, head_dim: int, dtype) -> int:
  """K and V bytes of one token in one layer."""
  return 2 * n_kv_heads * head_dim * jnp.dtype(dtype).itemsize


def analytic_kv_bytes(specs: Sequence[AttentionSpec], capacity: int, batch: int,
                      n_kv_heads: int, head_dim: int, dtype) -> int:
  """``sum over layers of spec.kv_budget(capacity)`` K/V bytes for ``batch`` rows."""
  per_tok = bytes_per_token(n_kv_heads, head_dim, dtype)
  return int(batch * per_tok * sum(s.kv_budget(capacity) for s in specs))


def partition_specs(cache: HybridCache, batch_axes: Any = ("data", "fsdp"),
                    head_axis: Any = "tensor") -> HybridCache:
  """A pytree of ``PartitionSpec`` matching ``cache``: rows over ``batch_axes``, KV heads over
  ``head_axis`` (use with ``jax.sharding.NamedSharding(mesh, spec)``). A paged pool is shared by
  all rows, so only its heads are split; its page table follows the rows."""
  def layer(lc: LayerCache) -> LayerCache:
    if lc.kind == "paged":
      kv = P(None, head_axis, None, None)
    else:
      kv = P(batch_axes, head_axis, None, None)
    pos = None if lc.pos is None else P(batch_axes, None)
    return dataclasses.replace(lc, k=kv, v=kv, pos=pos)
  return HybridCache(tuple(layer(lc) for lc in cache.layers), P(batch_axes),
                     None if cache.page_table is None else P(batch_axes, None))

