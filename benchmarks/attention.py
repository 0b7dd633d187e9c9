"""Attention kernels on one GPU: LongGen's sparse patterns against cuDNN and FlexAttention.

Run from the repository root on the device machine (one H100, about 8 minutes):

  python3 benchmarks/attention.py --out $OUT/attention.json          # full table
  python3 benchmarks/attention.py --quick --out $OUT/quick.json      # 16K only, fewer repetitions
  python3 benchmarks/attention.py --no-jax --out $OUT/flex.json      # torch FlexAttention rows only

Rows (B=1, H=32, D=128, bf16; GQA 32/8 at ``--gqa-lengths``):
  sink_window  sink 64 + window 4096: pallas_gpu, xla, cudnn (cuDNN window + dense sinks merged
               by lse), triton_native (jax-triton), auto (api dispatch), flex (torch).
  strided      block 128, local 16 blocks, every 64th block: kv_budget(128K) = (16 + 16) * 128 =
               4096 tokens, the sink_window budget (4160) within 2%: pallas_gpu, xla,
               triton_native, auto, flex.
  full         causal: cudnn (ours, fp32 lse), cudnn_jax (jax.nn.dot_product_attention), auto,
               flex.
  window       window 4096 without sinks: cudnn_jax (public API, local_window_size=(4095, 0),
               is_causal=True) - the lower bound for the cudnn sink_window row.

Convention: useful FLOPs count only visible (q, k) pairs, ``spec.visible_pairs(L)``: forward
= 4 * pairs * D * H * B, forward+backward = 3.5 x forward (backward = 2.5 x forward, the usual
flash-attention convention), the same for every kernel. TFLOP/s = useful FLOPs / median time.
JAX cells: one compile per (row, shape, mode), a warm-up call, then the median over repetitions of
individually synchronised calls (host clock around ``block_until_ready``; kernels here take
milliseconds, dispatch is ~0.1 ms). fwd+bwd = ``jax.vjp`` forward plus the cotangent pass in one
jit. Torch cells: ``triton.testing.do_bench`` median, ``torch.compile(flex_attention,
dynamic=True)`` (one compile per mode for all lengths; ``--flex-static`` recompiles per length),
one parametrised mask_mod (no recompile per pattern), the ``BlockMask`` built from our analytic
block tables with ``BlockMask.from_kv_blocks`` (``benchmarks/flex_masks.py``; ``--flex-mask create``
uses ``create_block_mask(_compile=True)``), 128 blocks. JAX and torch each run in their own subprocess, JAX first (each gets the whole GPU;
the parent kills a worker that outlives its deadline). Every cell is isolated: an error, OOM or
unsupported combination becomes a row with ``status`` and ``note``. Cells past the time budget
are skipped with a note. ``err`` = relative L2 error of the forward output against
the first successful row of the same pattern, shape and mode (fwd+bwd: the worst of dq, dk, dv).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pallas_kernels.spec import AttentionSpec  # pylint: disable=wrong-import-position

SPECS = {
    "sink_window": AttentionSpec.sink_window(64, 4096),
    "strided": AttentionSpec.strided(16, 64),
    "full": AttentionSpec.full(),
    "window": AttentionSpec.sink_window(0, 4096),
}
# (pattern, implementation) in the order they run at each length.
JAX_ROWS = [
    ("sink_window", "pallas_gpu"), ("sink_window", "cudnn"), ("sink_window", "triton_native"),
    ("strided", "pallas_gpu"), ("strided", "triton_native"),
    ("full", "cudnn"), ("full", "cudnn_jax"), ("window", "cudnn_jax"),
    ("sink_window", "auto"), ("strided", "auto"), ("full", "auto"),
    ("sink_window", "xla"), ("strided", "xla"),
]
GQA_ROWS = [("sink_window", "pallas_gpu"), ("sink_window", "cudnn"),
            ("sink_window", "triton_native"), ("strided", "pallas_gpu"),
            ("strided", "triton_native"), ("full", "cudnn"), ("full", "cudnn_jax")]
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


def _time_jax(fn, args, reps: int, max_s: float):
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  n = max(3, min(reps, int(max_s / max(first, 1e-4))))
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return out, statistics.median(times) * 1e3, compile_s, n


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
    configs = [(H, H, JAX_ROWS)] if L in args.lengths else []
    if L in args.sweep_lengths:
      base = [] if configs else [("sink_window", "pallas_gpu"), ("sink_window", "triton_native"),
                                 ("strided", "pallas_gpu"), ("strided", "triton_native")]
      configs = [(H, H, base + [(pat, "triton_native@" + v) for pat in ("sink_window", "strided")
                                for v in args.sweep])] + configs
    if L in args.gqa_lengths:
      configs.append((H, 8, GQA_ROWS))
    for hq, hkv, table in configs:
      print(f"== JAX L={L} heads {hq}/{hkv}", flush=True)
      keys = jax.random.split(jax.random.PRNGKey(L + hkv), 4)
      q = jax.random.normal(keys[0], (B, L, hq, D), jnp.bfloat16)
      k = jax.random.normal(keys[1], (B, L, hkv, D), jnp.bfloat16)
      v = jax.random.normal(keys[2], (B, L, hkv, D), jnp.bfloat16)
      do = jax.random.normal(keys[3], (B, L, hq, D), jnp.bfloat16)
      first_out: dict[str, object] = {}
      for pattern, impl in table:
        if impl in args.skip:
          continue
        try:
          fn, how = _jax_impl(pattern, impl, log_records)
        except Exception as e:  # pylint: disable=broad-except
          for mode in ("fwd", "fwdbwd"):
            emit(_row(pattern, impl, hq, hkv, L, mode, status="unavailable", note=_short(e)))
          continue
        fwd = jax.jit(fn)

        def fb(q, k, v, do, fn=fn):
          out, vjp = jax.vjp(fn, q, k, v)
          return vjp(do)

        for mode, f, fargs in (("fwd", fwd, (q, k, v)), ("fwdbwd", jax.jit(fb), (q, k, v, do))):
          if time.time() > deadline:
            emit(_row(pattern, impl, hq, hkv, L, mode, status="skipped", note="time budget"))
            continue
          n_logs = len(log_records)
          try:
            out, ms, cs, n = _time_jax(f, fargs, args.reps, args.max_cell_s)
            note = "; ".join(x for x in [how, f"n={n}"] + log_records[n_logs:] if x)
            if impl == "auto":
              note = f"auto -> {_auto_choice(pattern, q, k)}; " + note
            outs = (out,) if mode == "fwd" else tuple(out)
            key = (pattern, mode)
            err = None
            if key in first_out:
              err = max(_rel_err(a, b) for a, b in zip(outs, first_out[key]))
            else:
              first_out[key] = outs
              note += f"; err reference for {pattern} {mode}"
            emit(_row(pattern, impl, hq, hkv, L, mode, ms=ms, compile_s=round(cs, 2), err=err,
                      note=note.strip("; ")))
            del out
          except Exception as e:  # pylint: disable=broad-except
            emit(_row(pattern, impl, hq, hkv, L, mode, status="error", note=_short(e)))
            if args.verbose:
              traceback.print_exc()
      del q, k, v, do, first_out


# ----------------------------------------------------------------------------- torch side
def flex_worker(args):
  """Runs in a subprocess: FlexAttention rows as JSON lines on stdout (prefix 'ROW ')."""
  import torch  # pylint: disable=g-import-not-at-top
  import triton  # pylint: disable=g-import-not-at-top
  from torch.nn.attention import flex_attention as fa  # pylint: disable=g-import-not-at-top
  from benchmarks import flex_masks  # pylint: disable=g-import-not-at-top
  torch._dynamo.config.cache_size_limit = 64  # pylint: disable=protected-access
  if hasattr(torch._dynamo.config, "automatic_dynamic_shapes"):  # pylint: disable=protected-access
    torch._dynamo.config.automatic_dynamic_shapes = False  # pylint: disable=protected-access
  # dynamic=True: one compile per mode for every length (static shapes recompile per length,
  # tens of seconds each).
  flex = torch.compile(fa.flex_attention, dynamic=args.flex_dynamic)
  dev = "cuda"
  # One mask_mod for every pattern; its parameters are a captured tensor (no recompiles).
  mod, set_spec = flex_masks.mask_mod(torch, dev)

  deadline = args.deadline
  log = lambda m: print(f"[flex {time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)
  for L in args.lengths:
    configs = [(H, H, FLEX_PATTERNS)]
    if L in args.gqa_lengths:
      configs.append((H, 8, ("sink_window",)))
    for hq, hkv, patterns in configs:
      g = torch.Generator(device=dev).manual_seed(L)
      mk = lambda h: torch.randn(B, h, L, D, device=dev, dtype=torch.bfloat16, generator=g)
      q, k, v, do = mk(hq), mk(hkv), mk(hkv), mk(hq)
      for x in (q, k, v):
        x.requires_grad_(True)
      for pattern in patterns:
        s = SPECS[pattern]
        set_spec(s)
        for mode in ("fwd", "fwdbwd"):
          if time.time() > deadline:
            r = _row(pattern, "flex", hq, hkv, L, mode, status="skipped", note="flex time budget")
          else:
            try:
              t0 = time.perf_counter()
              if args.flex_mask == "tables":  # our analytic tables -> BlockMask.from_kv_blocks
                bm = flex_masks.block_mask_from_tables(s, L, torch, dev, mod)
              else:
                bm = fa.create_block_mask(mod, None, None, L, L, device=dev, BLOCK_SIZE=128,
                                          _compile=True)
              kw = dict(block_mask=bm, enable_gqa=hq != hkv)
              if mode == "fwd":
                step = lambda: flex(q, k, v, **kw)
              else:
                step = lambda: torch.autograd.grad(flex(q, k, v, **kw), (q, k, v), do)
              log(f"{pattern} L={L} {hq}/{hkv} {mode}: block mask {time.perf_counter() - t0:.1f}s")
              step()
              torch.cuda.synchronize()
              cs = time.perf_counter() - t0
              log(f"  first call done at {cs:.1f}s")
              ms = triton.testing.do_bench(step, warmup=25, rep=args.flex_rep_ms,
                                           return_mode="median")
              r = _row(pattern, "flex", hq, hkv, L, mode, ms=ms, compile_s=round(cs, 2),
                       note=f"torch {torch.__version__}, dynamic={args.flex_dynamic}")
            except Exception as e:  # pylint: disable=broad-except
              r = _row(pattern, "flex", hq, hkv, L, mode, status="error", note=_short(e))
            torch.cuda.empty_cache()
          _print_row(r)
      del q, k, v, do
      torch.cuda.empty_cache()


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
    key = (r["pattern"], r["impl"], f"{r['hq']}/{r['hkv']}")
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
        m = [r for r in rows if (r["pattern"], r["impl"], f"{r['hq']}/{r['hkv']}") == key
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
              flex_dynamic=args.flex_dynamic, wall_s=round(time.time() - t_start, 1))
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
  p.add_argument("--gqa-lengths", type=int, nargs="*", default=[65536])
  p.add_argument("--quick", action="store_true", help="16K only, fewer repetitions")
  p.add_argument("--reps", type=int, default=10, help="max timed calls per JAX cell")
  p.add_argument("--max-cell-s", type=float, default=1.5, help="time spent timing one cell")
  p.add_argument("--budget-s", type=float, default=480, help="wall budget; later cells skip")
  p.add_argument("--flex-reserve-s", type=float, default=150,
                 help="part of the budget kept for the torch worker (it runs second)")
  p.add_argument("--flex-rep-ms", type=float, default=200)
  p.add_argument("--flex-static", dest="flex_dynamic", action="store_false",
                 help="compile FlexAttention per length (default: dynamic shapes)")
  p.add_argument("--skip", nargs="*", default=[], help="implementations to leave out")
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
  args = p.parse_args(argv)
  if args.quick:
    args.lengths, args.gqa_lengths, args.reps = [16384], [16384], 3
    args.max_cell_s, args.flex_rep_ms = 0.5, 50
  if args.worker == "flex":
    flex_worker(args)
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
