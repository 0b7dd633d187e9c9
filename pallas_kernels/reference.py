"""Dense-mask reference attention (tests only: allocates [B, H, Tq, Tk] scores)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.spec import AttentionSpec

NEG_INF = float("-inf")


def reference_attention(q, k, v, spec: AttentionSpec, *, segment_ids=None, kv_segment_ids=None,
                        q_offset: int = 0, kv_offset: int = 0, scale: float | None = None,
                        return_lse: bool = False):
  """softmax(q k^T * scale + mask) v computed densely in fp32.

  q: [B, Tq, Hq, D]; k, v: [B, Tk, Hkv, D] with Hq % Hkv == 0.
  Returns out [B, Tq, Hq, D] (q.dtype) and, if ``return_lse``, lse [B, Hq, Tq] (fp32, natural
  log; -inf and a zero output for rows that see no key).
  """
  B, Tq, Hq, D = q.shape
  Tk, Hkv = k.shape[1], k.shape[2]
  if Hq % Hkv:
    raise ValueError(f"query heads {Hq} not a multiple of kv heads {Hkv}")
  scale = D ** -0.5 if scale is None else scale
  g = Hq // Hkv
  qf = q.astype(jnp.float32).reshape(B, Tq, Hkv, g, D)
  s = jnp.einsum("bqhgd,bkhd->bhgqk", qf, k.astype(jnp.float32)) * scale
  qpos = jnp.arange(Tq)[:, None] + q_offset
  kpos = jnp.arange(Tk)[None, :] + kv_offset
  mask = spec.allowed(qpos, kpos, xp=jnp)[None]
  if segment_ids is not None:
    kvs = segment_ids if kv_segment_ids is None else kv_segment_ids
    mask = mask & (segment_ids[:, :, None] == kvs[:, None, :])
  mask = mask[:, None, None]  # [B,1,1,Tq,Tk]
  s = jnp.where(mask, s, NEG_INF)
  m = jnp.max(s, axis=-1, keepdims=True)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.where(mask, jnp.exp(s - m_safe), 0.0)
  l = jnp.sum(p, axis=-1, keepdims=True)
  o = jnp.einsum("bhgqk,bkhd->bqhgd", p / jnp.where(l == 0, 1.0, l), v.astype(jnp.float32))
  out = o.reshape(B, Tq, Hq, D).astype(q.dtype)
  if not return_lse:
    return out
  lse = jnp.where(l[..., 0] > 0, jnp.log(jnp.where(l[..., 0] > 0, l[..., 0], 1.0)) + m_safe[..., 0],
                  NEG_INF)
  return out, lse.reshape(B, Hq, Tq)


def registry_supports(platform, spec, shapes, dtype):
  """The ``reference`` backend refuses sizes whose dense score matrix would be large."""
  del platform, spec, dtype
  if shapes.q_len * shapes.kv_len > 1 << 26:
    return f"dense reference would allocate {shapes.q_len} x {shapes.kv_len} scores (tests only)"
  return None
