"""Ring attention for FULL (causal) layers, run inside ``shard_map`` over the sequence axis.

Every shard keeps its queries; the KV chunks travel around the ring with ``lax.ppermute``. The
transfer for step ``s+1`` is issued before the kernel of step ``s`` so XLA can overlap them.
Partial results are merged by log-sum-exp in fp32 (``pallas_kernels.lse_merge``).

Causal structure without dynamic offsets: for a ``full`` spec only the ORDER of positions
matters, so each (query shard ``i``, KV source ``j``) pair falls in a few static cases selected
with ``lax.switch`` on ``(i, j)``; each case calls ``pallas_kernels.attention`` with static
``q_offset``/``kv_offset`` that reproduce the order:

* contiguous: ``j == i`` diagonal, ``j < i`` fully visible, ``j > i`` nothing;
* zigzag (shard i holds chunks i and 2n-1-i): ``j == i`` two calls (diagonal + below);
  ``j < i`` all local queries see KV chunk ``j`` (half the KV); ``j > i`` the second local
  chunk sees both KV chunks (half the queries) -- equal work on every shard at every step;
* striped: ``j <= i`` local causal incl. diagonal; ``j > i`` strictly causal (``kv_offset=1``).

Gradients (``custom_vjp``): the forward saves only local ``q, k, v, out, lse`` (out / lse named
``attn_out`` / ``attn_lse`` like the kernels' residuals). The backward runs the ring again; KV
AND its running ``dK, dV`` travel together (so every step uses the KV it differentiates, never
a stale chunk), and each step's kernel backward gets the cotangents
of the GLOBAL softmax: with ``w_j = exp(lse_j - lse)``, the part's output cotangent is
``w_j * dO`` and its lse cotangent ``w_j * (<dO, O_j - O> + dlse)`` -- exactly
``dS = P_global * (dP - D_global)`` (see ``pallas_kernels/lse_merge.py``). After ``n`` hops
``dK, dV`` are back on their owner.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import lse_merge
from pallas_kernels._common import tag_residuals
from pallas_kernels.api import attention as kernel_attention
from pallas_kernels.spec import AttentionSpec

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class RingConfig:
  """Static description of one full-attention call (hashable: a custom_vjp nondiff arg)."""

  axis: str
  n: int
  layout: str
  spec: AttentionSpec
  backend: str = "auto"
  scale: float | None = None

  def __post_init__(self):
    if not self.spec.is_full:
      raise ValueError(f"ring attention handles 'full' layers only, got {self.spec}; sparse "
                       "layers use halo attention")


# ------------------------------------------------------------------------------------ helpers
def empty_part(q):
  """(zeros output, -inf lse) shaped like a part for queries ``q`` (keeps q's varying axes)."""
  o = q * jnp.zeros((), q.dtype)
  lse = jnp.swapaxes(q[..., 0].astype(F32), 1, 2) * 0.0 + float("-inf")
  return o, lse


def _attn(cfg: RingConfig, q, k, v, qs, ks, q_off: int, kv_off: int):
  return kernel_attention(q, k, v, cfg.spec, segment_ids=qs, kv_segment_ids=ks,
                          backend=cfg.backend, q_offset=q_off, kv_offset=kv_off, scale=cfg.scale,
                          return_lse=True)


def _cat(parts):
  return (jnp.concatenate([p[0] for p in parts], axis=1),
          jnp.concatenate([p[1] for p in parts], axis=2))


def step_branches(cfg: RingConfig, t_local: int):
  """Static per-case functions ``(q, k, v, qs, ks) -> (out, lse)`` for one (i, j) block."""
  if cfg.layout == "zigzag" and cfg.n > 1:
    c = t_local // 2

    def diag(q, k, v, qs, ks):
      a = _attn(cfg, q[:, :c], k[:, :c], v[:, :c], qs[:, :c], ks[:, :c], 0, 0)
      b = _attn(cfg, q[:, c:], k, v, qs[:, c:], ks, c, 0)
      return _cat([a, b])

    def below(q, k, v, qs, ks):  # j < i: every local query sees KV chunk j (first half).
      return _attn(cfg, q, k[:, :c], v[:, :c], qs, ks[:, :c], c, 0)

    def above(q, k, v, qs, ks):  # j > i: only chunk 2n-1-i (second half) sees, all of KV.
      b = _attn(cfg, q[:, c:], k, v, qs[:, c:], ks, 2 * c, 0)
      return _cat([empty_part(q[:, :c]), b])

    return [diag, below, above]
  if cfg.layout == "striped" and cfg.n > 1:
    return [lambda q, k, v, qs, ks: _attn(cfg, q, k, v, qs, ks, 0, 0),
            lambda q, k, v, qs, ks: _attn(cfg, q, k, v, qs, ks, 0, 1)]
  return [lambda q, k, v, qs, ks: _attn(cfg, q, k, v, qs, ks, 0, 0),
          lambda q, k, v, qs, ks: _attn(cfg, q, k, v, qs, ks, t_local, 0),
          lambda q, k, v, qs, ks: empty_part(q)]


def step_case(cfg: RingConfig, i, j):
  """Dynamic branch index for query shard ``i`` and KV source shard ``j``."""
  if cfg.layout == "striped" and cfg.n > 1:
    return jnp.where(j <= i, 0, 1).astype(jnp.int32)
  return jnp.where(j == i, 0, jnp.where(j < i, 1, 2)).astype(jnp.int32)


def block_attention(cfg: RingConfig, q, k, v, qs, ks, i, j):
  """Attention of local queries (shard ``i``) against KV of shard ``j``: ``(out, lse)``."""
  branches = step_branches(cfg, q.shape[1])
  return lax.switch(step_case(cfg, i, j), branches, q, k, v, qs, ks)


def accumulate(o_acc, l_acc, o_s, l_s):
  """Online fp32 merge of one more part into the running (out, lse)."""
  return lse_merge.merge_forward([o_acc, o_s], [l_acc, l_s], out_dtype=F32)


def _shift(cfg: RingConfig, tree):
  perm = [(s, (s + 1) % cfg.n) for s in range(cfg.n)]
  return jax.tree.map(lambda x: lax.ppermute(x, cfg.axis, perm), tree)


def _part_cotangents(o_s, l_s, out, lse, dout, dlse):
  """Output / lse cotangents of one part under the global softmax statistics."""
  finite = jnp.isfinite(l_s) & jnp.isfinite(lse)
  w = jnp.where(finite, jnp.exp(jnp.where(finite, l_s - lse, 0.0)), 0.0)  # [B, H, T]
  w_o = jnp.swapaxes(w, 1, 2)[..., None]
  do32 = dout.astype(F32)
  inner = jnp.swapaxes(jnp.sum(do32 * (o_s.astype(F32) - out.astype(F32)), axis=-1), 1, 2)
  return (w_o * do32).astype(o_s.dtype), w * (inner + dlse.astype(F32))


# ------------------------------------------------------------------------------------ ring
def init_accumulator(q):
  """(zero fp32 output, -inf lse) that starts an online merge (keeps q's varying axes)."""
  o, lse = empty_part(q)
  return o.astype(F32), lse


def _ring_forward(cfg: RingConfig, q, k, v, qs, ks):
  i = lax.axis_index(cfg.axis)
  n = cfg.n

  def body(carry, s):
    kv_cur, o, lse = carry
    kv_nxt = _shift(cfg, kv_cur)       # issued before this step's kernel: overlaps with it
    o_s, l_s = block_attention(cfg, q, kv_cur[0], kv_cur[1], qs, kv_cur[2], i, (i - s) % n)
    o, lse = accumulate(o, lse, o_s, l_s)
    return (kv_nxt, o, lse), None

  # One scan over the n steps (one traced copy of the step: small HLO, fast compiles). The
  # transfer issued by the last step is unused (1/n extra traffic, hidden behind compute).
  (_, o, lse), _ = lax.scan(body, ((k, v, ks),) + init_accumulator(q), jnp.arange(n))
  return o.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg, q, k, v, qs, ks):
  return _ring_forward(cfg, q, k, v, qs, ks)


