"""Halo attention for SPARSE layers (sink+window, block-strided) inside ``shard_map``.

A sparse layer never needs the whole row, so there is no ring. Each local contiguous sub-chunk
(global chunk ``c`` of length ``C``; zigzag shards hold two) needs only

* the **halo**: the ``H`` tokens just before the chunk, ``[cC - H, cC)`` (``H = window`` for
  sink+window, ``(local_blocks - 1) * block`` for strided), fetched from the shard(s) holding the
  preceding chunk(s) with ``lax.ppermute`` -- O(W) per layer, independent of L;
* the **global tokens**: the ``sink`` first tokens of the row (all-gathered from their owner:
  O(sink)), or, for strided layers, the vertical blocks (``kb % vert_stride == 0``) of the
  whole row (O(L / vert_stride): that is what the pattern reads).

Two kernel calls per sub-chunk, merged by log-sum-exp:

1. local: queries vs ``[halo | chunk]`` with the layer's own spec. Offsets must be static, and
   ``c`` depends on the shard, so chunks are grouped: the pattern restricted to keys
   ``>= cC - H`` is translation invariant (sink_window once ``cC - H >= sink``; strided for
   shifts that are multiples of ``block * vert_stride``), so every "generic" chunk shares one
   call with representative offsets; the few chunks near the row start get their own static
   branch with their true offsets (``lax.switch`` on the shard index).
2. global: queries vs the global tokens whose position is ``< cC - H`` (the others are inside
   the local call already), all fully visible to the chunk (``full`` spec with a large
   ``q_offset``); the ``< cC - H`` cut is a dynamic key mask (segment id -1).

Every pattern-specific quantity above (``H``, the generic call's spec and offsets, which chunks
are special, the global positions, the chunk-length requirement) comes from the layer's pattern
(``Pattern.halo_len / halo_generic / halo_special / global_positions / halo_check``,
``pallas_kernels/patterns/``); this module does not branch on the kind.

Gradients are plain autodiff: ``ppermute`` transposes to the reverse permutation and
``all_gather`` to a reduce-scatter, so halo and sink/vertical KV cotangents flow back to their
owners exactly.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from pallas_kernels import lse_merge
from pallas_kernels.api import attention as kernel_attention
from pallas_kernels.spec import AttentionSpec

from longgen_jax.parallel.reorder import SeqLayout

INVALID_SEGMENT = -1   # never equal to a real segment id (>= 0), so a key with it is masked.


class HaloError(ValueError):
  """A sparse spec / layout combination that halo attention cannot run."""


@dataclasses.dataclass(frozen=True)
class HaloConfig:
  """Static description of one sparse-layer call (hashable)."""

  axis: str
  layout: SeqLayout
  spec: AttentionSpec
  backend: str = "auto"
  scale: float | None = None


def halo_len(spec: AttentionSpec) -> int:
  """Tokens before a chunk that its first query may see through the local pattern."""
  if spec.is_full:
    raise HaloError(f"halo attention is for sparse specs, got {spec}")
  return spec.pattern.halo_len(spec)


def check_specs(specs, layout_kind: str, n: int, seq_len: int) -> None:
  """Raises ``HaloError`` for the first sparse spec that cannot run on ``n`` sequence shards.

  The trainer calls this at config validation, so a halo that does not fit the sequence chunk
  is one line before anything is compiled.
  """
  if n <= 1:
    return
  try:
    layout = SeqLayout(layout_kind, n, seq_len)
  except ValueError as e:
    raise HaloError(str(e)) from None
  for spec in specs:
    if not spec.is_full:
      plan(HaloConfig("sequence", layout, spec))


@dataclasses.dataclass(frozen=True)
class _Piece:
  dst_start: int          # where in the halo the piece goes
  length: int
  sources: tuple          # ((src_sub, ((src_shard, dst_shard), ...)), ...)


@dataclasses.dataclass(frozen=True)
class _Plan:
  C: int
  H: int
  chunk_ids: tuple                  # [n][sub]
  pieces: tuple                     # per dst sub-chunk: tuple of _Piece
  branches: tuple                   # per sub-chunk: tuple of chunk index (int) or None=generic
  branch_table: tuple               # per sub-chunk: tuple over shards of branch index
  global_pos: tuple                 # static positions of the global tokens (sorted)
  global_idx: tuple                 # per sub-chunk: offsets of global tokens any shard holds


@functools.lru_cache(maxsize=256)
def plan(cfg: HaloConfig) -> _Plan:
  """Static communication / branch plan (validates the spec against the layout)."""
  lay, spec = cfg.layout, cfg.spec
  if lay.kind == "striped" and lay.n > 1:
    raise HaloError(f"sparse layer {spec} cannot run on the striped sequence layout (a window "
                    "touches every shard); use sequence_layout='zigzag' or 'contiguous'")
  C, H, n = lay.chunk_len, halo_len(spec), lay.n
  ids = lay.chunk_ids()
  sub = ids.shape[1]
  why = spec.pattern.halo_check(spec, C)
  if why:
    raise HaloError(f"{spec.kind} layer {spec}: {why} (seq_len {lay.seq_len}, {n} shards, "
                    f"{lay.kind}); use fewer sequence shards or another layout")
  # ---- halo pieces: previous chunks c-1, c-2, ... until H tokens are covered.
  pieces = []
  for s in range(sub):
    ps = []
    m = -(-H // C) if H else 0
    for p in range(1, m + 1):
      length = min(C, H - (p - 1) * C)
      dst_start = H - (p - 1) * C - length
      by_src: dict[int, list] = {}
      for i in range(n):
        c = int(ids[i, s]) - p
        if c < 0:
          continue
        j, s_src = lay.chunk_owner(c)
        by_src.setdefault(s_src, []).append((j, i))
      ps.append(_Piece(dst_start, length,
                       tuple((ss, tuple(pairs)) for ss, pairs in sorted(by_src.items()))))
    pieces.append(tuple(ps))
  # ---- static branches of the local call.
  def special(c):
    return spec.pattern.halo_special(spec, c * C - H)
  branches, tables = [], []
  for s in range(sub):
    cs = [int(ids[i, s]) for i in range(n)]
    br = sorted({c for c in cs if special(c)})
    if any(not special(c) for c in cs):
      br.append(None)
    branches.append(tuple(br))
    tables.append(tuple(br.index(c if special(c) else None) for c in cs))
  # ---- global tokens (sinks, vertical blocks): per sub-chunk slot s, the in-chunk offsets that
  # any shard's chunk there holds (every shard sends those; the receiver keeps its own chunk's).
  gpos = spec.pattern.global_positions(spec, lay.seq_len)
  gidx = tuple(tuple(sorted({int(p) - int(ids[i, s]) * C for i in range(n) for p in gpos
                             if int(ids[i, s]) * C <= p < (int(ids[i, s]) + 1) * C}))
               for s in range(sub))
  return _Plan(C, H, tuple(map(tuple, ids.tolist())), tuple(pieces), tuple(branches),
               tuple(tables), tuple(int(p) for p in gpos), gidx)


def _sub(x, s, C):
  return x[:, s * C:(s + 1) * C]


def _exchange_halo(cfg: HaloConfig, pl: _Plan, s: int, xs):
  """The ``[B, H, ...]`` halo of destination sub-chunk ``s`` for each array in ``xs``."""
  out = []
  for x in xs:
    parts = []
    for pc in pl.pieces[s]:
      got = None
      for s_src, pairs in pc.sources:
        tail = _sub(x, s_src, pl.C)[:, pl.C - pc.length:]
        r = lax.ppermute(tail, cfg.axis, list(pairs))
        got = r if got is None else got + r
      if got is None:  # no shard has a predecessor at this distance (all special): zeros.
        got = jnp.zeros_like(_sub(x, 0, pl.C)[:, :pc.length])
      parts.append((pc.dst_start, got))
    parts.sort(key=lambda t: t[0])
    out.append(jnp.concatenate([p for _, p in parts], axis=1))
  return out


def _global_tokens(cfg: HaloConfig, pl: _Plan, xs):
  """All-gathered global tokens (``plan(...).global_pos``) in row order, for each of ``xs``."""
  lay, C = cfg.layout, pl.C
  sub = len(pl.chunk_ids[0])
  starts = np.cumsum([0] + [len(g) for g in pl.global_idx])
  gset = set(pl.global_pos)
  out = []
  for x in xs:
    local = jnp.concatenate([_sub(x, s, C)[:, np.asarray(pl.global_idx[s], np.int64)]
                             for s in range(sub) if pl.global_idx[s]], axis=1)
    g = lax.all_gather(local, cfg.axis)                     # [n, B, sum(|global_idx|), ...]
    parts = []
    for c in range(lay.n * sub):
      j, s = lay.chunk_owner(c)
      keep = [starts[s] + r for r, t in enumerate(pl.global_idx[s]) if c * C + t in gset]
      if keep:
        parts.append(g[j][:, np.asarray(keep, np.int64)])
    out.append(jnp.concatenate(parts, axis=1))
  return out


def _attn(cfg, spec, q, k, v, qs, ks, q_off, kv_off):
  return kernel_attention(q, k, v, spec, segment_ids=qs, kv_segment_ids=ks, backend=cfg.backend,
                          q_offset=int(q_off), kv_offset=int(kv_off), scale=cfg.scale,
                          return_lse=True)


def _local_branch(cfg: HaloConfig, pl: _Plan, c):
  """Static local call for chunk ``c`` (``None``: the shared generic call)."""
  spec, C, H = cfg.spec, pl.C, pl.H
  if c is None:
    g_spec, q_off, kv_off = spec.pattern.halo_generic(spec, H)

    def generic(q, k, v, qs, ks):
      return _attn(cfg, g_spec, q, k, v, qs, ks, q_off, kv_off)
    return generic

  lo = max(0, H - c * C)

  def special(q, k, v, qs, ks):
    return _attn(cfg, spec, q, k[:, lo:], v[:, lo:], qs, ks[:, lo:], c * C, c * C - H + lo)
  return special


def halo_attention(q, k, v, q_segment_ids, kv_segment_ids, cfg: HaloConfig):
  """Shard-local sparse attention: ``(out [B, Tl, Hq, D], lse [B, Hq, Tl])``.

  Call inside ``shard_map`` with ``cfg.axis`` manual; inputs are this shard's part of the
  layout-ordered row (``cfg.layout``).
  """
  pl = plan(cfg)
  i = lax.axis_index(cfg.axis)
  C, H = pl.C, pl.H
  if pl.global_pos:
    gk, gv, gs = _global_tokens(cfg, pl, (k, v, kv_segment_ids))
  gpos = jnp.asarray(np.asarray(pl.global_pos, np.int32))
  full = AttentionSpec.full(cfg.spec.block)
  outs, lses = [], []
  hkv = jnp.concatenate([k, v], axis=2)   # one ppermute moves K and V together
  hk_heads = k.shape[2]
  for s in range(len(pl.chunk_ids[0])):
    qs_, ks_ = _sub(q_segment_ids, s, C), _sub(kv_segment_ids, s, C)
    q_, k_, v_ = _sub(q, s, C), _sub(k, s, C), _sub(v, s, C)
    if H:
      h_kv, hs = _exchange_halo(cfg, pl, s, (hkv, kv_segment_ids))
      k_ = jnp.concatenate([h_kv[:, :, :hk_heads], k_], axis=1)
      v_ = jnp.concatenate([h_kv[:, :, hk_heads:], v_], axis=1)
      ks_ = jnp.concatenate([hs, ks_], axis=1)
    fns = [_local_branch(cfg, pl, c) for c in pl.branches[s]]
    if len(fns) == 1:
      part = fns[0](q_, k_, v_, qs_, ks_)
    else:
      idx = jnp.asarray(np.asarray(pl.branch_table[s], np.int32))[i]
      part = lax.switch(idx, fns, q_, k_, v_, qs_, ks_)
    parts = [part]
    if pl.global_pos:
      c_dyn = jnp.asarray(np.asarray([r[s] for r in pl.chunk_ids], np.int32))[i]
      g_seg = jnp.where(gpos[None, :] < c_dyn * C - H, gs, INVALID_SEGMENT)
      parts.append(_attn(cfg, full, q_, gk, gv, qs_, g_seg, gk.shape[1], 0))
    if len(parts) == 1:
      o, l = parts[0]
    else:
      o, l = lse_merge.merge([p[0] for p in parts], [p[1] for p in parts])
    outs.append(o)
    lses.append(l)
  return jnp.concatenate(outs, axis=1), jnp.concatenate(lses, axis=2)
