"""Rotary position embeddings (RoPE), numerically matching Hugging Face transformers.

* ``inv_frequencies`` reproduces ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` (and
  the default init) for ``none`` / ``linear`` / ``dynamic_ntk`` / ``yarn`` / ``llama3``. The
  frequencies are computed in float64 with numpy and returned as float32.
* Layout: HF "rotate half": the head dim is two halves ``[x1, x2]``; the rotation pairs ``x1[i]``
  with ``x2[i]`` and uses ``cos``/``sin`` of ``concat(freqs, freqs)``.
* Positions are given per token (``[B, T]`` int), so packed documents restart at 0.
* ``yarn``'s attention factor multiplies cos and sin (as in HF), i.e. it scales q.k by its square.

Dynamic NTK is STATIC here: HF recomputes the base from the longest position of every batch
(``seq_len = max(position) + 1``), which makes a token's embedding depend on the batch it is in.
We build the table once for ``ModelConfig.max_seq_len`` (HF with ``seq_len=max_seq_len``;
identical to no scaling when ``max_seq_len <= original_max_position``). Inference at a longer
context calls ``inv_frequencies(rope, head_dim, seq_len=L)`` explicitly for its own table.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from longgen_jax.model.config import ModelConfig, RopeConfig


def _default_inv_freq(theta: float, dim: int) -> np.ndarray:
  return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def _yarn(rope: RopeConfig, dim: int) -> tuple[np.ndarray, float]:
  base, factor = rope.theta, rope.factor
  orig = rope.original_max_position

  def get_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

  attention_factor = rope.attention_factor
  if attention_factor is None:
    if rope.mscale and rope.mscale_all_dim:
      attention_factor = get_mscale(factor, rope.mscale) / get_mscale(factor, rope.mscale_all_dim)
    else:
      attention_factor = get_mscale(factor)

  def correction_dim(num_rotations: float) -> float:
    return (dim * math.log(orig / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

  low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
  if rope.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # HF: prevent a singular ramp
  ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
  pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  extrapolation = 1.0 / pos_freqs
  interpolation = 1.0 / (factor * pos_freqs)
  extrapolation_factor = 1.0 - ramp
  inv = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
  return inv, float(attention_factor)


def _llama3(rope: RopeConfig, dim: int) -> np.ndarray:
  inv = _default_inv_freq(rope.theta, dim)
  factor, lo, hi = rope.factor, rope.low_freq_factor, rope.high_freq_factor
  old = rope.original_max_position
  low_freq_wavelen, high_freq_wavelen = old / lo, old / hi
  wavelen = 2 * math.pi / inv
  out = np.where(wavelen > low_freq_wavelen, inv / factor, inv)
  smooth = (old / wavelen - lo) / (hi - lo)
  smoothed = (1 - smooth) * out / factor + smooth * out
  medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(medium, smoothed, out)


def inv_frequencies(rope: RopeConfig, head_dim: int,
                    seq_len: int | None = None) -> tuple[np.ndarray, float]:
  """Returns ``(inv_freq float32 [head_dim // 2], attention_factor)``.

  ``seq_len`` is used by ``dynamic_ntk`` only (HF: ``max(seq_len, original_max_position)``).
  """
  dim = int(head_dim)
  if rope.scaling == "none":
    inv, att = _default_inv_freq(rope.theta, dim), 1.0
  elif rope.scaling == "linear":
    inv, att = _default_inv_freq(rope.theta, dim) / rope.factor, 1.0
  elif rope.scaling == "dynamic_ntk":
    orig = rope.original_max_position
    L = orig if seq_len is None else max(int(seq_len), orig)
    base = rope.theta * ((rope.factor * L / orig) - (rope.factor - 1)) ** (dim / (dim - 2))
    inv, att = _default_inv_freq(base, dim), 1.0
  elif rope.scaling == "yarn":
    inv, att = _yarn(rope, dim)
  elif rope.scaling == "llama3":
    inv, att = _llama3(rope, dim), 1.0
  else:  # unreachable: RopeConfig validates
    raise ValueError(f"unknown rope scaling {rope.scaling!r}")
  return inv.astype(np.float32), float(att)


def model_inv_frequencies(cfg: ModelConfig) -> tuple[np.ndarray, float]:
  """The model's static table: ``inv_frequencies(cfg.rope, cfg.head_dim, cfg.max_seq_len)``."""
  return inv_frequencies(cfg.rope, cfg.head_dim, cfg.max_seq_len)


def cos_sin(positions, inv_freq, attention_factor: float = 1.0):
  """``positions [..., T]`` int -> ``(cos, sin)`` float32 ``[..., T, 2 * len(inv_freq)]``."""
  freqs = jnp.asarray(positions).astype(jnp.float32)[..., None] * jnp.asarray(inv_freq,
                                                                                jnp.float32)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb) * attention_factor, jnp.sin(emb) * attention_factor


def rope_cos_sin(cfg: ModelConfig, positions):
  """``(cos, sin)`` float32 ``[B, T, head_dim]`` of the model's RoPE at ``positions [B, T]``."""
  inv, att = model_inv_frequencies(cfg)
  return cos_sin(positions, inv, att)


def rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, cos, sin):
  """``x [B, T, H, Dh]`` rotated by ``cos, sin [B, T, Dh]`` (in float32; returns ``x.dtype``)."""
  xf = x.astype(jnp.float32)
  c, s = cos[..., None, :], sin[..., None, :]
  return (xf * c + rotate_half(xf) * s).astype(x.dtype)
