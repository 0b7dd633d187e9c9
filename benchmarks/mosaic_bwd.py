"""The Mosaic GPU backward kernels alone, variant against variant, on one GPU (an A/B check).

``benchmarks/attention.py`` times whole forward+backward cells through the public API. This script
times only the backward of ``pallas_kernels/backends/pallas_gpu_mosaic_bwd.py``: the two kernels
(``sparse_attention_dq`` + ``sparse_attention_dkv``, ``bwd_impl="mosaic"``) and the single-pass
``sparse_attention_bwd`` ("fused", the default), each with ``MosaicBwdConfig`` variants
(``*_before``: the settings until 2026-12-06), in one process with
the same inputs. B=1, H=32 query heads, D=128, bf16; the forward outputs come from the Mosaic
forward. Timing is ``benchmarks/bench_timing.py``'s (back-to-back calls, one synchronisation per
loop, median of 5 loops), as in ``attention.py``. Useful backward FLOPs = 2.5 x the forward's
4 * visible pairs * D * H (the convention of ``attention.py``: forward+backward = 3.5 x forward).

  python3 benchmarks/mosaic_bwd.py --length 65536 --out $OUT/mosaic_bwd_64k.json
  python3 benchmarks/mosaic_bwd.py --length 131072 --kv-heads 8 --patterns strided

Each row also gives the relative L2 error of (dq, dk, dv) against the first row of its pattern
(the two kernels with the default config). Needs a Hopper GPU. With ``MOSAIC_GPU_DUMP_PTXAS=1``
in the environment, ptxas prints each kernel's registers and spills as it compiles.
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

# name -> (kernel, MosaicBwdConfig overrides); the first is every pattern's reference row
VARIANTS = {
    "two_kernel": ("two", {}),
    "two_kernel_before": ("two", {"rederive": False, "registers": (232, 40)}),
    "fused": ("fused", {}),
    "fused_before": ("fused", {"rederive": False, "registers": (232, 40)}),
    "fused_no_rederive": ("fused", {"rederive": False}),
    "fused_regs232": ("fused", {"registers": (232, 40)}),
}
PATTERNS = mosaic_ab.PATTERNS


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--length", type=int, default=65536)
  p.add_argument("--kv-heads", type=int, default=32, help="32 = MHA, 8 = GQA 32/8")
  p.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
  p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  p.add_argument("--out", default=None, help="JSON file for the rows")
  args = p.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends._frame import bwd_row_stats  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu_mosaic as pm  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb  # pylint: disable=g-import-not-at-top
  from pallas_kernels.spec import AttentionSpec  # pylint: disable=g-import-not-at-top

  if mosaic_ab.no_gpu("mosaic_bwd.py"):
    return 2
  L, hq, hkv, d = args.length, 32, args.kv_heads, 128
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(ks[0], (1, L, hq, d), jnp.bfloat16)
  k = jax.random.normal(ks[1], (1, L, hkv, d), jnp.bfloat16)
  v = jax.random.normal(ks[2], (1, L, hkv, d), jnp.bfloat16)
  do = jax.random.normal(ks[3], (1, L, hq, d), jnp.bfloat16)
  rows = []
  print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, L={L}, heads {hq}/{hkv}")
  for pattern in args.patterns:
    spec = AttentionSpec.parse(PATTERNS[pattern])
    out, lse2 = pm.sparse_attention_fwd(q, k, v, spec)
    lse2, delta = bwd_row_stats(out, lse2, do, None)   # as pallas_gpu's backward passes them
    useful = 2.5 * 4.0 * spec.visible_pairs(L) * d * hq
    ref = None
    for name in args.variants:
      kind, over = VARIANTS[name]
      cfg = dataclasses.replace(mb.MosaicBwdConfig(), **over)
      fn = jax.jit(functools.partial(mb.gradients, spec=spec, config=cfg,
                                     fused=kind == "fused"))
      row = mosaic_ab.new_row(pattern, spec, name, cfg, L, hq, hkv)
      ref = mosaic_ab.time_row(row, lambda fn=fn: fn(q, k, v, do, lse2, delta), useful,
                               lambda grads: grads, ref)
      rows.append(row)
      mosaic_ab.write_rows(args.out, rows)   # after every row: a timeout keeps the rest
      print(f"{pattern:12s} {name:24s} {mosaic_ab.shown(row)}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
