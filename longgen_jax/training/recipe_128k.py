"""The shared body of the Llama-2 -> 128K context-extension configs (``configs/llama*_128k.py``).

Fu et al. 2024 (which LongGen follows): 5B tokens of length-upsampled SlimPajama packed into
131072-token rows, 32 rows per step; AdamW, LR 2e-5 constant after a short warmup, clip 1.0;
bf16 compute, fp32 master weights, ``save_attention`` remat, chunked loss; a ring / zigzag
sequence-parallel mesh. A config file gives only what differs per model size (shapes,
accumulation, checkpoint interval, mesh); its docstring stays the place for the command,
hardware and expected result. Config files are loaded by path, so this lives in the package
rather than next to them.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections
from ml_collections import FieldReference

from longgen_jax.training import config_utils

SEQ_LEN = 131072
TOKEN_BUDGET = 5_000_000_000


def get_config(arg: str | None, *, model: Mapping[str, Any], grad_accum: int,
               checkpoint_every: int, mesh: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The 128K recipe for one model size.

  Args:
    arg: the config file's argument: ``full``, ``sparse=<spec>``, ``rope_theta=<float>``,
      ``batch=<rows>`` (comma separated).
    model: the Llama-2 shapes (vocab_size, d_model, n_layers, n_heads, n_kv_heads, ffn_dim).
    grad_accum: ``train.grad_accum``.
    checkpoint_every: ``checkpoint.every``.
    mesh: ``fsdp`` / ``sequence`` / ``tensor`` sizes (``data`` is 1, ring attention, zigzag).
  """
  arg = config_utils.parse_arg(arg, full=False, sparse="sink_window:64:4096@128",
                               rope_theta=5e6, batch=32)
  config = config_utils.base_config()
  config.seed = 0
  config.init_from = ""            # a Hugging Face Llama-2 directory (see the config's docstring)

  config.model.update(dict(
      **model,
      norm_eps=1e-5,
      rope=dict(theta=arg.rope_theta),
      tie_embeddings=False,
      param_dtype="float32",
      dtype="bfloat16",
      remat="save_attention",   # keeps the attention kernels' out + lse: no attention re-run
      scan_layers=True,
      attention_backend="auto",
      layout="full" if arg.full else "longgen",
  ))
  if not arg.full:
    config.model.sparse = arg.sparse
    config.model.full_layers = FieldReference(None, field_type=tuple)  # with layout="indices"
    config.model.n_full = FieldReference(None, field_type=int)   # None: round(n_layers / 3)
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
  t.grad_accum = grad_accum
  t.steps = TOKEN_BUDGET // (t.batch_size * SEQ_LEN)   # 1192 at 32 rows
  t.loss_chunk = 4096
  t.lr = 2e-5
  t.schedule = "constant"
  t.warmup_steps = 20
  t.weight_decay = 0.1
  t.b1, t.b2, t.eps = 0.9, 0.95, 1e-8
  t.grad_clip = 1.0
  t.log_every = 1

  config.checkpoint.every = checkpoint_every
  config.checkpoint.keep = 3

  config.mesh.update(dict(data=1, **mesh, sequence_attention="ring", sequence_layout="zigzag"))
  return config
