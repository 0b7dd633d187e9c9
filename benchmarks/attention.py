"""Attention kernels on one GPU: LongGen's sparse patterns against cuDNN, FlexAttention and FA4.

Run from the repository root on the device machine (one H200; see docs/benchmarks.md for the
FlashAttention-4 packages, which ``../shared/tools/fa4_carry.sh`` brings there):

  python3 benchmarks/attention.py --lengths 65536 --out $OUT/attention_64k.json
  python3 benchmarks/attention.py --lengths 131072 --out $OUT/attention_128k.json
  python3 benchmarks/attention.py --quick --out $OUT/quick.json      # 16K only, MHA only
  python3 benchmarks/attention.py --no-jax --out $OUT/flex.json      # torch rows only
  python3 benchmarks/attention.py --lengths 131072 --patterns sink_window strided window \
      --out $OUT/attention_128k_sparse.json                              # leave out full causal

Each length takes a few minutes (``--budget-s`` caps a run; later cells are skipped with a note).

Rows (B=1, H=32 query heads, D=128, bf16; every length at MHA 32/32 and GQA 32/8, ``--kv-heads``):
  (each)       fa4: FlashAttention-4 bound into JAX (``pallas_kernels/backends/fa4.py``, extra
               ``fa4``; ``auto``'s first choice where installed), first; "unavailable" where
               flash_attn.cute does not import.
  sink_window  sink 64 + window 4096: ours (auto, pallas_gpu, split_gpu, cudnn, triton_native,
               xla), flex (Triton), flex_fa4 (FLASH backend = FlashAttention-4).
  strided      block 128, local 16 blocks, every 64th block: kv_budget(128K) = (16 + 16) * 128 =
               4096 tokens, the sink_window budget (4160) within 2%: ours (auto, pallas_gpu,
               triton_native, xla), flex, flex_fa4.
  full         causal: ours (auto, cudnn, pallas_gpu, triton_native), cudnn_jax
               (jax.nn.dot_product_attention), flex, flex_fa4.
  (each)       pallas_gpu_triton_bwd: pallas_gpu with ``TritonConfig(bwd_impl="triton")``, its
               Triton backward (``pallas_gpu`` itself takes the fused Mosaic GPU backward on
               Hopper; runs of 2026-12-04 have the opposite pair: ``pallas_gpu`` with the Triton
               backward, then the default, and ``pallas_gpu_mosaic_bwd``);
               pallas_gpu_two_kernel_bwd: with ``bwd_impl="mosaic"``, the two-kernel Mosaic
               backward (runs before 2026-12-06 instead have pallas_gpu_fused_bwd, with the then
               opt-in ``bwd_impl="mosaic_fused"``; it runs last). Runs before 2026-12-07 also
               have pallas_gpu_overlap_fwd, a forward with intra-warpgroup overlap
               (``fwd_impl="mosaic_overlap"``, removed then: 10-12% slower).
  window       window 4096 without sinks: cudnn_jax (public API, local_window_size=(4095, 0),
               is_causal=True): the "sinks for free" bound for the sink_window rows.

Timing, the same on both sides (``benchmarks/bench_timing.py``): a compile / warm-up call, then 5
loops of back-to-back calls with one synchronisation per loop; the cell is the median over loops
of the per-call time. Cross-check columns: ``ms_sync_each`` (median of individually synchronised
calls, the old harness's method) on both sides and ``ms_do_bench`` (``triton.testing.do_bench``
median) on the torch side. Before the first cell of a (length, heads) block the GPU runs that
block's first call back to back for ~1 s (clocks up; not recorded).

Convention: useful FLOPs count only visible (q, k) pairs, ``spec.visible_pairs(L)``: forward
= 4 * pairs * D * H * B, forward+backward = 3.5 x forward (backward = 2.5 x forward, the usual
flash-attention convention), the same for every kernel. TFLOP/s = useful FLOPs / median time.
fwd+bwd = forward plus the cotangent pass (``jax.vjp`` in one jit; ``torch.autograd.grad``).

FlexAttention is run the way its users run it (``benchmarks/attention_flex.py``): one
``mask_mod`` per pattern with the spec's numbers as Python ints (``flex_masks.mask_mod_for``),
``torch.compile(flex_attention, dynamic=False)``, and the ``BlockMask`` from our analytic tables
(``BlockMask.from_kv_blocks``, checked equal to ``create_block_mask`` in
``tests/test_flex_block_mask.py``; ``--flex-mask create`` uses ``create_block_mask``), 128-token
blocks. ``flex_fa4`` adds ``kernel_options={"BACKEND": "FLASH"}`` when ``flash_attn.cute``
imports (else the rows say why); its outputs (fwd: out; fwd+bwd: dq, dk, dv) are checked against
the Triton flex outputs of the same cell (``err``).

JAX and torch each run in their own subprocess, JAX first (each gets the whole GPU; the parent
kills a worker that outlives its deadline). Every cell is isolated: an error, OOM or unsupported
combination becomes a row with ``status`` and ``note``. ``err`` on JAX rows = relative L2 error of
the output against the first successful row of the same pattern, heads and mode (fwd+bwd: the
worst of dq, dk, dv).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_timing as timing  # pylint: disable=wrong-import-position
from benchmarks.attention_report import PEERS, label  # pylint: disable=wrong-import-position
from pallas_kernels.spec import AttentionSpec  # pylint: disable=wrong-import-position

SPECS = {
    "sink_window": AttentionSpec.sink_window(64, 4096),
    "strided": AttentionSpec.strided(16, 64),
    "full": AttentionSpec.full(),
    "window": AttentionSpec.sink_window(0, 4096),
}
# (pattern, implementation) in the order they run at each (length, heads).
JAX_ROWS = [
    # ``fa4``: FlashAttention-4 bound into JAX (optional extra; ``auto`` takes it where installed,
    # so the ``auto`` rows then repeat it: their note names the backend ``auto`` chose).
    ("sink_window", "fa4"), ("strided", "fa4"), ("full", "fa4"),
    ("sink_window", "auto"), ("sink_window", "pallas_gpu"), ("sink_window", "split_gpu"),
    ("sink_window", "cudnn"), ("sink_window", "triton_native"),
    ("strided", "auto"), ("strided", "pallas_gpu"), ("strided", "triton_native"),
    ("full", "auto"), ("full", "cudnn"), ("full", "cudnn_jax"), ("full", "pallas_gpu"),
    ("full", "triton_native"), ("window", "cudnn_jax"),
    ("sink_window", "xla"), ("strided", "xla"),
    # pallas_gpu with its Triton backward (the default, bwd_impl="auto", takes the fused Mosaic
    # GPU backward on Hopper; before issue 14 the Triton one was the default).
    ("sink_window", "pallas_gpu_triton_bwd"), ("strided", "pallas_gpu_triton_bwd"),
    ("full", "pallas_gpu_triton_bwd"),
    # Last: the two-kernel Mosaic backward (bwd_impl="mosaic"; auto's choice until 2026-12-06,
    # when the fused one became 4-21% faster; runs before then have pallas_gpu_fused_bwd rows).
    ("sink_window", "pallas_gpu_two_kernel_bwd"), ("strided", "pallas_gpu_two_kernel_bwd"),
    ("full", "pallas_gpu_two_kernel_bwd"),
]
FLEX_PATTERNS = ("sink_window", "strided", "full")
H, D, B = 32, 128, 1


def flops(pattern: str, L: int, mode: str, heads: int = H) -> float:
  fwd = 4.0 * SPECS[pattern].visible_pairs(L) * D * heads * B
  return fwd if mode == "fwd" else 3.5 * fwd


def _row(pattern, impl, hq, hkv, L, mode, **kw):
  r = dict(pattern=pattern, spec=str(SPECS[pattern]), impl=impl, hq=hq, hkv=hkv, L=L, mode=mode,
           ms=None, tflops=None, compile_s=None, err=None, status="ok", note="")
  r.update(kw)
  if r["ms"]:
    r["tflops"] = flops(pattern, L, mode, hq) / (r["ms"] * 1e-3) / 1e12
  return r


def _short(e: BaseException) -> str:
  msg = f"{type(e).__name__}: {e}".replace("\n", " ")
  if "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower():
    return "OOM: " + msg[:160]
  return msg[:300]


# ----------------------------------------------------------------------------- JAX side
def _jax_impl(pattern: str, impl: str, log_records: list):
  """Returns (fn(q, k, v) -> out, note) or raises with the reason."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from pallas_kernels import api  # pylint: disable=g-import-not-at-top
  spec = SPECS[pattern]
  if impl == "cudnn_jax":
    window = None if pattern == "full" else (spec.window - 1, 0)
    return functools.partial(jax.nn.dot_product_attention, is_causal=True,
                             local_window_size=window, implementation="cudnn"), ""
  if impl.startswith("triton_native@"):  # tuning variant, e.g. triton_native@block_k=64,num_warps=4
    from pallas_kernels.backends import triton_native  # pylint: disable=g-import-not-at-top
    over = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in impl.split("@")[1].split(",")}
    cfg = triton_native.NativeConfig(**over)
    return functools.partial(triton_native.native_attention, spec=spec, config=cfg), str(cfg)
  forced = {"pallas_gpu_triton_bwd": dict(bwd_impl="triton"),   # pallas_gpu, one kernel forced
            "pallas_gpu_two_kernel_bwd": dict(bwd_impl="mosaic")}
  if impl in forced:
    from pallas_kernels.backends import pallas_gpu  # pylint: disable=g-import-not-at-top
    cfg = pallas_gpu.TritonConfig(**forced[impl])
    note = ", ".join(f"{k}={v}" for k, v in forced[impl].items())
    return functools.partial(pallas_gpu.attention, spec=spec, config=cfg), note
  registered = api.available_backends()
  if impl == "auto":
    return functools.partial(api.attention, spec=spec, backend="auto"), ""
  if impl in registered:
    return functools.partial(api.attention, spec=spec, backend=impl), "via api"
  direct = {"pallas_gpu": ("pallas_kernels.backends.pallas_gpu", "attention"),
            "cudnn": ("pallas_kernels.backends.cudnn", "cudnn_attention"),
            "triton_native": ("pallas_kernels.backends.triton_native", "native_attention"),
            "xla": ("pallas_kernels.backends.xla", "attention")}
  mod_name, fn_name = direct[impl]
  import importlib  # pylint: disable=g-import-not-at-top
  mod = importlib.import_module(mod_name)
  return functools.partial(getattr(mod, fn_name), spec=spec), f"direct {mod_name}.{fn_name}"


