"""The torch side of ``benchmarks/attention.py``: FlexAttention (Triton) and its FLASH backend
(FlashAttention-4), run as their users run them. Started by ``attention.py --worker flex``;
prints ``ROW {json}`` lines for the parent.

Per (length, heads, pattern): one ``mask_mod`` for the pattern (``flex_masks.mask_mod_for``), the
``BlockMask`` from our tables, ``torch.compile(flex_attention, dynamic=False)`` (a static compile
per pattern and shape), and for ``flex_fa4`` ``kernel_options={"BACKEND": "FLASH"}``. Timing:
``bench_timing.time_cell`` (the JAX side's method) plus ``ms_sync_each`` and ``ms_do_bench``
cross-checks. ``flex_fa4``'s outputs are compared with the Triton flex outputs of the same cell.
"""

from __future__ import annotations

import sys
import time

from benchmarks import bench_timing as timing
from benchmarks import flex_masks
from benchmarks.attention import B, D, FLEX_PATTERNS, SPECS, _print_row, _row, _short

IMPLS = (("flex", None), ("flex_fa4", {"BACKEND": "FLASH"}))


def fa4_problem() -> str | None:
  """Why the FLASH backend cannot run here (None when ``flash_attn.cute`` imports)."""
  try:
    import flash_attn.cute  # pylint: disable=g-import-not-at-top,unused-import
    return None
  except Exception as e:  # pylint: disable=broad-except
    return ("flash_attn.cute does not import (FlashAttention-4: ../shared/tools/fa4_carry.sh): "
            + _short(e))


def _rel_err(a, b) -> float:
  a, b = a.float(), b.float()
  return float((a - b).norm() / b.norm())


def flex_worker(args):
  """FlexAttention rows as JSON lines on stdout (prefix 'ROW ')."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn.attention import flex_attention as fa  # pylint: disable=g-import-not-at-top
  torch._dynamo.config.cache_size_limit = 256  # pylint: disable=protected-access
  if hasattr(torch._dynamo.config, "automatic_dynamic_shapes"):  # pylint: disable=protected-access
    torch._dynamo.config.automatic_dynamic_shapes = False  # pylint: disable=protected-access
  flex = torch.compile(fa.flex_attention, dynamic=False)
  dev = args.flex_device
  cuda = dev.startswith("cuda")
  fa4_why = fa4_problem() if cuda else "FlashAttention-4 needs a CUDA GPU"
  sync = (lambda _: torch.cuda.synchronize()) if cuda else (lambda _: None)  # noqa: E731
  deadline = args.deadline
  log = lambda m: print(f"[flex {time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)
  for L in args.lengths:
    for hkv in args.kv_heads:
      hq = 32
      g = torch.Generator(device=dev).manual_seed(L + hkv)
      def mk(h, L=L, g=g):
        return torch.randn(B, h, L, D, device=dev, dtype=torch.bfloat16, generator=g)
      q, k, v, do = mk(hq), mk(hkv), mk(hkv), mk(hq)
      for x in (q, k, v):
        x.requires_grad_(True)
      warmed = False
      for pattern in FLEX_PATTERNS:
        if pattern not in args.patterns:
          continue
        spec = SPECS[pattern]
        mod = flex_masks.mask_mod_for(spec)
        t0 = time.perf_counter()
        if args.flex_mask == "tables":  # our analytic tables -> BlockMask.from_kv_blocks
          bm = flex_masks.block_mask_from_tables(spec, L, torch, dev, mod)
        else:
          bm = fa.create_block_mask(mod, None, None, L, L, device=dev, BLOCK_SIZE=128,
                                    _compile=True)
        log(f"{pattern} L={L} {hq}/{hkv}: block mask {time.perf_counter() - t0:.1f}s")
        reference: dict[str, tuple] = {}
        for impl, kopts in IMPLS:
          for mode in ("fwd", "fwdbwd"):
            if impl in args.skip:
              continue
            if impl == "flex_fa4" and fa4_why:
              _print_row(_row(pattern, impl, hq, hkv, L, mode, status="unavailable",
                              note=fa4_why))
              continue
            if time.time() > deadline:
              _print_row(_row(pattern, impl, hq, hkv, L, mode, status="skipped",
                              note="flex time budget"))
              continue
            kw = dict(block_mask=bm, enable_gqa=hq != hkv)
            if kopts:
              kw["kernel_options"] = kopts
            if mode == "fwd":
              # a pure forward, like the JAX side's (no autograd graph recorded)
              call = lambda kw=kw: flex(q.detach(), k.detach(), v.detach(), **kw)  # noqa: E731
            else:
              def call(kw=kw):
                return torch.autograd.grad(flex(q, k, v, **kw), (q, k, v), do)
            try:
              t = timing.time_cell(call, sync, loops=args.loops, target_s=args.loop_s,
                                   warm_s=0.0 if warmed else 1.0)
              warmed = True
              outs = (t.output,) if mode == "fwd" else tuple(t.output)
              err, note = None, f"torch {torch.__version__}, n={t.n}"
              if impl == "flex":
                reference[mode] = tuple(o.detach() for o in outs)
                note += "; err reference for flex_fa4"
              elif mode in reference:
                err = max(_rel_err(a, b) for a, b in zip(outs, reference[mode]))
                note += "; err vs flex (Triton)"
              del t.output, outs
              sync_each = timing.time_sync_each(call, sync, args.reps)
              bench = None
              if cuda:
                import triton  # pylint: disable=g-import-not-at-top
                bench = round(triton.testing.do_bench(call, warmup=25, rep=args.flex_rep_ms,
                                                      return_mode="median"), 4)
              r = _row(pattern, impl, hq, hkv, L, mode, ms=t.ms, compile_s=round(t.compile_s, 2),
                       err=err, loop_ms=[round(x, 4) for x in t.loop_ms],
                       ms_sync_each=round(sync_each, 4), ms_do_bench=bench, note=note)
            except Exception as e:  # pylint: disable=broad-except
              r = _row(pattern, impl, hq, hkv, L, mode, status="error", note=_short(e))
            if cuda:
              torch.cuda.empty_cache()
            _print_row(r)
        del reference, bm
      del q, k, v, do
      if cuda:
        torch.cuda.empty_cache()
