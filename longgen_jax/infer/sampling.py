"""Next-token sampling: greedy, temperature, top-k and top-p (nucleus), inside the jitted step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from longgen_jax.infer.errors import InferError


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How the next token is picked (hashable: a jit static argument).

  Attributes:
    temperature: 0 = greedy (argmax); otherwise logits are divided by it before sampling.
    top_k: keep the k most likely tokens (0 = all).
    top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p``
      (1.0 = all; the most likely token is always kept).
  """

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise InferError(f"temperature must be >= 0, got {self.temperature}")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise InferError(f"top_k must be an int >= 0, got {self.top_k!r}")
    if not 0.0 < self.top_p <= 1.0:
      raise InferError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def filter_logits(logits, params: SamplingParams):
  """Temperature-scaled logits with the tokens outside top-k / top-p set to -inf ([B, V] fp32)."""
  x = logits.astype(jnp.float32) / params.temperature
  V = x.shape[-1]
  if 0 < params.top_k < V:
    kth = jax.lax.top_k(x, params.top_k)[0][..., -1:]
    x = jnp.where(x < kth, -jnp.inf, x)
  if params.top_p < 1.0:
    order = jnp.argsort(-x, axis=-1)
    sorted_x = jnp.take_along_axis(x, order, axis=-1)
    probs = jax.nn.softmax(sorted_x, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs          # mass of the strictly better tokens
    keep_sorted = before < params.top_p                  # the first token always stays
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(x.shape[0])[:, None], order].set(keep_sorted)
    x = jnp.where(keep, x, -jnp.inf)
  return x


def sample(logits, key, params: SamplingParams):
  """``logits [B, V]`` -> ``[B]`` int32 token ids."""
  if params.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits, params), axis=-1).astype(jnp.int32)
