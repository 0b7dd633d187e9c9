"""Per-source length upsampling (Fu et al. 2024) and the hashed eval split.

The recipe LongGen inherits (docs/data.md, "Length upsampling"): inside each source, keep
every document of at least `threshold` tokens, and keep a shorter one with
probability `keep_prob` (Fu et al.: threshold 4096, keep_prob 0.1). Mixture
weights across sources stay as configured, so long documents are upsampled
*within* each source without changing the domain mix.

The keep decision is a pure function of (seed, source name, document index):
a 64-bit SplitMix hash mapped to [0, 1). So it is deterministic, resumable,
identical on every host and independent of shuffling, epochs and workers; the
kept set is a fixed sub-corpus, as in the paper's one-off down-sampling.

The eval split (`eval_fraction`) uses the same hash with a different salt:
document i of a source is held out when u(i) < eval_fraction.
"""

from __future__ import annotations

import zlib

_MASK = (1 << 64) - 1
_EVAL_SALT = 0x5EED_E7A1


def _splitmix64(x: int) -> int:
  x = (x + 0x9E3779B97F4A7C15) & _MASK
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
  return x ^ (x >> 31)


def name_salt(name: str) -> int:
  """A stable 32-bit salt for a source name (crc32; no Python hash seed)."""
  return zlib.crc32(name.encode("utf-8"))


def doc_uniform(seed: int, salt: int, index: int) -> float:
  """A uniform number in [0, 1) determined by (seed, salt, index) alone."""
  h = _splitmix64(_splitmix64(_splitmix64(seed & _MASK) ^ (salt & _MASK)) ^ (index & _MASK))
  return (h >> 11) * (1.0 / (1 << 53))


def keep_document(length: int, index: int, *, threshold: int | None, keep_prob: float, seed: int,
                  salt: int) -> bool:
  """Whether the upsampling recipe keeps document `index` of `length` tokens.

  Documents with `length >= threshold` are always kept; shorter ones with
  probability `keep_prob`. `threshold=None` keeps everything.
  """
  if threshold is None or keep_prob >= 1.0 or length >= threshold:
    return True
  return doc_uniform(seed, salt, index) < keep_prob


def is_eval_document(index: int, *, eval_fraction: float, salt: int) -> bool:
  """Whether document `index` of a source is in the hashed eval split."""
  if eval_fraction <= 0.0:
    return False
  return doc_uniform(_EVAL_SALT, salt, index) < eval_fraction
