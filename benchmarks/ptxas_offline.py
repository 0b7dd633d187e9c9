"""ptxas registers and spills of the Mosaic GPU kernels for sm_90a, on a machine without a GPU.

Spills slow the forward, dQ, dK/dV and fused backward kernels of
``pallas_kernels/backends/pallas_gpu_mosaic*.py`` (docs/kernels.md). Seeing them normally needs a
Hopper machine and ``MOSAIC_GPU_DUMP_PTXAS=1``; this prints the same ptxas report (registers,
stack, spill stores/loads, ptxas's coded notes such as C7519 / C7508) on a CPU-only machine:

1. lowering, in this process (any venv with the repo's jax): ``jax.jit(f).trace(...).lower(
   lowering_platforms=("cuda",))`` with JAX_PLATFORMS=cpu runs the Pallas/Mosaic Python passes
   (arch taken as 9.0) and emits a ``stablehlo.custom_call @mosaic_gpu_v2`` whose
   ``mhlo.backend_config["module"]`` is the kernel's MLIR bytecode (``mosaic_modules``);
2. compilation, one child process per kernel in a side venv with the CUDA plugin of the same
   jaxlib: the plugin exports ``MosaicGpuCompile``, jaxlib's C++ pipeline (LLVM NVPTX -> PTX ->
   ptxas -v), which writes PTX, the ptxas log and SASS under ``MOSAIC_GPU_DUMP_TO``. A fake
   ``libcuda.so.1`` (built with gcc) answers compute capability 9.0, and the plugin's local symbol
   ``mosaic::gpu::EnsureLLVMNVPTXTargetIsRegistered()`` (found with nm) is called first. The
   host-side link then fails on purpose (no runtime library): nothing touches a device.

Setup, once (the side venv, fake libcuda and CUDA root live under --work, default
/tmp/ptxas_offline, ~1.2 GB; pip needs network):

  .venv/bin/python benchmarks/ptxas_offline.py --setup --only fwd

runs ``.venv/bin/python -m venv /tmp/ptxas_offline/venv`` and ``/tmp/ptxas_offline/venv/bin/pip
install -q jax==V jaxlib==V jax-cuda12-plugin==V jax-cuda12-pjrt==V nvidia-cuda-nvcc-cu12
nvidia-cuda-nvdisasm nvidia-cuda-cuobjdump absl-py`` (V: this jaxlib's version, 0.10.2), then
reports. ``--python`` uses another venv holding those packages instead. Then:

  .venv/bin/python benchmarks/ptxas_offline.py --only dkv
  .venv/bin/python benchmarks/ptxas_offline.py --only dkv bwd_fused \\
      --config rederive=True --config 'r240:rederive=True,registers=(240,24)'
  .venv/bin/python benchmarks/ptxas_offline.py --length 65536 --kv-heads 8 --out /tmp/dumps \\
      --ptxas /usr/local/cuda/bin/ptxas

Each --config ``[NAME:]field=value,...`` (values are Python literals) adds dq/dkv/bwd_fused rows
``<kernel>_<NAME>`` with those MosaicBwdConfig fields; each --fwd-config a forward row
``fwd_<NAME>`` with those MosaicConfig fields (e.g. ``--only fwd fwd_sf --fwd-config
sf:longest_first=False``). --out (default WORK/out) gets <kernel>/
(module.mlirbc, *.ptx, *.ptxas, *.sass_ctrl when nvdisasm exists, ptxas_cmd.txt, compile.log)
and summary.json. Where the SASS exists, each row also gives ``ex2_under_wgmma``: per wait that
leaves a wgmma group in flight, the exponentials before the next wait (``ex2_under_wgmma``'s
docstring). Exit status 1 if a kernel failed, 2 on a setup error (one line on stderr).

The numbers come from this jaxlib's Mosaic pipeline and the chosen ptxas (default the
nvidia-cuda-nvcc-cu12 wheel's, 12.9 when written): close to, not identical with, a GPU machine on
another jax. With ``rederive=False, registers=(232, 40)`` (the defaults before 2026-12-06), the
H100 with jax 0.11.2 reported 188/240 B spill stores/loads for the dK/dV kernel (4K); this gives
192/240 with ptxas 13.0 (192/232 with 12.9). Limits: relies on the
plugin exporting ``MosaicGpuCompile`` and on the symbol above (jaxlib internals, may change with
any version); needs gcc and nm.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROG = "benchmarks/ptxas_offline.py"
KERNELS = ("fwd", "dq", "dkv", "bwd_fused")
SYMBOLS = ("MosaicGpuCompile", "mosaic::gpu::EnsureLLVMNVPTXTargetIsRegistered()")
PINNED = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt")   # == this jaxlib's version
TOOLS = ("nvidia-cuda-nvcc-cu12", "nvidia-cuda-nvdisasm", "nvidia-cuda-cuobjdump", "absl-py")
FAKE_LIBCUDA = r"""/* libcuda.so.1 stand-in: compute capability 9.0 for MosaicGpuCompile. */
typedef int CUresult;
CUresult cuInit(unsigned f) { (void)f; return 0; }
CUresult cuDriverGetVersion(int* v) { *v = 12090; return 0; }
CUresult cuCtxGetDevice(int* d) { *d = 0; return 0; }
CUresult cuDeviceGet(int* d, int o) { *d = o; return 0; }
CUresult cuDeviceGetCount(int* c) { *c = 0; return 0; }
CUresult cuDeviceGetAttribute(int* v, int attr, int d) {  /* 75: CC major, 76: minor */
  (void)d; *v = attr == 75 ? 9 : 0; return 0;
}
CUresult cuGetErrorString(CUresult e, const char** s) { (void)e; *s = "fake libcuda"; return 0; }
CUresult cuGetErrorName(CUresult e, const char** s) { (void)e; *s = "FAKE_LIBCUDA"; return 0; }
"""
PTXAS_WRAPPER = """#!/bin/sh
echo "$PTXAS_OFFLINE_REAL $*" >> "$PTXAS_OFFLINE_LOG"
exec "$PTXAS_OFFLINE_REAL" "$@"
"""


class SetupError(Exception):
  """A missing tool, venv, symbol or a bad argument: one line on stderr, exit status 2."""


# ----------------------------------------------------------------- pure part (no CUDA plugin)

def parse_config(text: str, flag: str = "--config") -> tuple[str, dict]:
  """'[NAME:]field=value,...' -> (NAME, or one made of the text; {field: literal value}).
  ``flag``: the option the text came from, for the error."""
  m = re.fullmatch(r"(?:(\w+):)?(.+)", text.strip())
  over = {}
  for item in re.split(r",(?![^(\[]*[)\]])", m.group(2)):
    key, _, value = item.partition("=")
    try:
      over[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      raise SetupError(f"{flag} {text!r}: {item!r} is not field=<Python literal>") from None
  return m.group(1) or re.sub(r"\W+", "_", m.group(2)).strip("_"), over


def kernels(spec: str, length: int, heads: int = 32, kv_heads: int = 32, head_dim: int = 128,
            configs=(("", {}),), fwd_configs=()) -> dict:
  """{row: (kernel, jittable fn, argument shapes, config overrides)}, bf16, B=1: fwd, plus
  'fwd_<name>' per (name, MosaicConfig overrides) of ``fwd_configs``, and dq/dkv/bwd_fused per
  (name, MosaicBwdConfig overrides) of ``configs``, as '<kernel>_<name>' unless name is ''."""
  import jax
  import jax.numpy as jnp
  from pallas_kernels.backends import pallas_gpu_mosaic as pm
  from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb
  from pallas_kernels.spec import AttentionSpec

  sp = AttentionSpec.parse(spec)
  q = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, length, kv_heads, head_dim), jnp.bfloat16)
  stat = jax.ShapeDtypeStruct((1, heads, length), jnp.float32)   # lse2, delta: [B, Hq, T]
  out = {"fwd": ("fwd", functools.partial(pm.sparse_attention_fwd, spec=sp), (q, kv, kv), {})}
  for name, over in fwd_configs:
    cfg = dataclasses.replace(pm.MosaicConfig(), **over)
    out[f"fwd_{name}"] = ("fwd", functools.partial(pm.sparse_attention_fwd, spec=sp, config=cfg),
                          (q, kv, kv), over)
  for name, over in configs:
    cfg = dataclasses.replace(mb.MosaicBwdConfig(), **over)
    for kernel, fn in (("dq", mb.sparse_attention_dq), ("dkv", mb.sparse_attention_dkv),
                       ("bwd_fused", mb.sparse_attention_bwd)):
      out[f"{kernel}_{name}" if name else kernel] = (
          kernel, functools.partial(fn, spec=sp, config=cfg), (q, kv, kv, q, stat, stat), over)
  return out


def mosaic_modules(fn, shapes) -> list[bytes]:
  """The kernel modules (MLIR bytecode) of the mosaic_gpu* custom calls in fn's CUDA lowering."""
  import jax
  from jaxlib.mlir import ir
  mods = []

  def walk(op):
    for region in op.regions:
      for block in region.blocks:
        for o in block.operations:
          o = o.operation
          if (o.name == "stablehlo.custom_call" and
              ir.StringAttr(o.attributes["call_target_name"]).value.startswith("mosaic_gpu")):
            cfg = o.attributes["mhlo.backend_config"] if "mhlo.backend_config" in o.attributes \
                else None
            if not isinstance(cfg, ir.DictAttr) or "module" not in cfg:
              raise RuntimeError("a mosaic_gpu custom call without a backend_config 'module'")
            mods.append(ir.StringAttr(cfg["module"]).value_bytes)
          walk(o)
  walk(jax.jit(fn).trace(*shapes).lower(lowering_platforms=("cuda",))
       .compiler_ir("stablehlo").operation)
  return mods


