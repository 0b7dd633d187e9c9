"""``python -m longgen_jax.eval`` (see ``longgen_jax/eval/cli.py``)."""

import sys

from longgen_jax.eval.cli import main

if __name__ == "__main__":
  sys.exit(main())
