"""One timing method for every attention benchmark cell, JAX and torch alike.

``time_cell(call, sync)`` runs ``call()`` once (compile + warm-up), once more to size the loops,
then ``loops`` loops of ``n`` back-to-back calls with ONE synchronisation at the end of each loop
(``sync(last_output)``); the cell's time is the median over loops of (loop time / n). ``n`` makes
a loop last about ``target_s`` (at least ``min_n`` calls). Back-to-back calls keep the GPU queue
full, so neither a host round trip per call nor the first call's launch latency is counted.

Cross-checks (each side's usual way, reported next to the main number, never instead of it):
``time_sync_each`` (median of individually synchronised calls: the old harness's method) and, on
the torch side, ``triton.testing.do_bench``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable


@dataclasses.dataclass
class CellTime:
  ms: float                 # median over loops of the per-call time
  loop_ms: list[float]      # per-call time of each loop
  n: int                    # calls per loop
  compile_s: float          # the first call, compile included
  output: Any = None        # the last call's output (for error checks)


def time_cell(call: Callable[[], Any], sync: Callable[[Any], Any], *, loops: int = 5,
              target_s: float = 0.2, min_n: int = 3, max_n: int = 200,
              warm_s: float = 0.0) -> CellTime:
  """Back-to-back timing (module docstring). ``warm_s`` > 0: after the first call, run the call
  back to back for about that long, not recorded (clocks up before a block's first cell)."""
  t0 = time.perf_counter()
  out = call()
  sync(out)
  compile_s = time.perf_counter() - t0
  t_end = time.perf_counter() + warm_s
  while time.perf_counter() < t_end:
    out = call()
    sync(out)
  t0 = time.perf_counter()
  out = call()
  sync(out)
  one = max(time.perf_counter() - t0, 1e-5)
  n = int(min(max_n, max(min_n, math.ceil(target_s / one))))
  per = []
  for _ in range(loops):
    t0 = time.perf_counter()
    for _ in range(n):
      out = call()
    sync(out)
    per.append((time.perf_counter() - t0) / n * 1e3)
  return CellTime(statistics.median(per), per, n, compile_s, out)


def time_sync_each(call: Callable[[], Any], sync: Callable[[Any], Any], reps: int = 10) -> float:
  """Median ms of ``reps`` individually synchronised calls (call already compiled)."""
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    sync(call())
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3
