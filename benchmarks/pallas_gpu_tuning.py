"""Tuning and timing of the Pallas GPU (Triton) block-sparse attention on one GPU.

Run on the device from the repository root:
  python3 -m benchmarks.pallas_gpu_tuning --out $OUT/bench.jsonl                   # JAX part
  python3 -m benchmarks.pallas_gpu_tuning --flex --out $OUT/flex.jsonl             # torch peer

Useful FLOPs count only visible (q, k) pairs (``spec.visible_pairs``): forward 4 * pairs * D per
head, forward+backward 14 * pairs * D (backward = 2.5x forward, the usual flash convention), for
every kernel alike. Times are medians over batches of back-to-back calls on random bf16 inputs
(warm-up first, host clock around ``block_until_ready``). Prints one line per measurement and
appends JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import numpy as np

from pallas_kernels.spec import AttentionSpec

SPECS = {"sink_window": AttentionSpec.sink_window(64, 4096), "strided": AttentionSpec.strided(16, 8)}
LENGTHS = (16384, 65536, 131072)
H, D = 32, 128


def _flops(spec, L, mode):
  return (4 if mode == "fwd" else 14) * spec.visible_pairs(L) * D * H


def _median_time(fn, args, sync, min_total=0.25, batches=5):
  sync(fn(*args))  # compile / warm
  sync(fn(*args))
  t0 = time.perf_counter()
  sync(fn(*args))
  one = max(time.perf_counter() - t0, 1e-5)
  n = max(1, min(50, int(min_total / batches / one)))
  ts = []
  for _ in range(batches):
    t0 = time.perf_counter()
    for _ in range(n):
      r = fn(*args)
    sync(r)
    ts.append((time.perf_counter() - t0) / n)
  return statistics.median(ts), (max(ts) - min(ts)) / statistics.median(ts)


def _emit(out, rec):
  line = json.dumps(rec)
  short = {k: v for k, v in rec.items() if k not in ("cfg", "wall_s")}
  print(" | ".join(f"{k}={v}" for k, v in short.items())[:400], flush=True)
  if out:
    with open(out, "a") as f:
      f.write(line + "\n")


# ---------------------------------------------------------------------------------- JAX part
def _jax_fns(spec, cfg):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu  # pylint: disable=g-import-not-at-top

  attn = lambda q, k, v: pallas_gpu.attention(q, k, v, spec, config=cfg)  # noqa: E731
  fwd = jax.jit(attn)

  @jax.jit
  def fwd_bwd(q, k, v, do):
    _, vjp = jax.vjp(attn, q, k, v)
    return vjp(do)

  del jnp
  return fwd, fwd_bwd


def _jax_inputs(L, seed=0):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  return [jax.random.normal(kk, (1, L, H, D), jnp.bfloat16) for kk in ks]


def _measure(spec_name, L, mode, cfg, out, tag):
  import jax  # pylint: disable=g-import-not-at-top
  spec = SPECS[spec_name]
  q, k, v, do = _jax_inputs(L)
  fwd, fwd_bwd = _jax_fns(spec, cfg)
  sync = jax.block_until_ready
  t_c = time.perf_counter()
  try:
    if mode == "fwd":
      t, spread = _median_time(fwd, (q, k, v), sync)
    else:
      t, spread = _median_time(fwd_bwd, (q, k, v, do), sync)
  except Exception as e:  # pylint: disable=broad-except
    _emit(out, dict(tag=tag, kernel="pallas_triton", spec=spec_name, L=L, mode=mode,
                    cfg=dataclasses.asdict(cfg), error=f"{type(e).__name__}: {str(e)[:400]}"))
    return None
  rec = dict(tag=tag, kernel="pallas_triton", spec=spec_name, L=L, mode=mode,
             cfg=dataclasses.asdict(cfg), ms=round(t * 1e3, 3), spread=round(spread, 3),
             tflops=round(_flops(spec, L, mode) / t / 1e12, 1),
             wall_s=round(time.perf_counter() - t_c, 1))
  _emit(out, rec)
  return rec


def _calibrate(out):
  """Dense causal forward of jax's own kernels at 16K: what each lowering reaches on this GPU."""
  import warnings  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from jax.experimental.pallas.ops.gpu import attention as jax_mha  # pylint: disable=g-import-not-at-top
    from jax.experimental.pallas.ops.gpu import attention_mgpu  # pylint: disable=g-import-not-at-top
  L = LENGTHS[0]
  q, k, v, _ = _jax_inputs(L)
  cfg = attention_mgpu.TuningConfig(block_q=128, block_kv=128, max_concurrent_steps=2, causal=True)
  qh, kh, vh = (x.astype(jnp.float16) for x in (q, k, v))
  runs = {
      "jax_pallas_triton_mha": (jax.jit(lambda q, k, v: jax_mha.mha(
          q, k, v, None, sm_scale=D ** -0.5, causal=True, num_warps=8, num_stages=3)), (q, k, v)),
      "jax_mosaic_attention_mgpu_f16": (jax.jit(
          lambda q, k, v: attention_mgpu.attention(q, k, v, cfg)), (qh, kh, vh)),
  }
  for name, (fn, args) in runs.items():
    try:
      t, spread = _median_time(fn, args, jax.block_until_ready)
    except Exception as e:  # pylint: disable=broad-except
      _emit(out, dict(tag="calib", kernel=name, error=f"{type(e).__name__}: {str(e)[:300]}"))
      continue
    _emit(out, dict(tag="calib", kernel=name, spec="full", L=L, mode="fwd", ms=round(t * 1e3, 3),
                    spread=round(spread, 3), tflops=round(4 * L * (L + 1) // 2 * D * H / t / 1e12, 1)))


def _sweep_bwd(args, base):
  """One kernel at a time: dQ variants, then dK/dV variants, around ``base`` (forward+backward)."""
  variants = [dict()]
  variants += [dict(block_q_dq=a, block_k_dq=b, num_warps_dq=w, num_stages_dq=st)
               for a, b, w, st in [(128, 64, 8, 2), (64, 128, 4, 2), (64, 64, 4, 3),
                                   (128, 32, 4, 2)]]
  variants += [dict(block_q_dkv=a, block_k_dkv=b, num_warps_dkv=w, num_stages_dkv=st)
               for a, b, w, st in [(64, 128, 8, 2), (32, 128, 4, 2), (64, 64, 4, 3),
                                   (32, 64, 4, 2), (128, 64, 8, 2)]]
  for kw in variants:
    _measure("sink_window", LENGTHS[0], "fwd_bwd", dataclasses.replace(base, **kw), args.out,
             "sweep_bwd:" + ",".join(f"{k}={v}" for k, v in kw.items()))


def _mosaic(args, ref_cfg):
  """The experimental Mosaic GPU block-sparse forward: numerics vs Triton at 16K, then timings."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu_mosaic as M  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu  # pylint: disable=g-import-not-at-top
  configs = [M.MosaicConfig(64, 128, 2), M.MosaicConfig(64, 64, 4)]
  for spec_name, spec in SPECS.items():
    for L in LENGTHS:
      q, k, v, _ = _jax_inputs(L)
      for mc in (configs if L == LENGTHS[0] else configs[:1]):
        fn = jax.jit(lambda q, k, v, mc=mc: M.sparse_attention_fwd(q, k, v, spec, mc)[0])
        rec = dict(tag="mosaic", kernel="pallas_mosaic_fwd", spec=spec_name, L=L, mode="fwd",
                   cfg=dataclasses.asdict(mc))
        try:
          if L == LENGTHS[0]:
            ours = np.asarray(fn(q, k, v), np.float32)
            want = np.asarray(pallas_gpu.attention(q, k, v, spec, config=ref_cfg), np.float32)
            rec["rel_err_vs_triton"] = float(np.linalg.norm(ours - want) / np.linalg.norm(want))
          t, spread = _median_time(fn, (q, k, v), jax.block_until_ready)
          rec.update(ms=round(t * 1e3, 3), spread=round(spread, 3),
                     tflops=round(_flops(spec, L, "fwd") / t / 1e12, 1))
        except Exception as e:  # pylint: disable=broad-except
          rec["error"] = f"{type(e).__name__}: {str(e)[:600]}"
        _emit(args.out, rec)
      del q, k, v
  del jnp


def run_jax(args):
  from pallas_kernels.backends import pallas_gpu  # pylint: disable=g-import-not-at-top
  base = pallas_gpu.DEFAULT_CONFIG
  phases = args.phases.split(",")
  if "calib" in phases:
    _calibrate(args.out)
  if "sweep_bwd" in phases:
    _sweep_bwd(args, base)
  if "mosaic" in phases:
    _mosaic(args, base)
  if "final" in phases:
    for spec_name in SPECS:
      for L in LENGTHS:
        for impl in ("triton", "mosaic"):
          for mode in ("fwd", "fwd_bwd"):
            _measure(spec_name, L, mode, dataclasses.replace(base, fwd_impl=impl), args.out,
                     f"final:fwd_impl={impl}")


# ---------------------------------------------------------------------------------- torch Flex
def run_flex(args):
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # pylint: disable=g-import-not-at-top

  flex = torch.compile(flex_attention, dynamic=False)
  start = time.perf_counter()

  def mask_mod_for(spec):
    if spec.kind == "sink_window":
      s, w = spec.sink, spec.window
      return lambda b, h, i, j: (j <= i) & ((j < s) | (i - j < w))
    blk, lb, vs = spec.block, spec.local_blocks, spec.vert_stride
    return lambda b, h, i, j: (j <= i) & (((i // blk) - (j // blk) < lb) | ((j // blk) % vs == 0))

  def sync(x):
    del x
    torch.cuda.synchronize()

  for spec_name in args.flex_specs.split(","):
    spec = SPECS[spec_name]
    for L in LENGTHS:
      for mode in ("fwd", "fwd_bwd"):
        if time.perf_counter() - start > args.budget:
          continue
        try:
          bm = create_block_mask(mask_mod_for(spec), None, None, L, L, device="cuda",
                                 _compile=True)
          q, k, v, do = [torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16)
                         for _ in range(4)]
          if mode == "fwd":
            fn = lambda q, k, v: flex(q, k, v, block_mask=bm)  # noqa: E731
            t, spread = _median_time(fn, (q, k, v), sync)
          else:
            for x in (q, k, v):
              x.requires_grad_(True)

            def fn(q, k, v, do):
              o = flex(q, k, v, block_mask=bm)
              return torch.autograd.grad(o, (q, k, v), do)
            t, spread = _median_time(fn, (q, k, v, do), sync)
          _emit(args.out, dict(tag="peer", kernel="torch_flex", spec=spec_name, L=L, mode=mode,
                               ms=round(t * 1e3, 3), spread=round(spread, 3),
                               tflops=round(_flops(spec, L, mode) / t / 1e12, 1)))
        except Exception as e:  # pylint: disable=broad-except
          _emit(args.out, dict(tag="peer", kernel="torch_flex", spec=spec_name, L=L, mode=mode,
                               error=f"{type(e).__name__}: {str(e)[:300]}"))
        finally:
          torch.cuda.empty_cache()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--flex", action="store_true", help="time torch FlexAttention instead")
  p.add_argument("--flex_specs", default="sink_window,strided")
  p.add_argument("--phases", default="calib,sweep_bwd,mosaic,final",
                 help="JAX part: any of calib, sweep_bwd, mosaic, final")
  p.add_argument("--lengths", default="", help="comma list overriding 16384,65536,131072")
  p.add_argument("--budget", type=float, default=300.0, help="seconds for the Flex part")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  if args.lengths:
    global LENGTHS
    LENGTHS = tuple(int(x) for x in args.lengths.split(","))
  print("visited-tile efficiency (useful pairs / computed pairs, 128x128 tiles):")
  from pallas_kernels.backends.gpu_tables import kernel_tables  # pylint: disable=g-import-not-at-top
  for name, spec in SPECS.items():
    for L in LENGTHS:
      t = kernel_tables(spec, L, L, 128, 128)
      print(f"  {name} L={L}: {spec.visible_pairs(L) / (t.visited * 128 * 128):.3f}")
  (run_flex if args.flex else run_jax)(args)


if __name__ == "__main__":
  main()
