"""Command line of ``python -m longgen_jax.hf.import_hf`` (flags live here, not in the library).

Flags are defined on a private ``FlagValues``, so ``run(argv)`` also works in-process (tests)
next to other absl programs that define ``--config`` or ``--out``.

Each tensor is read slice by slice straight into its shards on ``--mesh`` (the trainer's
placement of that parameter: ``longgen_jax.hf.shardings.canonical_shardings``); the default
``fsdp=-1`` spreads every weight over all devices. Multi-process: start one process per host
with ``--coordinator_address/--num_processes/--process_id`` (or the ``LONGGEN_*`` / ``JAX_*``
environment, see ``longgen_jax.parallel.distributed``) and an ``--out`` on a shared filesystem;
every process reads only its own shards and orbax writes them.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
from absl import flags
from ml_collections import config_flags

from longgen_jax import parallel
from longgen_jax.hf import shardings as hf_shardings
from longgen_jax.hf.errors import HFConversionError
from longgen_jax.hf.import_hf import hf_model_config, import_checkpoint
from longgen_jax.model.errors import ConfigError

FLAGS = flags.FlagValues()
flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (config.json + *.safetensors).",
                    flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output checkpoint directory.", flag_values=FLAGS)
config_flags.DEFINE_config_file(
    "config", None, "Optional ml_collections config; its `model` entries override the HF-derived "
    "ModelConfig (shapes must agree).", flag_values=FLAGS, lock_config=False)
flags.DEFINE_string("layout", None, "Layer layout: longgen | full | explicit | indices.",
                    flag_values=FLAGS)
flags.DEFINE_string("sparse", None, "Sparse spec for layout=longgen, e.g. sink_window:64:4096 or "
                    "strided:16:8@64.", flag_values=FLAGS)
flags.DEFINE_string("full", None, "Spec of the full layers (e.g. full@64).", flag_values=FLAGS)
flags.DEFINE_integer("n_full", None, "Full-attention layers (default round(L/3)).",
                     flag_values=FLAGS)
flags.DEFINE_list("layers", None, "Explicit per-layer specs (implies layout=explicit).",
                  flag_values=FLAGS)
flags.DEFINE_float("rope_theta", None, "New RoPE theta (context extension).", flag_values=FLAGS)
flags.DEFINE_string("rope_scaling", None, "New RoPE scaling (none drops e.g. llama3).",
                    flag_values=FLAGS)
flags.DEFINE_integer("max_seq_len", None, "New training context length.", flag_values=FLAGS)
flags.DEFINE_enum("param_dtype", None, ["float32", "bfloat16", "float16"],
                  "Parameter dtype (default: the weights').", flag_values=FLAGS)
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                  "Compute dtype (default: the weights').", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace a non-empty output directory.", flag_values=FLAGS)
flags.DEFINE_string(
    "mesh", "fsdp=-1", "Device mesh the weights are read into, as 'axis=size,...' over data, "
    "fsdp, sequence, tensor (-1: the remaining devices), e.g. 'fsdp=-1' (default: every device, "
    "ZeRO-3 like the trainer) or 'fsdp=4,tensor=2'. Each tensor gets the trainer's sharding of "
    "that parameter; each process reads only the slices of its own shards.", flag_values=FLAGS)
flags.DEFINE_float("progress_secs", 10.0, "Print a progress line (tensor i/N, bytes, elapsed) "
                   "at most every this many seconds (0: every tensor).", flag_values=FLAGS)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process import "
                    "under jax.distributed; default: LONGGEN_* / JAX_* environment).",
                    flag_values=FLAGS)
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process import).",
                     flag_values=FLAGS)
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).",
                     flag_values=FLAGS)


def _overrides() -> dict:
  out: dict = {}
  if FLAGS.config is not None:
    out.update(dict(FLAGS.config.model))
  for key in ("layout", "sparse", "full", "n_full", "max_seq_len", "param_dtype", "dtype"):
    if FLAGS[key].value is not None:
      out[key] = FLAGS[key].value
  if FLAGS.layers:
    out["layout"], out["layers"] = "explicit", tuple(FLAGS.layers)
  return out


def _import() -> str:
  cfg = hf_model_config(FLAGS.hf_dir, **_overrides())
  rope = {k: FLAGS[f"rope_{k}"].value for k in ("theta", "scaling")
          if FLAGS[f"rope_{k}"].value is not None}
  if rope:
    cfg = cfg.replace(rope=dataclasses.replace(cfg.rope, **rope))
  mesh = parallel.make_mesh(FLAGS.mesh)
  lead = jax.process_index() == 0
  if lead:
    print(f"mesh {dict(mesh.shape)} over {mesh.size} device(s), {jax.process_count()} "
          "process(es)", flush=True)
  cfg = import_checkpoint(
      FLAGS.hf_dir, FLAGS.out, cfg, overwrite=FLAGS.overwrite,
      sharding_fn=hf_shardings.sharding_fn(hf_shardings.canonical_shardings(cfg, mesh)),
      progress=(lambda line: print(line, flush=True)) if lead else None,
      progress_every_s=FLAGS.progress_secs)
  return f"imported {FLAGS.hf_dir} -> {FLAGS.out}: {cfg.describe()}"


def _start_distributed() -> None:
  """jax.distributed from the flags or the environment (before any device is touched)."""
  try:
    parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except ValueError as e:
    raise flags.Error(f"distributed start-up: {e}") from None


def usage() -> str:
  """The ``--help`` text: what the command does, then every flag."""
  from longgen_jax.hf import import_hf  # pylint: disable=import-outside-toplevel
  return (f"{import_hf.__doc__.strip()}\n\n{__doc__.split(chr(10) * 2, 2)[2].strip()}\n\n"
          f"Flags:\n{FLAGS.get_help(include_special_flags=False)}")


def run(argv=None) -> None:
  """Parses ``argv`` (``sys.argv`` by default) and imports; exits 2 with one line on errors."""
  prog = "python -m longgen_jax.hf.import_hf"
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("-h", "--help", "--helpfull", "-?") for a in argv[1:]):
    print(usage())
    return
  try:
    FLAGS(argv)
    if not FLAGS.hf_dir or not FLAGS.out:
      raise flags.Error("--hf_dir and --out are required")
    _start_distributed()
    line = _import()
    if jax.process_index() == 0:
      print(line)
  except (flags.Error, HFConversionError, ConfigError, parallel.MeshError) as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(2)
  finally:
    FLAGS.unparse_flags()
