r"""Llama-2-70B -> 128K context extension with the LongGen hybrid layout (arXiv 2410.01485).

Command (multi-host: the same command on every host)::

  python -m longgen_jax.train --config=configs/llama70b_128k.py --workdir=$RUN \
      --config.init_from=/path/to/Llama-2-70b-hf \
      --config.data.tokenizer.path=/path/to/Llama-2-70b-hf \
      --config.data.sources.slimpajama.path=/path/to/slimpajama_tokens

Variants (``get_config`` argument): ``configs/llama70b_128k.py:full`` is the full-attention
baseline (the same as ``configs/llama70b_128k_full.py``); ``:sparse=strided:32:64@64`` uses the
block-sparse variant; ``:rope_theta=5e5`` changes RoPE's base.

Model: Llama-2-70B shapes (80 layers, d 8192, 64 query / 8 KV heads, ffn 28672, vocab 32000).
LongGen layout: the middle 27 layers (26..52) keep full attention, the 53 others use sink +
window (64 sink tokens + the last 4096, block 128). RoPE theta 5e6 (configurable).

Recipe: as ``llama7b_128k.py``: 5B tokens in 131072-token rows, 32 rows per step -> 1192 steps,
AdamW with LR 2e-5 constant after warmup, clip 1.0, bf16 compute / fp32 master weights,
``save_attention`` remat (the attention forward is never re-run), chunked loss.

Hardware: 256 x H100-80GB (32 hosts; LongGen used tensor parallel 8 on 256 GPUs): mesh
tensor=8 x sequence=8 x fsdp=4 (-1), micro-batch 4 rows, 8 accumulation steps. FLOPs: 607.6
GFLOP/token (412.3 matmul + 195.3 attention) vs 927.7 for the full baseline: about 8.3 h at 40%
MFU (12.7 h for the baseline).

Expected: as for 7B, with a lower loss (about 1.7-1.8 nats/token on SlimPajama-like data) and a
smaller gap between the hybrid and the full baseline.
"""

from longgen_jax.training import recipe_128k


def get_config(arg=None):
  """Config; ``arg``: ``full``, ``sparse=<spec>``, ``rope_theta=<float>``, ``batch=<rows>``.

  The shared recipe is ``longgen_jax/training/recipe_128k.py``; the 70B specifics are here.
  """
  return recipe_128k.get_config(
      arg,
      model=dict(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                 ffn_dim=28672),   # LongGen: round(80 / 3) = 27 full layers
      grad_accum=8,                # micro-batch 4 rows
      checkpoint_every=25,
      mesh=dict(fsdp=-1, sequence=8, tensor=8))
