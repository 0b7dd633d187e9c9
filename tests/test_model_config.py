"""ModelConfig validation and serialisation, layouts, scan grouping and presets (no compiles)."""

from __future__ import annotations

import pytest

from pallas_kernels.spec import FULL, AttentionSpec

from longgen_jax.model import (ConfigError, ModelConfig, RopeConfig, describe_layout,
                               llama2_70b, llama2_7b, llama3_8b, longgen_layout, param_count,
                               plan_segments, tiny)
from longgen_jax.model.scan_plan import describe_plan, layer_locations

SW = AttentionSpec.parse("sink_window:64:4096")
S16 = AttentionSpec.parse("sink_window:4:32@16")
F16 = AttentionSpec.parse("full@16")


def small(**kw):
  base = dict(vocab_size=64, d_model=32, n_layers=6, n_heads=4, n_kv_heads=2, ffn_dim=64,
              max_seq_len=128)
  return ModelConfig.from_dict({**base, **kw})


# ------------------------------------------------------------------ validation: one clear line
@pytest.mark.parametrize("kw, match", [
    (dict(layout="explicit", layers=("sink_window:4:40@16",) * 6),
     r"layers\[0\]: .*window 40 is not a multiple of the block 16"),
    (dict(full_layers=(0, 6), sparse="sink_window:4:32@16"),
     "full_layers index 6 is out of range for n_layers=6"),
    (dict(max_seq_len=100, layout="longgen", sparse="sink_window:4:32@16"),
     r"max_seq_len 100 is not a multiple of layers\[0\] block 16"),
    (dict(n_heads=4, n_kv_heads=3), "n_heads 4 is not divisible by n_kv_heads 3"),
    (dict(n_heads=5), "d_model 32 is not divisible by n_heads 5"),
    (dict(rope={"scaling": "ntk"}), r"rope.scaling 'ntk' is not one of"),
    (dict(rope={"scaling": "yarn", "factor": 0.5}), "rope.factor must be >= 1"),
    (dict(rope={"scaling": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                "high_freq_factor": 1.0}), "high_freq_factor > low_freq_factor"),
    (dict(rope={"thetta": 1.0}), r"unknown rope field\(s\) \['thetta'\]"),
    (dict(dtype="fp8"), "dtype 'fp8' is not one of"),
    (dict(remat="sometimes"), "remat 'sometimes' is not one of"),
    (dict(remat_full="x"), "remat_full 'x' is not one of"),
    (dict(layout="explicit", layers=("full",) * 5), "layers has 5 specs but n_layers is 6"),
    (dict(layout="longgen"), "layout 'longgen' needs a sparse spec"),
    (dict(layout="full", sparse="strided:2:3"), "sparse is not used by layout 'full'"),
    (dict(layout="longgen", sparse="sink_window:4:32@16", n_full=7), r"n_full 7 is outside"),
    (dict(layout="zigzag"), "layout 'zigzag' is not one of"),
    (dict(layout="longgen", sparse="window:3"), "sparse: cannot parse attention spec"),
    (dict(head_dim=7, d_model=28), "head_dim must be even for RoPE"),
    (dict(ffn_dim=0), "ffn_dim must be a positive int"),
    (dict(n_layer=3), r"unknown model config field\(s\) \['n_layer'\]"),
    (dict(full_layers=(1, 1), sparse="sink_window:4:32@16"), "duplicate indices"),
])
def test_bad_config_raises_one_clear_line(kw, match):
  with pytest.raises(ConfigError, match=match) as e:
    small(**kw)
  assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_direct_construction_coerces_and_defaults():
  cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=4, ffn_dim=64,
                    max_seq_len=256, layers=("full", "strided:2:4", {"kind": "full"}),
                    rope={"theta": 5e5})
  assert cfg.head_dim == 8 and cfg.rope.theta == 5e5
  assert cfg.layers[1] == AttentionSpec.strided(2, 4) and cfg.layers[2] == FULL
  assert ModelConfig(vocab_size=8, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4,
                     ffn_dim=8, max_seq_len=128).layers == (FULL, FULL)
  hash(cfg)  # usable as a static argument


def test_remat_per_kind_override():
  cfg = small(layout="longgen", sparse="sink_window:4:32@16", full="full@16", remat="none",
              remat_full="full")
  assert cfg.remat_for(F16) == "full" and cfg.remat_for(S16) == "none"
  assert small(remat="minimal").remat_for(FULL) == "minimal"


# ------------------------------------------------------------------ layout forms and round trip
@pytest.mark.parametrize("kw", [
    dict(layout="longgen", sparse="sink_window:4:32@16", full="full@16"),
    dict(layout="longgen", sparse="strided:2:4@16", n_full=1),
    dict(layout="full"),
    dict(layout="explicit", layers=("full", "strided:2:4@16", "full", "sink_window:4:32@16",
                                    "full", "full")),
    dict(full_layers=(0, 5), sparse="sink_window:4:32@16"),
    dict(layout="indices", full_layers=(3,), sparse="sink_window:4:32@16"),
    dict(rope={"scaling": "yarn", "factor": 4.0, "original_max_position": 32}, tie_embeddings=True,
         remat="dots_saveable", remat_sparse="none", dtype="float32", scan_layers=False),
])
def test_dict_round_trip(kw):
  cfg = small(**kw)
  d = cfg.to_dict()
  assert ModelConfig.from_dict(d) == cfg
  assert all(isinstance(v, (int, float, str, bool, tuple, dict, type(None))) for v in d.values())


