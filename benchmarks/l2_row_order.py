"""A model (not a measurement) of the L2 traffic of a causal attention forward's K/V reads, for
the two CTA orders of ``MosaicConfig.longest_first``. CPU only; prints its numbers.

Why: on an H100 (2026-12-07) our full-causal forward gave 626 TFLOP/s at 64K and 568 at 128K at
the same SM clock (about 1550 MHz, power-capped, in both), and cuDNN fell alike (612 -> 550),
while FA4 fell less (686 -> 662). At D=128 one head's K and V are 32 MB at 64K and 64 MB at 128K,
against a 50 MB L2.

The model: the kernel's grid is heads-major, so CTAs run one head's query rows in CTA order
(``slots`` at a time, one per SM); query row ``r`` (of ``rows_per_cta`` tokens) reads K/V tiles
``0..r`` in ascending order (the full-first visit list), one tile per tick, every tile taking the
same time. A CTA that finishes hands its SM to the next one in order. K/V tiles (K and V of one
``block_kv`` block of one head) go through an LRU cache of the L2's size less the resident CTAs'
Q tiles. It prints the cache's miss rate (the share of tile reads that go to HBM), and the
makespan against perfect balance (the tail effect of the order).

  python3 benchmarks/l2_row_order.py                       # 64K and 128K, H100 sizes, ~15 s
  python3 benchmarks/l2_row_order.py --lengths 131072 --l2-mb 60

It ignores the clock, the power cap, hardware L2 policy (not LRU, split in two partitions) and
the scheduler's real dispatch order; a GPU run (``benchmarks/mosaic_fwd.py``) decides.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
import sys


def simulate(n_rows: int, heads: int, slots: int, cap: int, longest_first: bool):
  """(misses, reads, ticks) of the model in the module docstring; ``cap``: the cache size in
  K/V tiles; rows of ``n_rows`` per head, row ``r`` reading tiles ``0..r``."""
  if min(n_rows, heads, slots, cap) < 1:
    raise ValueError(f"n_rows, heads, slots and cap must be >= 1 (got {n_rows}, {heads}, "
                     f"{slots}, {cap})")
  order = [(h, n_rows - 1 - r if longest_first else r) for h in range(heads)
           for r in range(n_rows)]
  nxt = iter(order)
  active = [[h, r, 0] for h, r in (next(nxt) for _ in range(min(slots, len(order))))]
  cache: OrderedDict = OrderedDict()
  misses = reads = ticks = 0
  while active:
    keep = []
    for cta in active:
      h, r, i = cta
      key = (h, i)
      reads += 1
      if key in cache:
        cache.move_to_end(key)
      else:
        misses += 1
        cache[key] = None
        if len(cache) > cap:
          cache.popitem(last=False)
      cta[2] += 1
      if cta[2] <= r:
        keep.append(cta)
      else:
        new = next(nxt, None)
        if new is not None:
          keep.append([new[0], new[1], 0])
    active = keep
    ticks += 1
  return misses, reads, ticks


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", type=int, nargs="+", default=[65536, 131072])
  p.add_argument("--heads", type=int, default=32,
                 help="heads modelled (fewer run faster; the tail effect grows as they shrink)")
  p.add_argument("--slots", type=int, default=132, help="CTAs resident at once (SMs)")
  p.add_argument("--l2-mb", type=float, default=50.0)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--block-kv", type=int, default=128)
  p.add_argument("--rows-per-cta", type=int, default=128, help="2 * MosaicConfig.block_q")
  args = p.parse_args(argv)
  tile = 2 * args.block_kv * args.head_dim * 2                  # K and V, bf16
  q_tiles = args.slots * args.rows_per_cta * args.head_dim * 2   # resident Q tiles
  cap = int((args.l2_mb * 2**20 - q_tiles) // tile)
  print(f"L2 {args.l2_mb} MB: {cap} K/V tiles of {tile // 1024} KB after {args.slots} CTAs' Q; "
        f"{args.heads} heads")
  print(f"{'length':>7} {'K+V per head':>12} {'order':>14} {'L2 miss rate':>12} "
        f"{'makespan / balanced':>19}")
  for L in args.lengths:
    if L % args.rows_per_cta or args.rows_per_cta != args.block_kv:
      print(f"length {L}: the model needs a multiple of --rows-per-cta, and --rows-per-cta equal "
            f"to --block-kv (one K/V tile per query row step)", file=sys.stderr)
      return 2
    n_rows = L // args.rows_per_cta
    work = args.heads * n_rows * (n_rows + 1) // 2
    for lf in (False, True):
      m, r, t = simulate(n_rows, args.heads, args.slots, cap, lf)
      order = "longest first" if lf else "shortest first"
      print(f"{L:7d} {L * tile // args.block_kv / 2**20:9.0f} MB {order:>14} "
            f"{m / r:12.4f} {t / (work / args.slots):19.4f}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
