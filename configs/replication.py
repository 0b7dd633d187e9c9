r"""The replication study (docs/replication.md): pretrain a 27M Llama at 1K, extend it 16x per arm.

Commands (the driver runs them all, in order, resuming where it stopped)::

  python -m longgen_jax.replication --workdir=runs/replication            # every stage
  python -m longgen_jax.replication --workdir=runs/replication --pretrain_steps=2400 \
      --arms=full,hybrid_sw@diagnosed,hybrid_window@diagnosed,hybrid_strided@diagnosed,all_sparse
                                                      # the fourth pass: ~25 min on one H200
  python -m longgen_jax.train --config=configs/replication.py:stage=pretrain,data=DATA \
      --workdir=runs/replication/pretrain
  python -m longgen_jax.train --config=configs/replication.py:arm=hybrid_sw,data=DATA \
      --workdir=runs/replication/extend_hybrid_sw --config.init_from=runs/replication/base_hf

``DATA`` is the prepared data directory the driver writes (``runs/replication/data``): grain
ArrayRecord shards ``real/`` (code and docs of the Python installation), ``synth_short/`` and
``synth_long/`` (synthetic retrieval documents) and ``heldout/``.

Arguments (comma separated): ``stage=pretrain|extend`` (default extend), ``arm=`` one of
``full``, ``hybrid_sw`` (default), ``hybrid_strided``, ``all_sparse``, ``hybrid_window`` (the
default arms), any hybrid arm placed as ``ARM@PLACE`` for the placement ablation (e.g.
``hybrid_window@top``: the arm's pattern and count of full layers, 3 of 9, at the ``bottom``
0-2, ``middle`` 3-5, ``top`` 6-8 or ``interleaved`` 1,4,7), or the aliases ``hybrid_sw_bottom``,
``hybrid_sw_top``, ``hybrid_sw_interleaved`` (the driver's ``ARM@diagnosed`` reaches a config
resolved, e.g. ``hybrid_sw@middle``); ``full`` is short for ``arm=full``;
``size=small|tiny`` (tiny: the CPU smoke test); ``data=DIR``; ``steps=N`` (0 = the token
budget); ``synth=F`` the synthetic share of training tokens (default
``recipe.SYNTHETIC_FRACTION``, 0.15); ``seed=N`` (default 0) the initialisation and data-order
seed (every arm of a study uses the pretraining's).

Model (``small``): 9 layers, d 512, 8 query / 4 KV heads, SwiGLU 1408, byte vocabulary, 26.8M
parameters, bf16 compute. Pretraining: full attention, 1024 tokens, RoPE theta 1e4, 128 rows per
step, 300M tokens (2288 steps), LR 2e-3 cosine. Extension (every arm the same): 16384 tokens,
theta 5e5, 8 rows per step, 30M tokens (228 steps), LR 5e-4 cosine, initialised from the
pretrained base. Data: 85% real text, 15% synthetic retrieval documents (by tokens; ``synth=``),
first-fit packed, one segment per document. Arms and patterns:
``longgen_jax/replication/recipe.py``.

Kernels (``small``): pretraining and the sparse arms run ``attention_backend=pallas_gpu``; the
full arm's extension runs ``auto``. At 1K tokens with segment ids, ``auto`` picks cuDNN's packed
layout, and a whole training step measured 1.4-1.6x slower with it than with ``pallas_gpu``
(docs/replication.md, "Pretraining throughput"; measured before the embedding-gradient fix).

Hardware: one H200. Measured in the fourth pass: the data stage 109 s; pretraining 293 s
(2,400 steps at ~1.16M tokens/s); each arm's extension 39-77 s at the budget's 228 steps; each
model's eval 36-72 s. ``size=tiny`` runs on 2 CPU cores in seconds.

Expected result: pretraining loss (nats per byte) falls below ~1.0 (fourth pass: 0.69, with the
driver's default synthetic data: 15% of tokens, up to 4 questions per document). At the start of
extension, the loss at 16K is higher than at 1K and recovers within ~100 steps for every arm.
In the fourth pass, after extension, full attention answers NIAH at 59% / 16% at 1K / 8K. The
hybrids with their full block at the base's diagnosed placement answer at 44-49% / 14-16%.
All-sparse answers at 14% / 5%. The measured results are in docs/replication.md.
"""

