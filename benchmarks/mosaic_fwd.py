"""The Mosaic GPU forward kernels alone, variant against variant, on one GPU (an A/B check).

``benchmarks/attention.py`` times whole cells through the public API. This script times only the
forward kernels: ``pallas_gpu_mosaic.sparse_attention_fwd`` ("default", what
``fwd_impl="auto"`` takes on Hopper; "default_pinned" with ``pin_schedule=True``) and
``pallas_gpu_mosaic_overlap.sparse_attention_fwd``
("overlap", intra-warpgroup overlap; "overlap_pinned" with ``pin_wait=True``;
"overlap_early_pinned" also with ``rescale_early=True``), in one
process with the same inputs. B=1, H=32 query heads, D=128, bf16. Timing is
``benchmarks/bench_timing.py``'s (back-to-back calls, one synchronisation per loop, median of 5
loops), as in ``attention.py``. Useful FLOPs = 4 * visible pairs * D * H (``attention.py``'s
forward convention).

  python3 benchmarks/mosaic_fwd.py --length 65536 --out $OUT/mosaic_fwd_64k.json
  python3 benchmarks/mosaic_fwd.py --length 131072 --kv-heads 8 --patterns strided

Each row also gives the relative L2 error of the output, and the largest lse difference, against
the first row of its pattern. Needs a Hopper GPU. With ``MOSAIC_GPU_DUMP_PTXAS=1`` in the
environment, ptxas prints each kernel's registers, spills and notes as it compiles.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# name -> (module attribute of pallas_kernels.backends, keyword overrides); the first is every
# pattern's reference row
VARIANTS = {
    "default": ("pallas_gpu_mosaic", {}),
    "default_pinned": ("pallas_gpu_mosaic", {"pin_schedule": True}),
    "overlap": ("pallas_gpu_mosaic_overlap", {}),
    "overlap_pinned": ("pallas_gpu_mosaic_overlap", {"pin_wait": True}),
    "overlap_early_pinned": ("pallas_gpu_mosaic_overlap", {"rescale_early": True,
                                                           "pin_wait": True}),
}
PATTERNS = {"sink_window": "sink_window:64:4096", "strided": "strided:16:64", "full": "full"}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--length", type=int, default=65536)
  p.add_argument("--kv-heads", type=int, default=32, help="32 = MHA, 8 = GQA 32/8")
  p.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
  p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  p.add_argument("--out", default=None, help="JSON file for the rows")
  args = p.parse_args(argv)

  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import bench_timing as timing  # pylint: disable=g-import-not-at-top
  from pallas_kernels.spec import AttentionSpec  # pylint: disable=g-import-not-at-top

  if jax.devices()[0].platform != "gpu":
    print("benchmarks/mosaic_fwd.py: needs a GPU (Hopper); found "
          f"{jax.devices()[0].platform}", file=sys.stderr)
    return 2
  L, hq, hkv, d = args.length, 32, args.kv_heads, 128
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(ks[0], (1, L, hq, d), jnp.bfloat16)
  k = jax.random.normal(ks[1], (1, L, hkv, d), jnp.bfloat16)
  v = jax.random.normal(ks[2], (1, L, hkv, d), jnp.bfloat16)
  rows = []
  print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, L={L}, heads {hq}/{hkv}")
  for pattern in args.patterns:
    spec = AttentionSpec.parse(PATTERNS[pattern])
    useful = 4.0 * spec.visible_pairs(L) * d * hq
    ref = None
    for name in args.variants:
      module, over = VARIANTS[name]
      mod = importlib.import_module(f"pallas_kernels.backends.{module}")
      fn = jax.jit(functools.partial(mod.sparse_attention_fwd, spec=spec, **over))
      row = dict(pattern=pattern, spec=str(spec), variant=name, kernel=module, options=over,
                 L=L, hq=hq, hkv=hkv, ms=None, tflops=None, err=None, lse_diff=None,
                 status="ok")
      try:
        t = timing.time_cell(lambda fn=fn: fn(q, k, v), jax.block_until_ready)
        row.update(ms=t.ms, tflops=useful / (t.ms * 1e-3) / 1e12, compile_s=t.compile_s)
        out, lse2 = (np.asarray(x, np.float32) for x in t.output)
        if ref is None:
          ref = out, lse2
        else:
          row["err"] = float(np.linalg.norm(out - ref[0]) / np.linalg.norm(ref[0]))
          row["lse_diff"] = float(np.nanmax(np.abs(lse2 - ref[1])))
      except Exception as e:  # pylint: disable=broad-except
        row.update(status="error", note=f"{type(e).__name__}: {e}"[:300])
      rows.append(row)
      shown = (f"{row['ms']:8.2f} ms {row['tflops']:6.1f} TFLOP/s err {row['err']} "
               f"lse {row['lse_diff']}" if row["status"] == "ok" else row["note"])
      print(f"{pattern:12s} {name:16s} {shown}", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(rows=rows, date=time.strftime("%Y-%m-%d"),
                     device=jax.devices()[0].device_kind, jax=jax.__version__), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
