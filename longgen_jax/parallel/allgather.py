"""All-gather-KV sequence parallelism for FULL layers (``mesh.sequence_attention="allgather"``).

K, V and the KV segment ids are all-gathered once over the sequence axis; the local queries then
attend to every shard's KV block in turn with the same static case functions as the ring
(``ring.block_attention``), merged by log-sum-exp. Simpler than the ring and often faster at long
sequences with GQA (one collective of ``2 * L * Hkv * D`` per layer, MaxText's default); the
price is O(L) KV memory per device. Gradients are plain autodiff: each block is
``jax.checkpoint``-ed so the backward recomputes it instead of storing ``n`` partial outputs,
and the transpose of ``all_gather`` (a reduce-scatter) returns dK, dV to their owners.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from longgen_jax.parallel import ring as ring_lib


def allgather_attention(q, k, v, q_segment_ids, kv_segment_ids, cfg: ring_lib.RingConfig):
  """Shard-local all-gather attention: ``(out [B, Tl, Hq, D], lse [B, Hq, Tl])``."""
  i = lax.axis_index(cfg.axis)
  kg = lax.all_gather(k, cfg.axis)           # [n, B, Tl, Hkv, D]
  vg = lax.all_gather(v, cfg.axis)
  sg = lax.all_gather(kv_segment_ids, cfg.axis)

  @jax.checkpoint
  def block(q, kj, vj, ksj, j):
    return ring_lib.block_attention(cfg, q, kj, vj, q_segment_ids, ksj, i, j)

  def body(carry, s):
    o, lse = carry
    j = (i - s) % cfg.n
    take = lambda x: lax.dynamic_index_in_dim(x, j, axis=0, keepdims=False)
    o_s, l_s = block(q, take(kg), take(vg), take(sg), j)
    return ring_lib.accumulate(o, lse, o_s, l_s), None

  (o, lse), _ = lax.scan(body, ring_lib.init_accumulator(q), jnp.arange(cfg.n))
  return o.astype(q.dtype), lse