def _ring_fwd(cfg, q, k, v, qs, ks):
  # Named like the kernels' residuals: ``save_attention`` keeps the ring forward out of the
  # backward's recomputation too (saving only the local out / lse).
  out, lse = tag_residuals(*_ring_forward(cfg, q, k, v, qs, ks))
  return (out, lse), (q, k, v, qs, ks, out, lse)


def _ring_bwd(cfg, res, g):
  q, k, v, qs, ks, out, lse = res
  dout, dlse = g
  i = lax.axis_index(cfg.axis)
  n = cfg.n

  def body(carry, s):
    kv_cur, dkv_cur, dq = carry
    kv_nxt = _shift(cfg, kv_cur)
    kc, vc, ksc = kv_cur
    fn = lambda q_, k_, v_: block_attention(cfg, q_, k_, v_, qs, ksc, i, (i - s) % n)
    (o_s, l_s), vjp = jax.vjp(fn, q, kc, vc)
    dq_s, dk_s, dv_s = vjp(_part_cotangents(o_s, l_s, out, lse, dout, dlse))
    # dK, dV travel WITH their KV chunk; after n hops they are back on the owner.
    dkv_nxt = _shift(cfg, (dkv_cur[0] + dk_s.astype(F32), dkv_cur[1] + dv_s.astype(F32)))
    return (kv_nxt, dkv_nxt, dq + dq_s.astype(F32)), None

  zeros = lambda x: x.astype(F32) * 0.0   # keeps x's varying mesh axes (shard_map typing)
  init = ((k, v, ks), (zeros(k), zeros(v)), zeros(q))
  (_, (dk, dv), dq), _ = lax.scan(body, init, jnp.arange(n))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(q, k, v, q_segment_ids, kv_segment_ids, cfg: RingConfig):
  """Shard-local ring attention: ``(out [B, Tl, Hq, D], lse [B, Hq, Tl])``.

  Call inside ``shard_map`` with ``cfg.axis`` manual; ``q, k, v`` and the segment ids are this
  shard's part of the (layout-ordered) row.
  """
  return _ring(cfg, q, k, v, q_segment_ids, kv_segment_ids)
