r"""Llama-2-7B -> 128K context extension with the LongGen hybrid layout (arXiv 2410.01485).

Command (multi-host: the same command on every host)::

  python -m longgen_jax.train --config=configs/llama7b_128k.py --workdir=$RUN \
      --config.init_from=/path/to/Llama-2-7b-hf \
      --config.data.tokenizer.path=/path/to/Llama-2-7b-hf \
      --config.data.sources.slimpajama.path=/path/to/slimpajama_tokens

Variants (``get_config`` argument): ``configs/llama7b_128k.py:full`` is the full-attention
baseline (the same as ``configs/llama7b_128k_full.py``); ``:sparse=strided:32:64@64`` uses
LongGen's block-sparse variant instead of attention sink; ``:rope_theta=5e5`` changes RoPE's base.

Model: Llama-2-7B shapes (32 layers, d 4096, 32 heads, ffn 11008, vocab 32000). LongGen layout:
the middle third (11 layers, 10..20) keeps full attention, the 21 others use sink + window
(64 sink tokens + the last 4096 tokens, block 128: a 4160-token KV budget, 3% of 128K). RoPE
theta raised from 1e4 to 5e6 (configurable) for 32x longer positions.

Recipe (Fu et al. 2024, which LongGen follows): 5B tokens of length-upsampled data packed into
131072-token rows, 32 rows (4.2M tokens) per step -> 1192 steps; AdamW, LR 2e-5 constant after a
short warmup, clip 1.0; bf16 compute, fp32 master weights, chunked loss; remat ``save_attention``
(layer inputs and the attention kernels' out + lse are kept, projections and MLP recomputed: the
attention forward is never re-run; measured 47% MFU for the full layout on one H100 at 128K with
one document per row and ``auto``'s Hopper kernels since 2026-12-07, 46% with cuDNN before,
docs/benchmarks.md).

Hardware: 64 x H100-80GB (8 hosts): mesh fsdp=8 (-1) x sequence=8, micro-batch 8 rows
(1 per FSDP group), 4 accumulation steps. FLOPs: 79.3 GFLOP/token (39.6 matmul + 39.7
attention) vs 142.7 for the full baseline, so about 4.4 h at 40% MFU (7.8 h for the baseline).

Expected: the loss starts near the 4K model's on this data (about 2 nats/token, higher at
positions beyond 4K) and settles within ~200 steps; the hybrid model's loss tracks the full
baseline's closely, at ~1.5-1.8x its step speed (LongGen reports 1.55x at 128K).
"""

from longgen_jax.training import recipe_128k


def get_config(arg=None):
  """Config; ``arg``: ``full``, ``sparse=<spec>``, ``rope_theta=<float>``, ``batch=<rows>``.

  The shared recipe is ``longgen_jax/training/recipe_128k.py``; the 7B specifics are here.
  """
  return recipe_128k.get_config(
      arg,
      model=dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                 ffn_dim=11008),   # LongGen: round(32 / 3) = 11 full layers
      grad_accum=4,                # micro-batch 8 rows: one per FSDP group
      checkpoint_every=50,
      mesh=dict(fsdp=-1, sequence=8, tensor=1))
