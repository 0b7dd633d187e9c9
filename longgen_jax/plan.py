r"""Memory / FLOP planner: does a training config fit a machine, and with which mesh?

Usage::

  # one config on one mesh and system
  python -m longgen_jax.plan --config=configs/llama7b_128k.py --mesh=fsdp=-1,sequence=8 \
      --system=64xh100
  # search meshes and remat policies that fit
  python -m longgen_jax.plan --config=configs/llama70b_128k.py --system=v5p-64 --search
  # the standard question: 7B / 70B at 128K on 8xH100, 8xH200, TPU v5p-64
  python -m longgen_jax.plan --table
  # check the estimate against XLA's buffer assignment (compiles the real train step on CPU)
  python -m longgen_jax.plan --config=configs/tiny_cpu.py --mesh=fsdp=2,sequence=4 --validate

Everything is per device (``longgen_jax.parallel.memory`` has the model). ``--system`` is one of
``8xh100``, ``8xh200``, ``v5p-64`` (32 chips), ``64xh100``, ``256xh100`` or ``N:KIND`` with
KIND in h100 / h200 / v5p. The estimate is for the trainer's step: fp32 master weights and AdamW
moments in ``model.param_dtype``, ``train.grad_accum`` micro-batches, chunked loss.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS
_CONFIG = None


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program: importing this module for its
  functions must not clash with other absl programs, e.g. the trainer's ``--config``)."""
  global _CONFIG
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                            lock_config=False)
  flags.DEFINE_string("mesh", None, "Mesh override, e.g. 'fsdp=-1,sequence=8,tensor=1'.")
  flags.DEFINE_string("system", "8xh100", "Target: 8xh100, 8xh200, v5p-64, 64xh100, N:h100 ...")
  flags.DEFINE_bool("search", False, "Search meshes / remat policies that fit the system.")
  flags.DEFINE_bool("table", False, "7B and 70B at 128K on 8xH100, 8xH200 and TPU v5p-64.")
  flags.DEFINE_bool("validate", False, "Compile the real train step on CPU and compare with "
                    "compiled.memory_analysis() (small configs; sets fake CPU devices).")
  flags.DEFINE_float("mfu", 0.4, "Assumed MFU for the step-time column.")
  flags.DEFINE_bool("json", False, "Print JSON instead of tables.")
  flags.DEFINE_float("margin", 0.15, "--search/--table keep this fraction of the budget free: "
                     "the estimate is within about +-15% of XLA for remat'd layers "
                     "(docs/parallel.md).")


# Searched remat policies, by decreasing recompute. "none" is left out: at long context it never
# fits, and its estimate is the least accurate (-20 to -30%). The ``*_attention`` policies save the
# kernel's out + lse (1.6% more than ``context``) and never re-run the attention forward.
REMATS = ("full", "save_context", "save_attention", "minimal_with_context",
          "minimal_with_attention")


def parse_system(text: str) -> tuple[Any, int]:
  """``(Hardware, n_devices)`` from a system name."""
  from longgen_jax.parallel import memory  # pylint: disable=import-outside-toplevel
  if text in memory.SYSTEMS:
    kind, n = memory.SYSTEMS[text]
    return memory.HARDWARE[kind], n
  n, sep, kind = text.partition(":")
  if not sep or kind not in memory.HARDWARE or not n.isdigit():
    raise app.UsageError(f"unknown system {text!r}: use one of {sorted(memory.SYSTEMS)} or "
                         f"N:KIND with KIND in {sorted(memory.HARDWARE)}")
  return memory.HARDWARE[kind], int(n)


@dataclasses.dataclass
class Case:
  """What to estimate: model, shapes, mesh sizes, remat override."""

  name: str
  cfg: Any                       # ModelConfig
  seq_len: int
  global_batch: int
  grad_accum: int
  loss_chunk: int
  sizes: dict
  sp_impl: str = "ring"


def case_from_config(config, mesh: str | None, n_devices: int, name: str = "") -> Case:
  from longgen_jax.parallel.mesh import MeshConfig  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import config_utils  # pylint: disable=import-outside-toplevel
  cfg = config_utils.validate_config(config)
  mc = MeshConfig.from_any(mesh if mesh else config.mesh)
  t = config.train
  return Case(name, cfg, int(t.seq_len), int(t.batch_size), int(t.grad_accum),
              int(t.loss_chunk), mc.resolve(n_devices), mc.sequence_attention)


def run_estimate(case: Case, hw=None):
  """The memory / FLOP estimate of ``case`` (XLA:GPU-corrected when ``hw`` is a GPU)."""
  from longgen_jax.parallel import memory  # pylint: disable=import-outside-toplevel
  micro_rows = case.global_batch // case.grad_accum
  div = case.sizes["data"] * case.sizes["fsdp"]
  if micro_rows % div:
    raise ValueError(f"micro-batch of {micro_rows} rows does not split over data*fsdp={div}")
  return memory.estimate(case.cfg, case.sizes, seq_len=case.seq_len,
                         global_batch=case.global_batch, grad_accum=case.grad_accum,
                         loss_chunk=case.loss_chunk, sp_impl=case.sp_impl,
                         platform=hw.platform if hw is not None else "cpu")