import json
import os

from longgen_jax.data.config import DATA_DEFAULTS
from longgen_jax.replication import recipe
from longgen_jax.training import config_utils


def _mean_tokens(path):
  """Mean tokens per document of a prepared directory (None when it is not prepared yet)."""
  try:
    with open(os.path.join(path, "index.json"), encoding="utf-8") as f:
      index = json.load(f)
  except OSError:
    return None
  return index["num_tokens"] / max(1, index["num_documents"])


def _sources(data, synth, f):
  """Real text plus synthetic documents, weighted so that the synthetic share of TOKENS is
  ``f`` (grain mixes by documents drawn)."""
  real, syn = os.path.join(data, "real"), os.path.join(data, synth)
  m_real, m_syn = _mean_tokens(real), _mean_tokens(syn)
  w_syn = f * m_real / ((1 - f) * m_syn) if m_real and m_syn else f
  return {"real": dict(type="arrayrecord", path=real, weight=1.0),
          "retrieval": dict(type="arrayrecord", path=syn, weight=w_syn)}


def get_config(arg=None):
  """Config; ``arg``: ``stage=``, ``arm=``, ``full``, ``size=``, ``data=``, ``steps=``,
  ``synth=``, ``seed=``."""
  arg = config_utils.parse_arg(arg, stage="extend", arm="hybrid_sw", full=False, size="small",
                               data="runs/replication/data", steps=0,
                               synth=recipe.SYNTHETIC_FRACTION, seed=0)
  if arg.stage not in ("pretrain", "extend"):
    raise config_utils.ConfigError(f"stage must be pretrain or extend, got {arg.stage!r}")
  if arg.size not in recipe.SIZES:
    raise config_utils.ConfigError(f"size must be one of {sorted(recipe.SIZES)}, got {arg.size!r}")
  if not 0 < arg.synth < 1:
    raise config_utils.ConfigError(f"synth must lie in (0, 1), got {arg.synth}")
  size = recipe.SIZES[arg.size]
  stage = size[arg.stage]
  arm = "full" if (arg.full or arg.stage == "pretrain") else arg.arm
  try:
    recipe.arm_layers(arg.size, arm)      # parse_arm's errors, and @diagnosed unresolved
  except ValueError as e:
    raise config_utils.ConfigError(str(e)) from None

  config = config_utils.base_config()
  if arg.seed < 0:
    raise config_utils.ConfigError(f"seed must be >= 0, got {arg.seed}")
  config.seed = arg.seed
  config.model.update(dict(
      vocab_size=264, **size["model"], norm_eps=1e-5,
      rope=dict(theta=recipe.PRETRAIN_THETA if arg.stage == "pretrain" else recipe.EXTEND_THETA),
      tie_embeddings=False, param_dtype="float32",
      dtype="float32" if arg.size == "tiny" else "bfloat16",
      remat="none", scan_layers=True,
      attention_backend=("pallas_gpu" if arg.size == "small"
                         and (arm != "full" or arg.stage == "pretrain") else "auto"),
      full=f"full@{size['block']}", **recipe.arm_layers(arg.size, arm)))
  config_utils.link_seq_len(config)

  data = os.path.abspath(arg.data)
  config.data.update(dict(DATA_DEFAULTS, sources=_sources(
      data, "synth_short" if arg.stage == "pretrain" else "synth_long", arg.synth)))
  config.data.tokenizer = dict(type="byte", path="")

  t = config.train
  t.seq_len = stage["seq_len"]
  t.batch_size = stage["batch_size"]
  t.steps = arg.steps or recipe.steps(arg.size, arg.stage)
  t.loss_chunk = stage["loss_chunk"]
  t.lr = stage["lr"]
  t.schedule = "cosine"
  t.warmup_steps = stage["warmup_steps"]
  t.min_lr_ratio = 0.1
  t.weight_decay = 0.1
  t.grad_clip = 1.0
  t.log_every = 50 if arg.size == "small" else 1

  config.checkpoint.every = 250 if arg.stage == "pretrain" else 100
  config.checkpoint.keep = 2
  return config
