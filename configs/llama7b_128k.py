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
short warmup, clip 1.0; bf16 compute, fp32 master weights, full remat, chunked loss.

Hardware: 64 x H100-80GB (8 hosts): mesh fsdp=8 (-1) x sequence=8, micro-batch 8 rows
(1 per FSDP group), 4 accumulation steps. FLOPs: 79.3 GFLOP/token (39.6 matmul + 39.7
attention) vs 142.7 for the full baseline, so about 4.4 h at 40% MFU (7.8 h for the baseline).

Expected: the loss starts near the 4K model's on this data (about 2 nats/token, higher at
positions beyond 4K) and settles within ~200 steps; the hybrid model's loss tracks the full
baseline's closely, at ~1.5-1.8x its step speed (LongGen reports 1.55x at 128K).
"""

from ml_collections import FieldReference

from longgen_jax.training import config_utils

SEQ_LEN = 131072
TOKEN_BUDGET = 5_000_000_000


def get_config(arg=None):
  """Config; ``arg``: ``full``, ``sparse=<spec>``, ``rope_theta=<float>``, ``batch=<rows>``."""
  arg = config_utils.parse_arg(arg, full=False, sparse="sink_window:64:4096@128",
                               rope_theta=5e6, batch=32)
  config = config_utils.base_config()
  config.seed = 0
  config.init_from = ""            # set to a Hugging Face Llama-2-7b directory (see above)

  config.model.update(dict(
      vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
      norm_eps=1e-5,
      rope=dict(theta=arg.rope_theta),
      tie_embeddings=False,
      param_dtype="float32",
      dtype="bfloat16",
      remat="full",
      scan_layers=True,
      attention_backend="auto",
      layout="full" if arg.full else "longgen",
  ))
  if not arg.full:
    config.model.sparse = arg.sparse
    config.model.full_layers = FieldReference(None, field_type=tuple)  # with layout="indices"
    config.model.n_full = FieldReference(None, field_type=int)   # None: round(32 / 3) = 11
  config_utils.link_seq_len(config)

  # Fu et al.: SlimPajama pre-tokenized with Llama-2's tokenizer (python -m
  # longgen_jax.data.prepare), documents < 4096 tokens kept with p=0.1, packed into 128K rows
  # regardless of document boundaries. docs/data.md has every field.
  config.data.update(dict(
      sources={"slimpajama": dict(type="arrayrecord", path="", weight=1.0,
                                  upsample=dict(threshold=4096, keep_prob=0.1))},
      tokenizer=dict(type="hf", path=""),   # the Llama-2 tokenizer directory
      packing="concat_then_split",
      mask_documents=False,
      add_bos=True,
      add_eos=True,
      shuffle=True,
  ))

  t = config.train
  t.seq_len = SEQ_LEN
  t.batch_size = arg.batch
  t.grad_accum = 4
  t.steps = TOKEN_BUDGET // (t.batch_size * SEQ_LEN)   # 1192 at 32 rows
  t.loss_chunk = 4096
  t.lr = 2e-5
  t.schedule = "constant"
  t.warmup_steps = 20
  t.weight_decay = 0.1
  t.b1, t.b2, t.eps = 0.9, 0.95, 1e-8
  t.grad_clip = 1.0
  t.log_every = 1

  config.checkpoint.every = 50
  config.checkpoint.keep = 3

  config.mesh.update(dict(data=1, fsdp=-1, sequence=8, tensor=1,
                          sequence_attention="ring", sequence_layout="zigzag"))
  return config
