"""Chunked next-token cross-entropy that never materialises the full ``[B, T, V]`` logits.

At 128K tokens and a 32K vocabulary, fp32 logits are 16.8 GB per sequence, and their gradient as
much again. Instead the trainer asks the model for the final hidden states ``[B, T, D]`` and the
unembedding ``[D, V]``, and :func:`chunked_cross_entropy` scans over sequence chunks of
``chunk`` tokens: each step computes ``[B, chunk, V]`` logits, their log-sum-exp and the target
logit, and keeps only two scalars. The chunk body is rematerialised (``jax.checkpoint``), so the
backward pass recomputes one chunk's logits at a time as well: peak logit memory is
``B * chunk * V`` fp32 in both directions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _chunk_loss(hidden: jax.Array, unembed: jax.Array, targets: jax.Array,
                mask: jax.Array) -> jax.Array:
  """Sum of masked cross-entropy over one chunk. hidden [B, C, D], targets/mask [B, C]."""
  logits = jnp.einsum("bcd,dv->bcv", hidden, unembed.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((lse - target_logit) * mask)


def chunked_cross_entropy(hidden: jax.Array, unembed: jax.Array, targets: jax.Array,
                          mask: jax.Array, *, chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """Masked next-token cross-entropy, summed (not averaged), computed ``chunk`` tokens at a time.

  Args:
    hidden: final hidden states ``[B, T, D]`` (after the final norm), in the compute dtype.
    unembed: unembedding matrix ``[D, V]``; cast to ``hidden.dtype``, accumulated in fp32.
    targets: int32 ``[B, T]`` target token ids.
    mask: ``[B, T]`` loss weights (0 for padding and for tokens not to be predicted).
    chunk: tokens per chunk along the sequence; 0 (or >= T) computes the whole row at once.

  Returns:
    ``(loss_sum, weight_sum)``: fp32 scalars. ``loss_sum / weight_sum`` is the mean loss in nats.
  """
  B, T, D = hidden.shape
  if targets.shape != (B, T) or mask.shape != (B, T):
    raise ValueError(f"targets {targets.shape} and mask {mask.shape} must be {(B, T)}")
  mask = mask.astype(jnp.float32)
  weight_sum = jnp.sum(mask)
  if chunk <= 0 or chunk >= T:
    return _chunk_loss(hidden, unembed, targets, mask), weight_sum
  if T % chunk:
    raise ValueError(f"sequence length {T} is not a multiple of the loss chunk {chunk}")
  n = T // chunk

  def split(x):  # [B, T, ...] -> [n, B, chunk, ...]
    return jnp.swapaxes(x.reshape(B, n, chunk, *x.shape[2:]), 0, 1)

  chunk_loss = jax.checkpoint(_chunk_loss, policy=jax.checkpoint_policies.nothing_saveable)

  def body(total, xs):
    h, t, m = xs
    return total + chunk_loss(h, unembed, t, m), None

  loss_sum, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                             (split(hidden), split(targets), split(mask)))
  return loss_sum, weight_sum