def report(case: Case, est, hw, n_devices: int, mfu: float) -> dict:
  step_s = est.flops_per_device / (hw.peak_flops * mfu)
  return {"name": case.name, "mesh": case.sizes, "remat": case.cfg.remat,
          "remat_full": case.cfg.remat_full, "remat_sparse": case.cfg.remat_sparse,
          "seq_len": case.seq_len, "global_batch": case.global_batch,
          "grad_accum": case.grad_accum,
          "memory_gib": {k: round(v / 2 ** 30, 6) for k, v in est.rows()},
          "budget_gib": round(hw.budget / 2 ** 30, 2), "fits": est.total <= hw.budget,
          "model_tflop_per_device_step": round(est.flops_per_device / 1e12, 2),
          "hw_tflop_per_device_step": round(est.hw_flops_per_device / 1e12, 2),
          "step_s_at_mfu": round(step_s, 2), "mfu": mfu, "devices": n_devices,
          "hardware": hw.name}


def print_report(r: dict) -> None:
  print(f"{r['name'] or 'config'} on {r['devices']} x {r['hardware']}  mesh "
        f"{','.join(f'{k}={v}' for k, v in r['mesh'].items())}  remat {r['remat']}"
        f"{' (full layers: %s)' % r['remat_full'] if r['remat_full'] else ''}"
        f"{' (sparse layers: %s)' % r['remat_sparse'] if r['remat_sparse'] else ''}")
  print(f"  seq {r['seq_len']}, batch {r['global_batch']} rows in {r['grad_accum']} micro-batches")
  small = r["memory_gib"]["total"] < 1.0
  for k, v in r["memory_gib"].items():
    print(f"  {k:22s}{v * 1024:10.1f} MiB" if small else f"  {k:22s}{v:10.2f} GiB")
  print(f"  budget                {r['budget_gib']:10.2f} GiB  -> "
        f"{'FITS' if r['fits'] else 'DOES NOT FIT'}")
  print(f"  model FLOPs / device / step {r['model_tflop_per_device_step']:.1f} T "
        f"(with recompute {r['hw_tflop_per_device_step']:.1f} T); "
        f"step ~ {r['step_s_at_mfu']:.1f} s "
        f"at {r['mfu']:.0%} MFU")


def candidates(case: Case, n_devices: int):
  """Meshes (tensor, sequence; fsdp takes the rest) x remat policies x micro-batch sizes."""
  cfg = case.cfg
  pows = [2 ** i for i in range(0, 12) if 2 ** i <= n_devices]
  for tp, sp in itertools.product([p for p in pows if p <= 8], pows):
    if n_devices % (tp * sp) or cfg.n_kv_heads % tp or case.seq_len % (2 * sp):
      continue
    fsdp = n_devices // (tp * sp)
    micro = fsdp                               # one row per fsdp shard per micro-batch
    if case.global_batch % micro:
      continue
    for remat in REMATS:
      c = dataclasses.replace(case, cfg=cfg.replace(remat=remat, remat_full=None,
                                                    remat_sparse=None),
                              grad_accum=case.global_batch // micro,
                              sizes={"data": 1, "fsdp": fsdp, "sequence": sp, "tensor": tp})
      yield c


def search(case: Case, hw, n_devices: int, margin: float = 0.15):
  """Best candidate that fits with ``margin`` headroom: least recompute, then least
  sequence x tensor; else the smallest one."""
  best, smallest = None, None
  for c in candidates(case, n_devices):
    est = run_estimate(c, hw)
    # REMATS is ordered by decreasing recompute: a higher index recomputes less.
    key = (REMATS.index(c.cfg.remat), -(c.sizes["sequence"] * c.sizes["tensor"]))
    if smallest is None or est.total < smallest[1].total:
      smallest = (c, est)
    if est.total * (1 + margin) <= hw.budget and (best is None or key > best[2]):
      best = (c, est, key)
  return (best[0], best[1], True) if best else (smallest[0], smallest[1], False)