def register_ours() -> list[str]:
  """Registers cudnn / triton_native with the api (suggested priorities) if not there yet."""
  from pallas_kernels import api  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import cudnn, triton_native  # pylint: disable=g-import-not-at-top
  added = []
  have = api.available_backends()
  for name, mod in (("cudnn", cudnn), ("triton_native", triton_native)):
    if name not in have:
      fn = "cudnn_attention" if name == "cudnn" else "native_attention"
      args = (name, f"{mod.__name__}:{fn}", f"{mod.__name__}:registry_supports")
      try:
        api.register_backend(*args, priority=mod.REGISTRY_PRIORITY, platforms=("gpu",))
      except TypeError:  # a registry without ``platforms``
        api.register_backend(*args, priority=mod.REGISTRY_PRIORITY)
      added.append(f"{name}@{mod.REGISTRY_PRIORITY}")
  return added


def _auto_choice(pattern, q, k) -> str:
  from pallas_kernels import api  # pylint: disable=g-import-not-at-top
  shapes = api.AttentionShapes(q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2],
                               q.shape[3], 0, 0, False)
  return api.select_backend(SPECS[pattern], shapes, q.dtype)


def _rel_err(a, b) -> float:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def run_jax(args, rows_out: list, deadline: float):
  """JAX rows, in order, until ``deadline`` (epoch seconds); prints ROW lines."""
  import logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  log_records: list[str] = []

  class _Grab(logging.Handler):
    def emit(self, record):
      log_records.append(record.getMessage())

  logging.getLogger("pallas_kernels").addHandler(_Grab())
  logging.getLogger("pallas_kernels").setLevel(logging.INFO)
  try:
    from pallas_kernels import api  # pylint: disable=g-import-not-at-top
    print(f"api backends: {api.available_backends()}; registered here: {register_ours()}",
          flush=True)
  except Exception as e:  # pylint: disable=broad-except
    print(f"api registry unavailable: {_short(e)}", flush=True)

  def emit(r):
    rows_out.append(r)
    _print_row(r)

  for L in sorted(set(args.lengths) | set(args.sweep_lengths)):
    configs = [(H, hkv, JAX_ROWS) for hkv in args.kv_heads] if L in args.lengths else []
    if L in args.sweep_lengths:
      configs.append((H, H, [("sink_window", "pallas_gpu"), ("sink_window", "triton_native"),
                             ("strided", "pallas_gpu"), ("strided", "triton_native")]
                      + [(pat, "triton_native@" + v) for pat in ("sink_window", "strided")
                         for v in args.sweep]))
    for hq, hkv, table in configs:
      print(f"== JAX L={L} heads {hq}/{hkv}", flush=True)
      keys = jax.random.split(jax.random.PRNGKey(L + hkv), 4)
      q = jax.random.normal(keys[0], (B, L, hq, D), jnp.bfloat16)
      k = jax.random.normal(keys[1], (B, L, hkv, D), jnp.bfloat16)
      v = jax.random.normal(keys[2], (B, L, hkv, D), jnp.bfloat16)
      do = jax.random.normal(keys[3], (B, L, hq, D), jnp.bfloat16)
      first_out: dict[tuple, object] = {}
      warmed = False
      for pattern, impl in table:
        if impl in args.skip or impl.split("@")[0] in args.skip or pattern not in args.patterns:
          continue
        try:
          fn, how = _jax_impl(pattern, impl, log_records)
        except Exception as e:  # pylint: disable=broad-except
          for mode in ("fwd", "fwdbwd"):
            emit(_row(pattern, impl, hq, hkv, L, mode, status="unavailable", note=_short(e)))
          continue
        fwd = jax.jit(fn)

        def fb(q, k, v, do, fn=fn):
          _, vjp = jax.vjp(fn, q, k, v)
          return vjp(do)

        for mode, f, fargs in (("fwd", fwd, (q, k, v)), ("fwdbwd", jax.jit(fb), (q, k, v, do))):
          if time.time() > deadline:
            emit(_row(pattern, impl, hq, hkv, L, mode, status="skipped", note="time budget"))
            continue
          n_logs = len(log_records)
          call = lambda f=f, fargs=fargs: f(*fargs)  # noqa: E731
          try:
            t = timing.time_cell(call, jax.block_until_ready, loops=args.loops,
                                 target_s=args.loop_s, warm_s=0.0 if warmed else 1.0)
            warmed = True
            sync_each = timing.time_sync_each(call, jax.block_until_ready, args.reps)
            note = "; ".join(x for x in [how, f"n={t.n}"] + log_records[n_logs:] if x)
            if impl == "auto":
              note = f"auto -> {_auto_choice(pattern, q, k)}; " + note
            outs = (t.output,) if mode == "fwd" else tuple(t.output)
            key = (pattern, mode)
            err = None
            if key in first_out:
              err = max(_rel_err(a, b) for a, b in zip(outs, first_out[key]))
            else:
              first_out[key] = outs
              note += f"; err reference for {pattern} {mode}"
            emit(_row(pattern, impl, hq, hkv, L, mode, ms=t.ms, compile_s=round(t.compile_s, 2),
                      err=err, loop_ms=[round(x, 4) for x in t.loop_ms],
                      ms_sync_each=round(sync_each, 4), note=note.strip("; ")))
            del t, outs
          except Exception as e:  # pylint: disable=broad-except
            emit(_row(pattern, impl, hq, hkv, L, mode, status="error", note=_short(e)))
            if args.verbose:
              traceback.print_exc()
      del q, k, v, do, first_out


