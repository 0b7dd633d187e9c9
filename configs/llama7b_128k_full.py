r"""Full-attention baseline of ``llama7b_128k.py``: every layer attends to all previous tokens.

Command::

  python -m longgen_jax.train --config=configs/llama7b_128k_full.py --workdir=$RUN \
      --config.init_from=/path/to/Llama-2-7b-hf \
      --config.data.tokenizer.path=/path/to/Llama-2-7b-hf \
      --config.data.sources.slimpajama.path=/path/to/slimpajama_tokens

The same as ``configs/llama7b_128k.py:full``: same data, optimizer, budget and mesh.

Hardware: as ``llama7b_128k.py`` (64 x H100); about 7.8 h at 40% MFU.

Expected: the reference loss curve for the hybrid model, which should track it closely while
training ~1.5x faster per step (LongGen reports 1.55x at 128K).
"""

from longgen_jax.training import config_utils


def get_config(arg=None):
  """``llama7b_128k.get_config("full")``; ``arg`` takes that file's other arguments."""
  base = config_utils.load_sibling_config(__file__, "llama7b_128k.py")
  return base.get_config("full" + (f",{arg}" if arg else ""))