def parse_ptxas(log: str) -> dict:
  """One kernel's `ptxas -v` log -> function, arch, registers, stack, spill_stores, spill_loads
  and notes ({'C7519': 2}: counts of ptxas's coded info/warning lines)."""
  out = {"notes": {}}
  for line in log.splitlines():
    if m := re.search(r"Compiling entry function '([^']+)' for '([^']+)'", line):
      out.update(function=m.group(1), arch=m.group(2))
    elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                        r"loads", line):
      out.update(zip(("stack", "spill_stores", "spill_loads"), map(int, m.groups())))
    elif m := re.search(r"Used (\d+) registers", line):
      out["registers"] = int(m.group(1))
    if m := re.search(r"\((C\d{4})\)", line):
      out["notes"][m.group(1)] = out["notes"].get(m.group(1), 0) + 1
  return out


# ----------------------------------------------------------------- side venv (CUDA plugin)

def ex2_under_wgmma(sass: str) -> list[int]:
  """Per ``WARPGROUP.DEPBAR.LE gsb0, 0x1`` in the SASS (a wait that leaves one wgmma group in
  flight): how many ``MUFU.EX2`` follow it before the next wgmma wait or issue, i.e. the
  exponentials that run while a matmul is in flight (what an FA3/FA4-style overlap of softmax
  and matmul needs; the kernels tried for it on 2026-12-07 are in docs/kernels.md). Empty when
  the kernel never waits with a group in flight, as none of today's kernels does."""
  lines = sass.splitlines()
  out = []
  for i, line in enumerate(lines):
    if "WARPGROUP.DEPBAR.LE gsb0, 0x1" in line:
      n = 0
      for nxt in lines[i + 1:]:
        if "WARPGROUP.DEPBAR" in nxt or "HGMMA" in nxt:
          break
        n += "MUFU.EX2" in nxt
      out.append(n)
  return out