# ----------------------------------------------------------------------------- torch side
# benchmarks/attention_flex.py (run as ``--worker flex``).


def _print_row(r):
  """Progress line plus the machine-readable 'ROW {json}' line the parent collects."""
  ms = f"{r['ms']:9.3f} ms {r['tflops']:7.1f} TF/s" if r["ms"] else f"{r['status']:>26s}"
  err = f" err {r['err']:.1e}" if r.get("err") is not None else ""
  print(f"  {r['pattern']:11s} {r['impl']:13s} {r['hq']}/{r['hkv']} L={r['L']:6d} "
        f"{r['mode']:6s} {ms}{err} {r['note'][:100]}", flush=True)
  print("ROW " + json.dumps(r), flush=True)


def run_worker(name: str, argv: list, rows_out: list, deadline: float, stderr_path: str):
  """Runs this script as ``--worker name`` until ``deadline`` (then kills it); collects rows."""
  import threading  # pylint: disable=g-import-not-at-top
  cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", name, "--deadline",
         str(deadline)]
  print(f"== {name} worker (until {time.strftime('%H:%M:%S', time.localtime(deadline))}; "
        f"stderr -> {stderr_path})", flush=True)
  with open(stderr_path, "w") as err:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
    killer = threading.Timer(max(1.0, deadline - time.time() + 45), proc.kill)
    killer.start()
    for line in proc.stdout:
      if line.startswith("ROW "):
        rows_out.append(json.loads(line[4:]))
      else:
        print(line, end="", flush=True)
    proc.wait()
    killer.cancel()
  if proc.returncode:
    print(f"  {name} worker exit code {proc.returncode}; stderr tail:", flush=True)
    with open(stderr_path) as f:
      print("".join(f.readlines()[-15:]), flush=True)


