"""The FLOP model: matmul counts, exact attention pairs, MaxText agreement, MFU."""

from __future__ import annotations

import numpy as np
import pytest

from pallas_kernels.spec import AttentionSpec, dense_mask

from longgen_jax.model import flops_per_token, llama2_7b, matmul_params, mfu, tiny


def test_llama2_7b_full_attention_matches_maxtext_convention():
  cfg = llama2_7b()
  S = 4096
  assert matmul_params(cfg) == 6_607_077_376  # 32 * (4 * 4096^2 + 3 * 4096 * 11008) + 4096 * 32000
  f = flops_per_token(cfg, S)
  assert f.matmul == 6 * 6_607_077_376
  # MaxText: causal attention = 4 * S^2 / 2 * H * Dh forward per row, x3 training, per token.
  maxtext_attn = 3 * 4 * (S * S / 2) * 32 * 128 * cfg.n_layers / S
  assert f.attention == pytest.approx(maxtext_attn * (S + 1) / S, rel=1e-12)  # we count S(S+1)/2
  assert f.attention / 1e9 == pytest.approx(3.22, abs=0.01)
  fwd = flops_per_token(cfg, S, training=False)
  assert fwd.matmul * 3 == f.matmul and fwd.attention * 3 == pytest.approx(f.attention)


def test_sparse_layers_count_only_visible_pairs():
  S = 512
  for text in ("sink_window:4:64@16", "strided:2:4@16", "full@16"):
    spec = AttentionSpec.parse(text)
    cfg = tiny(layout="explicit", n_layers=1, layers=(text,), max_seq_len=S)
    pairs = int(dense_mask(spec, S).sum())
    want = 3 * 4 * pairs * cfg.n_heads * cfg.head_dim / S
    assert flops_per_token(cfg, S).attention == pytest.approx(want, rel=1e-12), text
  # MaxText's sliding-window count S*W - W^2/2 agrees up to the diagonal and the sinks.
  W = 64
  cfg = tiny(layout="explicit", n_layers=1, layers=(f"sink_window:0:{W}@16",), max_seq_len=S)
  approx = 3 * 4 * (S * W - W * W / 2) * cfg.n_heads * cfg.head_dim / S
  assert flops_per_token(cfg, S).attention == pytest.approx(approx, rel=0.02)


def test_longgen_saves_attention_flops_at_128k():
  full = llama2_7b(max_seq_len=131072)
  lg = llama2_7b(layout="longgen", sparse="sink_window:64:4096", max_seq_len=131072)
  a, b = flops_per_token(full, 131072), flops_per_token(lg, 131072)
  assert a.matmul == b.matmul
  S, W = 131072, 4096
  r = AttentionSpec.parse("sink_window:64:4096").visible_pairs(S) / (S * (S + 1) / 2)
  assert r == pytest.approx((S * W - W * W / 2 + 64 * (S - W)) / (S * S / 2), rel=1e-3)
  assert b.attention / a.attention == pytest.approx((11 + 21 * r) / 32, rel=1e-9)  # 11 F of 32
  assert b.attention / a.attention < 0.39
  assert a.attention / a.total == pytest.approx(0.72, abs=0.01)  # jax_anchors A8


def test_mfu():
  cfg = llama2_7b()
  f = flops_per_token(cfg, 4096).total
  assert mfu(11_400, cfg, 4096, 989e12) == pytest.approx(11_400 * f / 989e12)
  assert 0.45 < mfu(11_400, cfg, 4096, 989e12) < 0.53  # ~49% in the JAX-Toolbox table
  with pytest.raises(ValueError):
    mfu(1.0, cfg, 4096, 0.0)
  assert np.isfinite(flops_per_token(cfg, 1).total)


def test_packed_rows_count_same_document_pairs_only():
  from longgen_jax.model.flops import attention_pairs, flops_per_token  # noqa: PLC0415
  cfg = _cfg_for_packed()
  one = flops_per_token(cfg, 4096)
  four = flops_per_token(cfg, 4096, doc_lens=[1024] * 4)
  assert four.matmul == one.matmul
  assert attention_pairs(cfg, 4096, [4096]) == attention_pairs(cfg, 4096)
  full_pairs = sum(1 for s in cfg.layers if s.kind == "full")
  assert attention_pairs(cfg, 4096, [1024] * 4) < attention_pairs(cfg, 4096)
  assert full_pairs and four.attention < one.attention
  with pytest.raises(ValueError, match="doc_lens"):
    flops_per_token(cfg, 4096, doc_lens=[1000])


def _cfg_for_packed():
  return llama2_7b(n_layers=6)
