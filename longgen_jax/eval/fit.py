"""Fitting a haystack to a token budget (RULER's length fitting).

A task builds its prompt from ``n`` haystack units (sentences, list items, noise lines) with
``build(n)``; ``fit_units`` finds the largest ``n`` whose prompt has at most ``budget`` tokens
under the model's tokenizer (token counts grow monotonically with ``n``). It gallops from a guess
(the previous sample's answer) and then bisects, so a grid of samples at one length costs a few
tokenizations each.
"""

from __future__ import annotations

from typing import Callable

from longgen_jax.eval.errors import EvalError


class TokenCounter:
  """``count(text)``: the number of tokens of ``text`` (no special tokens)."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer

  def count(self, text: str) -> int:
    enc = getattr(self.tokenizer, "encode_array", None)
    return len(enc(text)) if enc is not None else len(self.tokenizer.encode(text))


def fit_units(build: Callable[[int], str], budget: int, count: Callable[[str], int],
              guess: int | None = None, max_units: int | None = None) -> tuple[int, str]:
  """Largest ``n`` (>= 1) with ``count(build(n)) <= budget``; returns ``(n, build(n))``."""
  if budget < 1:
    raise EvalError(f"token budget {budget} leaves no room for a prompt")
  cache: dict[int, int] = {}

  def fits(n: int) -> bool:
    if n not in cache:
      cache[n] = count(build(n))
    return cache[n] <= budget

  if not fits(1):
    raise EvalError(f"even the shortest prompt ({cache[1]} tokens) exceeds the budget of "
                    f"{budget} tokens; use a longer length")
  cap = max_units if max_units is not None else max(1, budget)
  lo = 1
  hi = min(cap, max(2, guess or 2))
  # Gallop: find hi that does not fit (or the cap).
  while hi < cap and fits(hi):
    lo, hi = hi, min(cap, hi * 2)
  if hi == cap and fits(hi):
    return hi, build(hi)
  if guess and guess > 1 and not fits(hi):
    # The guess may overshoot: gallop downward for a fitting lower bound.
    step = 1
    while hi - step > lo and not fits(hi - step):
      hi -= step
      step *= 2
    if hi - step > lo:
      lo = hi - step
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if fits(mid):
      lo = mid
    else:
      hi = mid
  return lo, build(lo)