# ----------------------------------------------------------------------------- report
def print_table(rows: list):
  print("\nuseful TFLOP/s (ms) per length; fwd | fwd+bwd", flush=True)
  lengths = sorted({r["L"] for r in rows})
  keys = []
  for r in rows:
    key = (r["pattern"], label(r), f"{r['hq']}/{r['hkv']}")
    if key not in keys:
      keys.append(key)
  head = f"{'pattern':11s} {'impl':30s} {'heads':5s}" + "".join(
      f" | {f'{L // 1024}K fwd':>17s} {f'{L // 1024}K f+b':>17s}" for L in lengths)
  print(head)
  print("-" * len(head))
  for key in sorted(keys, key=lambda x: (list(SPECS).index(x[0]), x[2], x[1])):
    cells = []
    for L in lengths:
      for mode in ("fwd", "fwdbwd"):
        m = [r for r in rows if (r["pattern"], label(r), f"{r['hq']}/{r['hkv']}") == key
             and r["L"] == L and r["mode"] == mode]
        if not m:
          cells.append(f"{'':>17s}")
        elif m[0]["ms"]:
          cells.append(f"{m[0]['tflops']:6.0f} ({m[0]['ms']:8.2f})")
        else:
          cells.append(f"{m[0]['status'][:17]:>17s}")
    line = f"{key[0]:11s} {key[1]:30s} {key[2]:5s}"
    for i in range(0, len(cells), 2):
      line += f" | {cells[i]} {cells[i + 1]}"
    print(line)