def _load_config_module(name: str):
  """``configs/<name>.py`` of this repository, imported by path."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(root, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"longgen_configs_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def standard_table(mfu: float, as_json: bool, margin: float) -> None:
  rows = []
  for model_name, mod in (("7B", _load_config_module("llama7b_128k")),
                          ("70B", _load_config_module("llama70b_128k"))):
    for layout in ("hybrid", "full"):
      config = mod.get_config("full" if layout == "full" else None)
      for system in ("8xh100", "8xh200", "v5p-64"):
        hw, n = parse_system(system)
        case = case_from_config(config, "fsdp=-1", n, f"{model_name} {layout} 128K")
        variants = [("fp32 weights+Adam", case)]
        if case.cfg.param_dtype == "float32":
          variants.append(("bf16 weights+Adam", dataclasses.replace(
              case, cfg=case.cfg.replace(param_dtype="bfloat16"))))
        for label, c in variants:
          best, est, ok = search(c, hw, n, margin)
          r = report(best, est, hw, n, mfu)
          r.update(system=system, precision=label, fits=ok)   # ok: with the margin
          rows.append(r)
  if as_json:
    print(json.dumps(rows, indent=1))
    return
  print(f"{'model':15s} {'system':8s} {'precision':18s} {'fits':5s} {'mesh (fsdp,seq,tp)':19s} "
        f"{'remat':22s} {'GiB/dev':>8s} {'budget':>7s} {'step s@' + format(mfu, '.0%'):>10s}")
  for r in rows:
    m = r["mesh"]
    print(f"{r['name']:15s} {r['system']:8s} {r['precision']:18s} "
          f"{'yes' if r['fits'] else 'NO':5s} {str((m['fsdp'], m['sequence'], m['tensor'])):19s} "
          f"{r['remat']:22s} {r['memory_gib']['total']:8.1f} {r['budget_gib']:7.1f} "
          f"{r['step_s_at_mfu']:10.1f}")
  print(f"(fits: estimate x {1 + margin:.2f} <= budget; NO: the smallest configuration found "
        "is shown. Batch: 32 rows x 128K per step, one row per fsdp shard per micro-batch.)")


def validate(config, mesh: str | None) -> None:
  """Compiles the real train step on fake CPU devices and compares with the estimate."""
  from longgen_jax.parallel.mesh import MeshConfig  # pylint: disable=import-outside-toplevel
  mc = MeshConfig.from_any(mesh if mesh else config.mesh)
  n = 1
  for a in ("data", "fsdp", "sequence", "tensor"):
    n *= max(1, getattr(mc, a))
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={n}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  from longgen_jax.parallel import validate as validate_lib  # pylint: disable=C0415
  case = case_from_config(config, mesh, n, "validate")
  actual, est = validate_lib.compiled_vs_estimate(config, mc)
  print_report(report(case, est, parse_system(f"{n}:h100")[0], n, FLAGS.mfu))
  err = (est.total - actual) / actual
  print(f"  XLA memory_analysis (args + temp + out - alias): {actual / 2 ** 20:.1f} MiB; "
        f"estimate error {err:+.1%}")
  if case.cfg.dtype != "float32":
    print("  note: XLA:CPU computes bf16 matmuls in fp32 (bigger temporaries than on GPU/TPU); "
          "validate with model.dtype=float32 for a like-for-like check")
  if any(case.cfg.remat_for(s) == "none" for s in case.cfg.layers):
    print("  note: layers without remat are estimated to -20..-30% (docs/parallel.md)")


PROG = "longgen_jax.plan"


def main(argv):
  """``_main`` with bad input (config, mesh, system) as one line and exit code 2."""
  from longgen_jax import cli_errors  # pylint: disable=import-outside-toplevel
  from longgen_jax.model.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from longgen_jax.parallel.mesh import MeshError  # pylint: disable=import-outside-toplevel
  try:
    _main(argv)
  except (app.UsageError, ConfigError, MeshError, ValueError, OSError) as e:
    root = cli_errors.root_cause(e)
    if isinstance(root, OSError) and root.filename:
      cli_errors.fail(PROG, f"cannot load {root.filename}: {root.strerror}")
    cli_errors.fail(PROG, (str(root).strip().splitlines() or [type(root).__name__])[0])


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if FLAGS.table:
    standard_table(FLAGS.mfu, FLAGS.json, FLAGS.margin)
    return
  from longgen_jax import cli_errors  # pylint: disable=import-outside-toplevel
  config = cli_errors.config_value(_CONFIG, PROG)
  if config is None:
    raise app.UsageError("--config is required (or --table)")
  if FLAGS.validate:
    validate(config, FLAGS.mesh)
    return
  hw, n = parse_system(FLAGS.system)
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  name = os.path.basename(config_flags.get_config_filename(FLAGS["config"]) or "")
  case = case_from_config(config, FLAGS.mesh, n, name)
  if FLAGS.search:
    case, est, ok = search(case, hw, n, FLAGS.margin)
    if not ok:
      print("no mesh / remat combination fits; the smallest one:")
  else:
    est = run_estimate(case, hw)
  r = report(case, est, hw, n, FLAGS.mfu)
  print(json.dumps(r, indent=1) if FLAGS.json else "", end="")
  if not FLAGS.json:
    print_report(r)


if __name__ == "__main__":
  from longgen_jax import cli_errors  # pylint: disable=ungrouped-imports
  define_flags()
  app.run(main, flags_parser=cli_errors.config_flags_parser(PROG))
