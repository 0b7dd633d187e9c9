"""The replication study's settings in one place: model sizes, stages and arms.

``configs/replication_pretrain.py`` and ``configs/replication_extend.py`` read these tables, and
the driver (``python -m longgen_jax.replication``) loops over ``ARMS`` (the default arms) or
the arms given with ``--arms`` (any of ``ALL_ARMS``, which adds the ``PLACEMENT_ARMS``). Sizes:

  small  the study: 9 layers, d 512, 8 query / 4 KV heads (head dim 64), SwiGLU 1408, byte
         vocabulary (264): 26.8M parameters. Pretraining at 1024 tokens, extension to 16384 (16x).
  tiny   the CPU smoke test of the same pipeline: 3 layers, d 64; 128 -> 2048 tokens (16x).

Token budgets: pretraining ``PRETRAIN_TOKENS`` (a few hundred M), each arm's extension
``EXTEND_TOKENS`` (about 10% of it), identical data order for every arm (same seed).
"""

from __future__ import annotations

SIZES = {
    "small": dict(model=dict(d_model=512, n_layers=9, n_heads=8, n_kv_heads=4, ffn_dim=1408),
                  pretrain=dict(seq_len=1024, batch_size=128, tokens=300_000_000, lr=2e-3,
                                warmup_steps=150, loss_chunk=512),
                  extend=dict(seq_len=16384, batch_size=8, tokens=30_000_000, lr=5e-4,
                              warmup_steps=20, loss_chunk=4096),
                  block=64),
    "tiny": dict(model=dict(d_model=64, n_layers=3, n_heads=2, n_kv_heads=1, ffn_dim=128),
                 pretrain=dict(seq_len=128, batch_size=4, tokens=128 * 4 * 3, lr=3e-3,
                               warmup_steps=1, loss_chunk=0),
                 extend=dict(seq_len=2048, batch_size=1, tokens=2048, lr=1e-3, warmup_steps=0,
                             loss_chunk=0),
                 block=16),
}

PRETRAIN_THETA = 1e4
EXTEND_THETA = 5e5      # 1e4 -> 5e5: the "ABF" rule of thumb for ~16x, as Llama-3 / LongGen do
SYNTHETIC_FRACTION = 0.15   # default share of training tokens that are synthetic retrieval
                            # documents (the driver's --synthetic_fraction; first pass 0.07,
                            # second 0.10, third 0.15: the first to teach retrieval)
SYNTHETIC_QUESTIONS = 4     # default questions per short synthetic document (--synthetic_questions;
                            # 1 in the first two passes, which taught none)

# The arms. Sparse patterns use the size's block (64 for `small`): "{B}" is replaced by it.
# hybrid_sw: sink 64 + window 512 -> 576-token KV per sparse layer; the 6 stacked sparse layers
# reach back 6 x 512 = 3K tokens, far below 16K. hybrid_strided: 5 local blocks (320 tokens) +
# every 64th block (256 tokens at 16K) = 576 at 16K, the same budget. all_sparse: every layer
# sink+window (9 x 512 = 4.6K reach). hybrid_window: the sink+window arm without sinks, whose
# export is a stock sliding-window Hugging Face model.
ARMS = {
    "full": dict(layout="full"),
    "hybrid_sw": dict(layout="longgen", sparse="sink_window:{S}:{W}@{B}"),
    "hybrid_strided": dict(layout="longgen", sparse="strided:5:64@{B}"),
    "all_sparse": dict(layout="longgen", sparse="sink_window:{S}:{W}@{B}", n_full=0),
    "hybrid_window": dict(layout="longgen", sparse="sink_window:0:{W}@{B}"),
}
# The placement ablation (LongGen's ablation of where the full block sits), not run by default.
# Any hybrid arm takes a placement as ``ARM@PLACE`` (``--arms=...,hybrid_window@top``): the arm's
# pattern and count of full layers (round(n_layers / 3): 3 of 9 at `small`, 1 of 3 at `tiny`),
# placed by ``full_layers``. The names below are the third pass's, kept as aliases of
# ``hybrid_sw@bottom`` and so on.
PLACEMENTS = ("bottom", "middle", "top", "interleaved")
# ``ARM@diagnosed``: the placement the driver's ``diagnose`` stage finds for the base (the lowest
# training-free perplexity of the four, ``replication/diagnose.py``), resolved by the driver once
# that stage has run; ``arm_layers`` and the configs take only the resolved names.
DIAGNOSED = "diagnosed"
HYBRID_ARMS = tuple(a for a, d in ARMS.items() if d["layout"] == "longgen" and "n_full" not in d)
PLACEMENT_ARMS = {"hybrid_sw_bottom": "hybrid_sw@bottom", "hybrid_sw_top": "hybrid_sw@top",
                  "hybrid_sw_interleaved": "hybrid_sw@interleaved"}
