"""One attention forward call, bracketed for Nsight Compute: ours (the Mosaic GPU forward with a
``benchmarks/mosaic_fwd.py`` variant) or FlashAttention-4's native causal kernel.

``ncu --profile-from-start off`` records only the kernels between ``cuProfilerStart`` and
``cuProfilerStop``, which this script calls around one call made after two warm-up calls
(compilation and the input generation stay outside). B=1, H=32 (MHA), D=128, bf16, as
``mosaic_fwd.py``. The profile compares where the time goes in our forward and FA4's (issue
stalls, tensor-pipe activity, barrier waits); the timings themselves come from
``mosaic_fwd.py`` and ``attention.py``, not from here. On the GPU machine (Firecracker runtime;
``--clock-control none`` leaves the clocks alone, as the device notes ask):

  ncu --clock-control none --profile-from-start off --set full --import-source no -f \\
      -o $OUT/prof_ours python3 benchmarks/profile_forward.py ours --length 65536 --pattern full
  ncu -i $OUT/prof_ours.ncu-rep --page details > $OUT/prof_ours.txt
  ncu -i $OUT/prof_ours.ncu-rep --page source --csv --print-source sass > $OUT/prof_ours_sass.csv

``fa4`` needs flash-attn-4 importable (``../shared/tools/fa4_carry.sh``) and only takes
``--pattern full`` (``flash_attn_func(causal=True)``). Needs a GPU (Hopper for ``ours``).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mosaic_ab  # noqa: E402  pylint: disable=wrong-import-position
import mosaic_fwd  # noqa: E402  pylint: disable=wrong-import-position

PROG = "benchmarks/profile_forward.py"


def _ours(length: int, pattern: str, variant: str):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu_mosaic as pm  # pylint: disable=g-import-not-at-top
  from pallas_kernels.spec import AttentionSpec  # pylint: disable=g-import-not-at-top
  spec = AttentionSpec.parse(mosaic_ab.PATTERNS[pattern])
  cfg = dataclasses.replace(pm.MosaicConfig(), **mosaic_fwd.VARIANTS[variant])
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (1, length, 32, 128), jnp.bfloat16) for kk in ks)
  return lambda: jax.block_until_ready(pm.sparse_attention_fwd(q, k, v, spec, cfg))


def _fa4(length: int):
  import torch  # pylint: disable=g-import-not-at-top
  from flash_attn.cute import flash_attn_func  # pylint: disable=g-import-not-at-top
  q, k, v = (torch.randn(1, length, 32, 128, dtype=torch.bfloat16, device="cuda")
             for _ in range(3))

  def call():
    flash_attn_func(q, k, v, causal=True)
    torch.cuda.synchronize()
  return call


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("kernel", choices=["ours", "fa4"])
  p.add_argument("--length", type=int, default=65536)
  p.add_argument("--pattern", default="full", choices=list(mosaic_ab.PATTERNS))
  p.add_argument("--variant", default="default", choices=list(mosaic_fwd.VARIANTS),
                 help="ours: a benchmarks/mosaic_fwd.py variant")
  args = p.parse_args(argv)
  if args.kernel == "fa4" and (args.pattern != "full" or args.variant != "default"):
    p.error("fa4 takes only --pattern full and the default variant (its native causal kernel)")
  if args.kernel == "ours" and mosaic_ab.no_gpu("profile_forward.py"):
    return 2
  try:
    cuda = ctypes.CDLL("libcuda.so.1")
  except OSError:
    print(f"{PROG}: needs a GPU (no libcuda.so.1)", file=sys.stderr)
    return 2
  call = _ours(args.length, args.pattern, args.variant) if args.kernel == "ours" else _fa4(
      args.length)
  call()
  call()
  cuda.cuProfilerStart()
  call()
  cuda.cuProfilerStop()
  print(f"{PROG}: profiled one {args.kernel} forward ({args.pattern}, L={args.length}, "
        f"variant {args.variant})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
