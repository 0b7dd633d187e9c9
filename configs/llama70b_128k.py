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
AdamW with LR 2e-5 constant after warmup, clip 1.0, bf16 compute / fp32 master weights, full
remat, chunked loss.

Hardware: 256 x H100-80GB (32 hosts; LongGen used tensor parallel 8 on 256 GPUs): mesh
tensor=8 x sequence=8 x fsdp=4 (-1), micro-batch 4 rows, 8 accumulation steps. FLOPs: 607.6
GFLOP/token (412.3 matmul + 195.3 attention) vs 927.7 for the full baseline: about 8.3 h at 40%
MFU (12.7 h for the baseline).

Expected: as for 7B, with a lower loss (about 1.7-1.8 nats/token on SlimPajama-like data) and a
smaller gap between the hybrid and the full baseline.
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
  config.init_from = ""            # set to a Hugging Face Llama-2-70b directory (see above)

  config.model.update(dict(
      vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672,
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
    config.model.n_full = FieldReference(None, field_type=int)   # None: round(80 / 3) = 27
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
  t.grad_accum = 8
  t.steps = TOKEN_BUDGET // (t.batch_size * SEQ_LEN)   # 1192 at 32 rows
  t.loss_chunk = 4096
  t.lr = 2e-5
  t.schedule = "constant"
  t.warmup_steps = 20
  t.weight_decay = 0.1
  t.b1, t.b2, t.eps = 0.9, 0.95, 1e-8
  t.grad_clip = 1.0
  t.log_every = 1

  config.checkpoint.every = 25
  config.checkpoint.keep = 3

  config.mesh.update(dict(data=1, fsdp=-1, sequence=8, tensor=8,
                          sequence_attention="ring", sequence_layout="zigzag"))
  return config