def _meta(args, t_start):
  meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              command=" ".join([os.path.basename(sys.executable)] + sys.argv),
              B=B, H=H, D=D, dtype="bfloat16", specs={k: str(v) for k, v in SPECS.items()},
              flop_convention="fwd = 4*visible_pairs*D*H*B; fwd+bwd = 3.5*fwd",
              kv_budget_128k={k: v.kv_budget(131072) for k, v in SPECS.items()},
              timing=(f"median over {args.loops} loops of back-to-back calls (one sync per loop, "
                      f"~{args.loop_s} s per loop); cross-checks ms_sync_each, ms_do_bench"),
              flex="one mask_mod per pattern, torch.compile(dynamic=False), BlockMask from "
                   f"{args.flex_mask}", wall_s=round(time.time() - t_start, 1))
  try:
    meta["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True, check=False).stdout.strip()
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    import jax  # pylint: disable=g-import-not-at-top
    meta["jax"] = jax.__version__
    meta["device"] = str(jax.devices()[0].device_kind)
  except Exception:  # pylint: disable=broad-except
    pass
  for mod in ("torch", "triton", "jax_triton"):
    try:
      meta[mod] = __import__(mod).__version__
    except Exception:  # pylint: disable=broad-except
      pass
  return meta


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536, 131072])
  p.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8],
                 help="KV head counts to run at every length (32 query heads): 32 = MHA, 8 = GQA")
  p.add_argument("--quick", action="store_true", help="16K only, MHA only, short loops")
  p.add_argument("--loops", type=int, default=5, help="timed loops per cell (median taken)")
  p.add_argument("--loop-s", type=float, default=0.2, help="target seconds per timed loop")
  p.add_argument("--reps", type=int, default=10,
                 help="individually synchronised calls of the ms_sync_each cross-check")
  p.add_argument("--budget-s", type=float, default=540, help="wall budget; later cells skip")
  p.add_argument("--flex-reserve-s", type=float, default=240,
                 help="part of the budget kept for the torch worker (it runs second)")
  p.add_argument("--flex-rep-ms", type=float, default=200, help="do_bench cross-check rep (ms)")
  p.add_argument("--skip", nargs="*", default=[],
                 help="implementations to leave out (e.g. xla flex_fa4)")
  p.add_argument("--patterns", nargs="+", default=list(SPECS), choices=list(SPECS),
                 help="patterns to run (default all; e.g. leave out full at 128K to save time)")
  p.add_argument("--sweep-lengths", type=int, nargs="*", default=[],
                 help="lengths at which to also time the --sweep triton_native variants")
  p.add_argument("--sweep", nargs="*", default=["block_k=64", "num_stages=2", "num_warps=4",
                                                 "num_warps_bwd=4", "num_stages_bwd=3"],
                 help="NativeConfig overrides, one variant each (e.g. block_k=64,num_warps=4)")
  p.add_argument("--no-flex", action="store_true")
  p.add_argument("--no-jax", action="store_true", help="torch rows only")
  p.add_argument("--flex-mask", choices=("tables", "create"), default="tables",
                 help="FlexAttention BlockMask: from our analytic tables (from_kv_blocks, default) "
                      "or torch's create_block_mask(_compile=True) (took ~220 s at 128K on an H100)")
  p.add_argument("--out", default="attention.json")
  p.add_argument("--verbose", action="store_true")
  p.add_argument("--worker", choices=("jax", "flex"), help=argparse.SUPPRESS)
  p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
  p.add_argument("--flex-device", default="cuda", help=argparse.SUPPRESS)  # cpu: smoke tests
  args = p.parse_args(argv)
  known = sorted({impl for _, impl in JAX_ROWS} | set(PEERS))
  bad = [name for name in args.skip if name.split("@")[0] not in known]
  if bad:
    print(f"--skip: unknown implementation {bad[0]!r}; choose from {', '.join(known)}",
          file=sys.stderr)
    sys.exit(2)
  if args.quick:
    args.lengths, args.kv_heads, args.loops, args.loop_s = [16384], [32], 3, 0.05
    args.flex_rep_ms = 50
  if args.worker == "flex":
    from benchmarks import attention_flex  # pylint: disable=g-import-not-at-top
    attention_flex.flex_worker(args)
    return
  if args.worker == "jax":
    run_jax(args, [], deadline=args.deadline)
    return
  t_start = time.time()
  rows: list = []
  base = os.path.splitext(args.out)[0]
  flex = not args.no_flex and "flex" not in args.skip
  if not args.no_jax:
    run_worker("jax", argv, rows, t_start + args.budget_s - (args.flex_reserve_s if flex else 0),
               base + ".jax.stderr.log")
  if flex:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
      from torch.nn.attention import flex_attention  # pylint: disable=g-import-not-at-top,unused-import
      run_worker("flex", argv, rows, t_start + args.budget_s, base + ".flex.stderr.log")
    except ImportError as e:
      print(f"== torch FlexAttention unavailable: {_short(e)}", flush=True)
  print_table(rows)
  meta = _meta(args, t_start)
  with open(args.out, "w") as f:
    json.dump(dict(meta=meta, rows=rows), f, indent=1)
  print(f"\nwrote {args.out} ({len(rows)} rows, {meta['wall_s']} s)", flush=True)


if __name__ == "__main__":
  main()