def test_layout_forms():
  lg = small(layout="longgen", sparse="sink_window:4:32@16", full="full@16")
  assert describe_layout(lg.layers) == "S×2 F×2 S×2"
  assert lg.to_dict()["layout"] == "longgen" and "n_full" not in lg.to_dict()
  idx = small(full_layers=(0, 5), sparse="sink_window:4:32@16")
  assert [s.is_full for s in idx.layers] == [True, False, False, False, False, True]
  assert idx.to_dict()["full_layers"] == (0, 5)
  # replace() recomputes a longgen layout for a new depth, and accepts layout keys.
  assert describe_layout(lg.replace(n_layers=32).layers) == "S×10 F×11 S×11"
  assert describe_layout(lg.replace(layout="full").layers) == "F×6"


def test_ml_collections_config_dict():
  ml_collections = pytest.importorskip("ml_collections")
  cd = ml_collections.ConfigDict(dict(
      vocab_size=64, d_model=32, n_layers=6, n_heads=4, n_kv_heads=2, ffn_dim=64,
      max_seq_len=128, layout="longgen", sparse="sink_window:4:32@16", full="full@16",
      rope=dict(theta=10000.0)))
  assert ModelConfig.from_dict(cd) == small(layout="longgen", sparse="sink_window:4:32@16",
                                            full="full@16")


@pytest.mark.parametrize("n", list(range(1, 41)) + [48, 80, 81, 100])
def test_longgen_layout_is_one_centred_middle_block(n):
  layers = longgen_layout(n, SW)
  full = [i for i, s in enumerate(layers) if s.is_full]
  assert len(full) == round(n / 3)
  if full:
    assert full == list(range(full[0], full[-1] + 1))  # contiguous
    bottom, top = full[0], n - 1 - full[-1]
    assert bottom == (n - len(full)) // 2 and top - bottom in (0, 1)  # top gets the odd one
  assert all(s == SW for s in layers if not s.is_full)


def test_longgen_known_depths_and_n_full():
  assert describe_layout(longgen_layout(32, SW)) == "S×10 F×11 S×11"
  assert describe_layout(longgen_layout(80, SW)) == "S×26 F×27 S×27"
  assert describe_layout(longgen_layout(32, SW, n_full=8)) == "S×12 F×8 S×12"
  two = (SW, AttentionSpec.strided(16, 8), FULL, FULL)
  assert describe_layout(two) == "S1×1 S2×1 F×2"


# ------------------------------------------------------------------ scan grouping
def test_plan_segments():
  def plan(layers):
    return [(s.start, len(s.specs), s.repeats) for s in plan_segments(layers)]

  assert plan(longgen_layout(32, SW)) == [(0, 1, 10), (10, 1, 11), (21, 1, 11)]
  assert plan((FULL,) * 80) == [(0, 1, 80)]
  assert plan((SW, FULL) * 16) == [(0, 2, 16)]
  gemma = (SW,) * 5 + (FULL,)
  assert plan(gemma * 4 + (SW, SW)) == [(0, 6, 4), (24, 1, 2)]
  assert plan((SW, SW, FULL) * 2 + (SW,)) == [(0, 3, 2), (6, 1, 1)]
  assert plan((FULL,) * 9 + (SW,)) == [(0, 1, 9), (9, 1, 1)]
  assert [s.repeats for s in plan_segments(longgen_layout(6, SW), scan=False)] == [1] * 6
  p = plan_segments(gemma * 4 + (SW, SW))
  assert describe_plan(p) == "scan[S S S S S F]×4 | scan[S]×2"
  locs = layer_locations(p)
  assert len(locs) == 26 and locs[7] == (0, 1, 1) and locs[25] == (1, 1, 0)


# ------------------------------------------------------------------ presets
def test_presets():
  c7 = llama2_7b()
  assert (c7.d_model, c7.n_layers, c7.n_heads, c7.ffn_dim, c7.vocab_size) == (
      4096, 32, 32, 11008, 32000)
  assert param_count(c7) == 6_738_415_616
  c70 = llama2_70b()
  assert (c70.d_model, c70.n_layers, c70.n_heads, c70.n_kv_heads, c70.ffn_dim) == (
      8192, 80, 64, 8, 28672)
  assert param_count(c70) == 68_976_648_192
  assert param_count(llama3_8b()) == 8_030_261_248
  lg = llama2_7b(layout="longgen", sparse="sink_window:64:4096", max_seq_len=131072)
  assert describe_layout(lg.layers) == "S×10 F×11 S×11" and lg.max_seq_len == 131072
  t = tiny()
  assert describe_layout(t.layers) == "S×2 F×2 S×2"
  assert describe_layout(tiny(layout="full").layers) == "F×6"
  assert RopeConfig(scaling="dynamic").scaling == "dynamic_ntk"  # HF alias
