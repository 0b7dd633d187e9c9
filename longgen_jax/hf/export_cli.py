"""Command line of ``python -m longgen_jax.hf.export`` (flags live here, not in the library).

Flags are defined on a private ``FlagValues``, so ``run(argv)`` also works in-process (tests).
"""

from __future__ import annotations

import sys

from absl import flags

from longgen_jax.cli_errors import parse_private_flags
from longgen_jax.hf import export as export_module
from longgen_jax.hf.errors import HFConversionError
from longgen_jax.hf.export import export_checkpoint
from longgen_jax.hf.targets import TARGETS
from longgen_jax.model.errors import ConfigError

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "Imported checkpoint (import_hf --out) or trainer run "
                    "(WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/<step>).",
                    flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output Hugging Face model directory.", flag_values=FLAGS)
flags.DEFINE_enum("target", "auto", TARGETS, "auto: llama if every layer is full, else longgen "
                  "(remote code); stock_sliding: MinistralForCausalLM (sink 0 windows only).",
                  flag_values=FLAGS)
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                  "Weight dtype of the export (default: the checkpoint's).", flag_values=FLAGS)
flags.DEFINE_float("max_shard_gb", 5.0, "Maximum safetensors shard size (GiB).",
                   flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace a non-empty output directory.", flag_values=FLAGS)


export_doc = export_module.__doc__


def run(argv=None) -> None:
  """Parses ``argv`` (``sys.argv`` by default) and exports; exits 2 with one line on errors."""
  prog = "python -m longgen_jax.hf.export"
  try:
    parse_private_flags(FLAGS, list(sys.argv if argv is None else argv), export_doc)
    if not FLAGS.checkpoint or not FLAGS.out:
      raise flags.Error("--checkpoint and --out are required")
    target = export_checkpoint(FLAGS.checkpoint, FLAGS.out, target=FLAGS.target,
                               dtype=FLAGS.dtype, overwrite=FLAGS.overwrite,
                               max_shard_bytes=int(FLAGS.max_shard_gb * 1024 ** 3))
    print(f"exported {FLAGS.checkpoint} -> {FLAGS.out} (target {target})")
  except (flags.Error, HFConversionError, ConfigError) as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(2)
  finally:
    FLAGS.unparse_flags()
