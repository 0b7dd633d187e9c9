"""Command line of ``python -m longgen_jax.hf.import_hf`` (flags live here, not in the library).

Flags are defined on a private ``FlagValues``, so ``run(argv)`` also works in-process (tests)
next to other absl programs that define ``--config`` or ``--out``.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags
from ml_collections import config_flags

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
  cfg = import_checkpoint(FLAGS.hf_dir, FLAGS.out, cfg, overwrite=FLAGS.overwrite)
  return f"imported {FLAGS.hf_dir} -> {FLAGS.out}: {cfg.describe()}"


def run(argv=None) -> None:
  """Parses ``argv`` (``sys.argv`` by default) and imports; exits 2 with one line on errors."""
  prog = "python -m longgen_jax.hf.import_hf"
  try:
    FLAGS(list(sys.argv if argv is None else argv))
    if not FLAGS.hf_dir or not FLAGS.out:
      raise flags.Error("--hf_dir and --out are required")
    print(_import())
  except (flags.Error, HFConversionError, ConfigError) as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(2)
  finally:
    FLAGS.unparse_flags()