def probe() -> dict:
  """In the side venv: the CUDA plugin, its two symbols' offsets, jaxlib version, site-packages."""
  import importlib.util
  import sysconfig
  spec = importlib.util.find_spec("jax_plugins")
  plugins = [p for d in (spec.submodule_search_locations if spec else []) for n in ("12", "13")
             if os.path.exists(p := os.path.join(d, f"xla_cuda{n}", "xla_cuda_plugin.so"))]
  if not plugins:
    raise SetupError(f"no jax_plugins/xla_cuda12/xla_cuda_plugin.so in {sys.prefix} "
                     "(pip install jax-cuda12-plugin, or --setup)")
  nm = subprocess.run(["nm", "-C", plugins[0]], capture_output=True, text=True, check=True).stdout
  offsets = {parts[2]: int(parts[0], 16) for parts in (l.split(" ", 2) for l in nm.splitlines())
             if len(parts) == 3 and parts[2] in SYMBOLS}
  if len(offsets) != len(SYMBOLS):
    raise SetupError(f"{plugins[0]} lacks {sorted(set(SYMBOLS) - set(offsets))}")
  return dict(plugin=plugins[0], offsets=offsets, jaxlib=importlib.metadata.version("jaxlib"),
              site=sysconfig.get_paths()["purelib"])


