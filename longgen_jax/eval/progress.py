"""Progress lines for long evaluations (stderr): done / total, running mean, elapsed, ETA."""

from __future__ import annotations

import sys
import time


def _fmt(seconds: float) -> str:
  seconds = int(seconds)
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
  """``update(n, note)`` after each batch; prints one line per update (quiet: nothing)."""

  def __init__(self, label: str, total: int, quiet: bool = False, stream=None):
    self.label = label
    self.total = max(1, int(total))
    self.done = 0
    self.quiet = quiet
    self.stream = stream or sys.stderr
    self.t0 = time.perf_counter()

  def update(self, n: int = 1, note: str = "") -> None:
    self.done += n
    if self.quiet:
      return
    el = time.perf_counter() - self.t0
    eta = el / self.done * (self.total - self.done) if self.done else 0.0
    pct = 100.0 * self.done / self.total
    self.stream.write(f"[{self.label}] {self.done}/{self.total} ({pct:.0f}%) {note} | "
                      f"{_fmt(el)} elapsed, ~{_fmt(eta)} left\n")
    self.stream.flush()
