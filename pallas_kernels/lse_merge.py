"""Merging partial attention results by log-sum-exp.

Attention over a key set split into disjoint parts ``K = K_1 u ... u K_n`` can be computed part by
part: each part gives ``(out_i, lse_i)`` with ``out_i = softmax(s_i) v_i`` and
``lse_i = log sum_j exp(s_ij)`` (natural log, ``-inf`` when the part has no visible key for that
query). The exact attention over the union is

    lse = log sum_i exp(lse_i),     out = sum_i exp(lse_i - lse) * out_i.

Used by the cuDNN sink + window path (window part from cuDNN, sink part dense) and by ring /
halo attention (one part per KV chunk).

Layouts follow the public attention contract (docs/architecture.md §2): ``out [B, T, H, D]``,
``lse [B, H, T]`` fp32. All arithmetic is fp32.

Two ways to differentiate a merged attention:

* ``merge`` is a ``custom_vjp`` whose backward gives each part its output cotangent
  ``a_i * dO`` and its lse cotangent ``a_i * (<dO, out_i - out> + dlse)`` (``a_i = exp(lse_i -
  lse)``). Exact whenever every part is differentiable in both its output and its lse (the
  reference backend, the blocked XLA backend). Rows with ``lse = -inf`` get zero cotangents
  (no NaN).
* Kernels whose backward ignores an lse cotangent (cuDNN's does) instead run each part's backward
  with the MERGED statistics: the flash backward of part ``i`` called with the final ``out``,
  the final ``lse`` and ``dO`` (and ``dlse`` folded into ``delta``, see ``delta``) yields exactly
  that part's share of dQ and its dK, dV. ``cudnn`` does this; ring attention can too.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

NEG_INF = float("-inf")


def _lse_to_out(x):
  """[B, H, T] -> [B, T, H, 1] (broadcasts against an output)."""
  return jnp.swapaxes(x, 1, 2)[..., None]


def _check(outs, lses):
  if len(outs) != len(lses) or not outs:
    raise ValueError(f"merge needs as many outputs as lses (>= 1), got {len(outs)} and "
                     f"{len(lses)}")
  shape = outs[0].shape
  if len(shape) != 4:
    raise ValueError(f"partial outputs must be [B, T, H, D], got shape {shape}")
  want = (shape[0], shape[2], shape[1])
  for o, l in zip(outs, lses):
    if o.shape != shape:
      raise ValueError(f"partial outputs differ in shape: {o.shape} vs {shape}")
    if l.shape != want:
      raise ValueError(f"partial lse must be [B, H, T] = {want}, got {l.shape}")


def merge_weights(lses: Sequence[jax.Array]):
  """Returns (weights, lse): ``weights[i] = exp(lse_i - lse)`` (0 where undefined), merged lse.

  ``weights[i]`` and ``lse`` are fp32 ``[B, H, T]``; rows where every part is ``-inf`` get
  ``lse = -inf`` and all weights 0.
  """
  ls = [jnp.asarray(l, jnp.float32) for l in lses]
  m = ls[0]
  for l in ls[1:]:
    m = jnp.maximum(m, l)
  finite = jnp.isfinite(m)
  m_safe = jnp.where(finite, m, 0.0)
  e = [jnp.where(jnp.isfinite(l), jnp.exp(l - m_safe), 0.0) for l in ls]
  s = sum(e[1:], e[0])
  ok = s > 0
  s_safe = jnp.where(ok, s, 1.0)
  lse = jnp.where(ok, m_safe + jnp.log(s_safe), NEG_INF)
  return [x / s_safe for x in e], lse


def merge_forward(outs: Sequence[jax.Array], lses: Sequence[jax.Array], out_dtype=None):
  """The merge without a custom gradient (use inside other custom_vjp rules).

  Returns ``(out, lse)``: ``out`` in ``out_dtype`` (default: ``outs[0].dtype``), lse fp32.
  """
  _check(outs, lses)
  w, lse = merge_weights(lses)
  acc = sum(_lse_to_out(wi) * oi.astype(jnp.float32) for wi, oi in zip(w, outs))
  return acc.astype(out_dtype or outs[0].dtype), lse


def delta(out, dout, dlse=None):
  """Flash-attention backward row term ``D = <dO, O> - dlse`` ([B, H, T] fp32).

  With ``dlse`` the cotangent of the lse, ``dS_ij = P_ij * (dP_ij - D_i)`` is the exact score
  cotangent of an attention whose output and lse are both used.
  """
  d = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, T, H]
  d = jnp.swapaxes(d, 1, 2)
  return d if dlse is None else d - dlse.astype(jnp.float32)


@jax.custom_vjp
def _merge(outs, lses):
  return merge_forward(outs, lses)


def _merge_fwd(outs, lses):
  out, lse = merge_forward(outs, lses)
  return (out, lse), (outs, lses)


def _merge_bwd(res, g):
  outs, lses = res
  dout, dlse = g
  w, _ = merge_weights(lses)
  merged = sum(_lse_to_out(wi) * oi.astype(jnp.float32) for wi, oi in zip(w, outs))
  dout32 = dout.astype(jnp.float32)
  d_outs, d_lses = [], []
  for wi, oi, li in zip(w, outs, lses):
    d_outs.append((_lse_to_out(wi) * dout32).astype(oi.dtype))
    inner = jnp.swapaxes(jnp.sum(dout32 * (oi.astype(jnp.float32) - merged), axis=-1), 1, 2)
    d_lses.append((wi * (inner + dlse.astype(jnp.float32))).astype(li.dtype))
  return d_outs, d_lses


_merge.defvjp(_merge_fwd, _merge_bwd)


def merge(outs: Sequence[jax.Array], lses: Sequence[jax.Array]):
  """Exact attention over the union of disjoint key sets from per-part ``(out_i, lse_i)``.

  Args:
    outs: partial outputs ``[B, T, H, D]`` (any float dtype; a row with ``lse_i = -inf`` may hold
      anything finite).
    lses: partial log-sum-exps ``[B, H, T]`` (natural log, ``-inf`` for an empty row).

  Returns:
    ``(out, lse)``: ``out [B, T, H, D]`` in ``outs[0].dtype`` (zero rows where everything is
    empty), ``lse [B, H, T]`` fp32. Differentiable in every ``out_i`` and ``lse_i``.
  """
  outs, lses = list(outs), [jnp.asarray(l, jnp.float32) for l in lses]
  _check(outs, lses)
  return _merge(outs, lses)