def compile_one(job: dict) -> None:
  """In the side venv, one process per module: MosaicGpuCompile, dumping to MOSAIC_GPU_DUMP_TO."""
  import ctypes
  ctypes.CDLL(job["libcuda"], mode=ctypes.RTLD_GLOBAL)
  fn = ctypes.CDLL(job["plugin"]).MosaicGpuCompile
  base = ctypes.cast(fn, ctypes.c_void_p).value - job["offsets"][SYMBOLS[0]]
  ctypes.CFUNCTYPE(None)(base + job["offsets"][SYMBOLS[1]])()   # registers the NVPTX target
  fn.argtypes, fn.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_void_p
  with open(job["module"], "rb") as f:
    data = f.read()
  # NULL is expected: the host-side JIT link fails (no runtime library) after ptxas has run.
  print("MosaicGpuCompile returned", "a kernel" if fn(data, len(data)) else "NULL (expected)")


def setup_venv(work: str) -> None:
  """python -m venv WORK/venv; pip install the jax packages (this jaxlib's version) and tools."""
  venv, version = os.path.join(work, "venv"), importlib.metadata.version("jaxlib")
  pip = [os.path.join(venv, "bin", "pip"), "install", "-q"]
  for cmd in ([sys.executable, "-m", "venv", venv],
              pip + [f"{p}=={version}" for p in PINNED] + list(TOOLS)):
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd, check=False).returncode:
      raise SetupError(f"setup failed: {' '.join(cmd)}")


def prepare(args) -> dict:
  """Checks the side venv and tools, builds the fake libcuda and CUDA root: the compile job."""
  python = args.python or os.path.join(args.work, "venv", "bin", "python")
  if not os.path.exists(python):
    raise SetupError(f"no side venv python at {python}: run with --setup (or pass --python)")
  for tool in ("gcc", "nm"):
    if not shutil.which(tool):
      raise SetupError(f"{tool} not found on PATH (it builds the fake libcuda / reads symbols)")
  r = subprocess.run([python, os.path.abspath(__file__), "--probe"], capture_output=True,
                     text=True, check=False)
  if r.returncode:
    raise SetupError((r.stderr.strip().splitlines() or [f"{python} --probe failed"])[-1]
                     .removeprefix(f"{PROG}: "))
  info = json.loads(r.stdout)
  if info["jaxlib"] != importlib.metadata.version("jaxlib"):
    raise SetupError(f"side venv jaxlib {info['jaxlib']} != this jaxlib "
                     f"{importlib.metadata.version('jaxlib')} (the module bytecode must match)")
  site, work = info["site"], os.path.abspath(args.work)
  ptxas = args.ptxas or next((c for c in (os.path.join(site, "nvidia/cuda_nvcc/bin/ptxas"),
                                          shutil.which("ptxas")) if c and os.path.exists(c)), "")
  version = re.findall(r"release .*", subprocess.run(
      [ptxas, "--version"], capture_output=True, text=True, check=False).stdout) \
      if os.access(ptxas, os.X_OK) else []
  if not version:
    raise SetupError(f"no working ptxas at {ptxas or 'nvidia/cuda_nvcc or PATH'} (pass --ptxas)")
  os.makedirs(os.path.join(work, "cuda", "bin"), exist_ok=True)
  libcuda, src = os.path.join(work, "libcuda.so.1"), os.path.join(work, "fakecuda.c")
  if not (os.path.exists(libcuda) and os.path.exists(src) and open(src).read() == FAKE_LIBCUDA):
    with open(src, "w") as f:
      f.write(FAKE_LIBCUDA)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", "-o", libcuda,
                    src], check=True)
  with open(os.path.join(work, "cuda", "bin", "ptxas"), "w") as f:
    f.write(PTXAS_WRAPPER)
  os.chmod(os.path.join(work, "cuda", "bin", "ptxas"), 0o755)
  for name, cands in (("bin/nvdisasm", [os.path.join(site, "nvidia/cu13/bin/nvdisasm"),
                                        os.path.join(site, "nvidia/cuda_nvdisasm/bin/nvdisasm"),
                                        shutil.which("nvdisasm")]),
                      ("nvvm", [os.path.join(site, "nvidia/cuda_nvcc/nvvm")])):   # libdevice
    link = os.path.join(work, "cuda", name)
    if os.path.lexists(link):
      os.remove(link)
    if found := next((c for c in cands if c and os.path.exists(c)), None):
      os.symlink(found, link)
  return dict(python=python, libcuda=libcuda, plugin=info["plugin"], offsets=info["offsets"],
              cuda=os.path.join(work, "cuda"), ptxas=os.path.abspath(ptxas),
              ptxas_version=version[-1])


