"""The Mosaic GPU forward alone, variant against variant, on one GPU (an A/B check).

``benchmarks/attention.py`` times whole cells through the public API. This script times only
``pallas_kernels/backends/pallas_gpu_mosaic.py``'s ``sparse_attention_fwd`` with ``MosaicConfig``
variants (``shortest_first``: the query rows' CTAs shortest first, the order before
2026-12-07; the default takes the longest first; ``kv64_mcs4``: 64-key tiles in a ring of 4
slots, the same shared memory as the default's 2 slots of 128 keys; a ring of 3 slots of 128
keys would need 232568 bytes of the 232448; ``overlap``: FA4's Sm90 schedule, intra-warpgroup
overlap with named-barrier turns, ``pallas_gpu_mosaic_overlap``; ``persistent``: 132 persistent
CTAs, an H100's or H200's SM count), in one process with the same inputs.
(FA3's named-barrier scheduler, timed here as ``named`` / ``named_pv`` on 2026-12-07 and 6-10%
slower, was removed; ``git show ac5c9ce:benchmarks/mosaic_fwd.py``.) B=1, H=32 query heads,
D=128, bf16. Timing is ``benchmarks/bench_timing.py``'s (back-to-back calls, one
synchronisation per loop, median of 5 loops), as in ``attention.py``.
Useful forward FLOPs = 4 * visible pairs * D * H.

  python3 benchmarks/mosaic_fwd.py --lengths 65536 131072 --patterns full --out $OUT/mosaic_fwd.json

Each row also gives the relative L2 error of the output against the first row of its pattern and
length (the default config). Needs a Hopper GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mosaic_ab  # noqa: E402  pylint: disable=wrong-import-position

# name -> MosaicConfig overrides; the first is every cell's reference row
VARIANTS = {
    "default": {},
    "shortest_first": {"longest_first": False},
    "kv64_mcs4": {"block_kv": 64, "max_concurrent_steps": 4},
    "overlap": {"overlap": True},
    "persistent": {"persistent_ctas": 132},
    "overlap_persistent": {"overlap": True, "persistent_ctas": 132},
}
PATTERNS = mosaic_ab.PATTERNS


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", type=int, nargs="+", default=[65536, 131072])
  p.add_argument("--kv-heads", type=int, default=32, help="32 = MHA, 8 = GQA 32/8")
  p.add_argument("--patterns", nargs="+", default=["full"], choices=list(PATTERNS))
  p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  p.add_argument("--out", default=None, help="JSON file for the rows")
  args = p.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu_mosaic as pm  # pylint: disable=g-import-not-at-top
  from pallas_kernels.spec import AttentionSpec  # pylint: disable=g-import-not-at-top

  if mosaic_ab.no_gpu("mosaic_fwd.py"):
    return 2
  hq, hkv, d = 32, args.kv_heads, 128
  rows = []
  print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, heads {hq}/{hkv}")
  for L in args.lengths:
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(ks[0], (1, L, hq, d), jnp.bfloat16)
    k = jax.random.normal(ks[1], (1, L, hkv, d), jnp.bfloat16)
    v = jax.random.normal(ks[2], (1, L, hkv, d), jnp.bfloat16)
    for pattern in args.patterns:
      spec = AttentionSpec.parse(PATTERNS[pattern])
      useful = 4.0 * spec.visible_pairs(L) * d * hq
      ref = None
      for name in args.variants:
        cfg = dataclasses.replace(pm.MosaicConfig(), **VARIANTS[name])
        fn = jax.jit(functools.partial(pm.sparse_attention_fwd, spec=spec, config=cfg))
        row = mosaic_ab.new_row(pattern, spec, name, cfg, L, hq, hkv)
        ref = mosaic_ab.time_row(row, lambda fn=fn: fn(q, k, v), useful,
                                 lambda out_lse: out_lse[:1], ref)   # err: the output's
        rows.append(row)
        mosaic_ab.write_rows(args.out, rows)   # after every row: a timeout keeps the rest
        print(f"L={L:6d} {pattern:12s} {name:16s} {mosaic_ab.shown(row)}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
