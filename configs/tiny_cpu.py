r"""Tiny hybrid LongGen model on the shipped corpus: the CPU demo and the trainer tests' base.

Command (what ``make demo`` runs)::

  python -m longgen_jax.train --config=configs/tiny_cpu.py --workdir=workdirs/demo

Variants: ``configs/tiny_cpu.py:full`` is the all-full-attention baseline;
``configs/tiny_cpu.py:sparse=strided:2:4@16`` swaps the sparse pattern, ``:steps=100`` shortens
the run. Any field can be overridden, e.g. ``--config.train.batch_size=4``.

Your own data: ``configs/tiny_cpu.py:data=SHARDS`` trains on the output directory of
``python -m longgen_jax.data.prepare --out=SHARDS`` (its tokenizer and vocabulary size are read from
``SHARDS/index.json``; ``:data=SHARDS,tokenizer=DIR`` names a Hugging Face tokenizer directory
instead, then set ``--config.model.vocab_size`` to at least its id count).

Hardware: 2 CPU cores, about 2-4 minutes (300 steps of 16 x 128 tokens, ~0.3-0.6 s each, plus
~15-25 s to compile), under 1 GB of memory.

Expected result: the loss (nats per byte) falls from 5.6 (uniform over the 264 ids) to ~3.0 by
step 25, ~2.4 by step 50 and ~1.3-1.5 by step 300 (300 steps are about 3 passes over the 216 KB
corpus, so the late loss is partly memorisation). Checkpoints at steps 100, 200 (kept: the last
2) and 300 under ``WORKDIR/checkpoints``; ``metrics.jsonl`` and ``tb/`` hold the curve.

Model: byte vocabulary, d_model 128, 4 layers (sparse, FULL, sparse, sparse: LongGen's middle
third), 4 query / 2 KV heads, 0.86M parameters. The sparse layers see 16 sink tokens plus a
window of 32 (blocks of 16), so at 128 tokens they really are sparse.
"""

from ml_collections import FieldReference

from longgen_jax.data.config import default_data_config, prepared_data_config
from longgen_jax.training import config_utils


def get_config(arg=None):
  """Config; ``arg``: ``full`` (baseline), ``sparse=<spec>``, ``steps=<n>``, ``data=<prepared
  dir>``, ``tokenizer=<byte|HF dir>``."""
  arg = config_utils.parse_arg(arg, full=False, sparse="sink_window:16:32@16", steps=300,
                               data="", tokenizer="")
  config = config_utils.base_config()
  config.seed = 0

  config.model.update(dict(
      vocab_size=264,          # the byte tokenizer's 259 ids, padded to a multiple of 8
      d_model=128,
      n_layers=4,
      n_heads=4,
      n_kv_heads=2,            # GQA
      ffn_dim=384,
      norm_eps=1e-5,
      rope=dict(theta=10000.0),
      tie_embeddings=False,
      param_dtype="float32",
      dtype="float32",         # CPU: no bf16 matmul speed-up, and bit-exact tests want fp32
      remat="none",
      scan_layers=True,
      attention_backend="auto",
      layout="full" if arg.full else "longgen",
      full="full@16",
  ))
  if not arg.full:
    config.model.sparse = arg.sparse
    config.model.n_full = FieldReference(None, field_type=int)   # None: round(n_layers / 3)
    # layout="indices" + full_layers=(i, ...) puts the full layers anywhere (ablations).
    config.model.full_layers = FieldReference(None, field_type=tuple)
  config_utils.link_seq_len(config)

  # The shipped corpus (longgen_jax/data/corpus/train.txt), byte tokenizer, documents packed
  # first-fit into rows with one segment each (docs/data.md has every field).
  config.data = default_data_config()
  if arg.data:   # prepared shards (python -m longgen_jax.data.prepare)
    config.data, vocab = prepared_data_config(arg.data, arg.tokenizer)
    if vocab:
      config.model.vocab_size = -(-vocab // 8) * 8
  elif arg.tokenizer:
    config.data.tokenizer = ({"type": "byte", "path": ""} if arg.tokenizer == "byte"
                             else {"type": "hf", "path": arg.tokenizer})

  t = config.train
  t.steps = arg.steps
  t.batch_size = 16
  t.grad_accum = 1
  t.seq_len = 128
  t.loss_chunk = 64            # exercises the chunked loss (2 chunks per row)
  t.lr = 3e-3
  t.schedule = "cosine"
  t.warmup_steps = 30
  t.min_lr_ratio = 0.1
  t.weight_decay = 0.1
  t.grad_clip = 1.0
  t.log_every = 50

  config.checkpoint.every = 100
  config.checkpoint.keep = 2
  return config