def compile_module(job: dict, data: bytes, kdir: str) -> dict:
  """Compiles one module in the side venv, dumping into kdir: parse_ptxas's dict or {'error'}."""
  shutil.rmtree(kdir, ignore_errors=True)
  os.makedirs(kdir)
  with open(os.path.join(kdir, "module.mlirbc"), "wb") as f:
    f.write(data)
  env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_GPU_") and
         k != "PYTHONPATH"}
  env.update(MOSAIC_GPU_DUMP_TO=kdir, MOSAIC_GPU_CUDA_ROOT=job["cuda"], JAX_PLATFORMS="cpu",
             PATH=os.path.join(job["cuda"], "bin") + os.pathsep + env.get("PATH", ""),
             PTXAS_OFFLINE_REAL=job["ptxas"], PTXAS_OFFLINE_LOG=os.path.join(kdir, "ptxas_cmd.txt"),
             TF_CPP_MIN_LOG_LEVEL="2")
  job = dict(job, module=os.path.join(kdir, "module.mlirbc"))
  try:
    r = subprocess.run([job["python"], os.path.abspath(__file__), "--compile-one", json.dumps(job)],
                       env=env, capture_output=True, text=True, timeout=1800, check=False)
    log = r.stdout + r.stderr
  except subprocess.TimeoutExpired:
    log = "timed out after 1800 s"
  with open(os.path.join(kdir, "compile.log"), "w") as f:
    f.write(log)
  for name in os.listdir(kdir):
    if name.endswith(".mlir-passes.log"):   # ~64 MB per kernel
      os.remove(os.path.join(kdir, name))
  row = parse_ptxas("".join(open(os.path.join(kdir, n)).read() for n in sorted(os.listdir(kdir))
                            if n.endswith(".ptxas")))
  cmds = os.path.join(kdir, "ptxas_cmd.txt")
  if "registers" not in row:
    tail = [l for l in log.splitlines() if l.strip() and not l.startswith("JIT session error")]
    return {"error": f"no ptxas report: {(tail or ['no output'])[-1][:200]} (see {kdir})"}
  if not os.path.exists(cmds) or "-arch=" not in open(cmds).read():   # XLA found another ptxas
    return {"error": f"the ptxas report is not from {job['ptxas']} (see {cmds})"}
  sass = [n for n in sorted(os.listdir(kdir)) if n.endswith(".sass_ctrl")]
  if sass:
    row["ex2_under_wgmma"] = ex2_under_wgmma(open(os.path.join(kdir, sass[0])).read())
  return row


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--spec", default="strided:16:64")
  p.add_argument("--length", type=int, default=4096)
  p.add_argument("--kv-heads", type=int, default=32, help="32 query heads; 8 = GQA 32/8")
  p.add_argument("--config", action="append", default=[],
                 help="[NAME:]field=value,... of MosaicBwdConfig, e.g. 'registers=(240,24)'")
  p.add_argument("--fwd-config", action="append", default=[],
                 help="[NAME:]field=value,... of MosaicConfig (a fwd_NAME row), e.g. "
                      "sf:longest_first=False")
  p.add_argument("--only", nargs="+", help=f"kernels ({', '.join(KERNELS)}) or row names")
  p.add_argument("--work", default="/tmp/ptxas_offline", help="side venv and scratch files")
  p.add_argument("--python", help="python of a venv with the CUDA plugin (default WORK/venv)")
  p.add_argument("--ptxas", help="ptxas binary (default the nvidia-cuda-nvcc-cu12 wheel's)")
  p.add_argument("--out", help="dumps and summary.json (default WORK/out)")
  p.add_argument("--setup", action="store_true", help="create WORK/venv with pip first")
  p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--compile-one", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  try:
    if args.probe:
      print(json.dumps(probe()))
      return 0
    if args.compile_one:
      compile_one(json.loads(args.compile_one))
      return 0
    configs = [("", {})] + [parse_config(c) for c in args.config]
    fwd_configs = [parse_config(c, "--fwd-config") for c in args.fwd_config]
    if args.setup:
      setup_venv(args.work)
    job = prepare(args)
    os.environ["JAX_PLATFORMS"] = "cpu"
    try:
      table = kernels(args.spec, args.length, 32, args.kv_heads, 128, configs, fwd_configs)
    except (TypeError, ValueError) as e:   # unknown config field, bad registers, bad spec
      raise SetupError(e) from None
    table = {k: v for k, v in table.items() if not args.only or {k, v[0]} & set(args.only)}
    if not table:
      raise SetupError(f"--only {' '.join(args.only)} matches none of {', '.join(KERNELS)}")
  except (SetupError, subprocess.CalledProcessError) as e:
    print(f"{PROG}: {e}", file=sys.stderr)
    return 2

  import jax
  out = args.out or os.path.join(args.work, "out")
  print(f"jax {jax.__version__}, ptxas {job['ptxas_version']} ({job['ptxas']}); {args.spec}, "
        f"L={args.length}, heads 32/{args.kv_heads}, D=128, bf16; dumps in {out}")
  print(f"{'kernel':34s} {'regs':>5s} {'stack':>6s} {'spill_st':>8s} {'spill_ld':>8s} "
        f"{'notes':>5s}  codes", flush=True)
  rows = []
  for name, (_, fn, shapes, over) in table.items():
    try:
      mods = mosaic_modules(fn, shapes)
      results = [] if mods else [(name, {"error": "no mosaic_gpu custom call in the lowering"})]
    except Exception as e:  # pylint: disable=broad-except
      mods, results = [], [(name, {"error": f"lowering: {type(e).__name__}: {e}"[:300]})]
    for i, m in enumerate(mods):
      kname = name if len(mods) == 1 else f"{name}.{i}"
      results.append((kname, compile_module(job, m, os.path.join(out, kname))))
    for kname, row in results:
      rows.append(dict(kernel=kname, config=over, **row))
      if "error" in row:
        print(f"{kname:34s} ERROR {row['error']}", flush=True)
        continue
      notes = " ".join(f"{c}x{n}" for c, n in sorted(row["notes"].items()))
      under = row.get("ex2_under_wgmma")
      print(f"{kname:34s} {row['registers']:5d} {row.get('stack', 0):6d} "
            f"{row.get('spill_stores', 0):8d} {row.get('spill_loads', 0):8d} "
            f"{sum(row['notes'].values()):5d}  {notes}"
            + (f"  ex2 under wgmma {under}" if under else ""), flush=True)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(dict(rows=rows, jax=jax.__version__, ptxas=job["ptxas_version"], spec=args.spec,
                   length=args.length, heads=32, kv_heads=args.kv_heads, head_dim=128), f, indent=1)
  return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