ALL_ARMS = (*ARMS, *PLACEMENT_ARMS)      # the names listed in errors; ``ARM@PLACE`` besides


def parse_arm(name: str) -> tuple[str, str | None]:
  """``(arm, placement)`` of an arm name: ``hybrid_window@top`` -> ``("hybrid_window", "top")``,
  an alias ``hybrid_sw_top`` -> ``("hybrid_sw", "top")``, ``full`` -> ``("full", None)``.
  ValueError (one line) for anything else."""
  base, sep, place = PLACEMENT_ARMS.get(name, name).partition("@")
  if base not in ARMS:
    raise ValueError(f"unknown arm {name!r}; arms: {', '.join(ALL_ARMS)}, or a hybrid arm "
                     f"({', '.join(HYBRID_ARMS)}) as ARM@PLACE, PLACE one of "
                     f"{', '.join(PLACEMENTS)}")
  if not sep:
    return base, None
  if base not in HYBRID_ARMS:
    raise ValueError(f"arm {name!r}: only a hybrid arm ({', '.join(HYBRID_ARMS)}) takes a "
                     "placement")
  if place not in PLACEMENTS and place != DIAGNOSED:
    raise ValueError(f"arm {name!r}: unknown placement {place!r}; placements: "
                     f"{', '.join(PLACEMENTS)}, or {DIAGNOSED} (the diagnose stage's choice)")
  return base, place


def is_arm(name: str) -> bool:
  try:
    parse_arm(name)
  except ValueError:
    return False
  return True


# Sink / window per size (tiny: 16 + 64 at 2048 tokens keeps the same "cannot cover" property).
SINK_WINDOW = {"small": (64, 512), "tiny": (16, 64)}

# Baselines evaluated without extension training.
KV_DROP_ARM = "full"             # the full arm served with the hybrid_sw arm's sink+window cache


# The driver's ``diagnose`` stage (``replication/diagnose.py`` on the base): probe length (the
# pretraining length; tiny: 384, its shortest probe prompt plus the 64 answer tokens), the
# placement check's sparse pattern (a window well below the length), retrieval samples and
# held-out documents.
DIAGNOSE = {"small": dict(length=1024, sparse="sink_window:64:128@64", samples=32, docs=12),
            "tiny": dict(length=384, sparse="sink_window:16:32@16", samples=2, docs=2)}


def best_placement(ppl: dict) -> str:
  """The placement with the lowest perplexity in ``ppl`` (placement -> ppl); LongGen's
  ``middle`` on a tie."""
  return min(PLACEMENTS, key=lambda p: (ppl[p], p != "middle"))


def full_layers(n_layers: int, where: str) -> tuple[int, ...]:
  """The ``round(n_layers / 3)`` full layers placed at the ``bottom``, ``middle`` (LongGen's
  centred block), ``top``, or ``interleaved`` (spread evenly: 1, 4, 7 of 9; with a single full
  layer that is the middle one)."""
  k = int(round(n_layers / 3))
  mid = (n_layers - k) // 2
  places = {"bottom": range(k), "middle": range(mid, mid + k), "top": range(n_layers - k, n_layers),
            "interleaved": sorted({int(round((i + 0.5) * n_layers / k - 0.5)) for i in range(k)})}
  if where not in places:
    raise ValueError(f"unknown placement {where!r}; placements: {', '.join(PLACEMENTS)}")
  return tuple(places[where])


def arm_layers(size: str, arm: str) -> dict:
  """The ``config.model`` layout fields of an arm (``parse_arm``'s names) at a size."""
  base, place = parse_arm(arm)
  if place == DIAGNOSED:
    raise ValueError(f"arm {arm!r}: the driver resolves @{DIAGNOSED} after its diagnose stage; "
                     f"a config takes a placement ({', '.join(PLACEMENTS)})")
  sink, window = SINK_WINDOW[size]
  out = dict(ARMS[base])
  if "sparse" in out:
    out["sparse"] = out["sparse"].format(S=sink, W=window, B=SIZES[size]["block"])
  if place is not None:
    out = dict(layout="indices", sparse=out["sparse"],
               full_layers=full_layers(SIZES[size]["model"]["n_layers"], place))
  return out


def kv_drop_spec(size: str) -> str:
  sink, window = SINK_WINDOW[size]
  return f"sink_window:{sink}:{window}@{SIZES[size]['block']}"


def steps(size: str, stage: str) -> int:
  s = SIZES[size][stage]
  return max(1, s["tokens"] // (s["seq_len"] * s["batch_size"]))
