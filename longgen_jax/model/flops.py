"""An explicit FLOP model (per token) and MFU, MaxText-compatible.

Convention (a multiply-add is 2 FLOPs):

* matmul FLOPs: ``2 * N_matmul`` per token forward, ``6 * N_matmul`` training (forward + 2x for
  the backward), where ``N_matmul`` counts the weights that take part in a matmul: per layer
  ``wq, wk, wv, wo, w_gate, w_up, w_down`` and the unembedding ``D * V`` (counted also when tied;
  the embedding lookup and the norms are not matmuls).
* attention FLOPs: only the (query, key) pairs a layer really computes,
  ``pairs = spec.visible_pairs(seq_len)`` of one causal row (diagonal included). Each pair costs
  ``2 * Dh`` for q.k and ``2 * Dh`` for p.v in every query head: forward
  ``4 * pairs * Hq * Dh`` per row, divided by ``seq_len`` per token; training is 3x forward.
  Softmax / RoPE / norm element-wise work is not counted.

This is MaxText's convention (PR #1988: causal attention at half of dense, 3x for training; PRs
#2009/#2030: windowed layers count only the window), except that we count exact pairs: causal is
``S(S+1)/2`` instead of ``S^2/2`` and a sink+window layer counts its sink pairs too. By default
packed rows are counted as one causal row of ``seq_len`` (the segment mask is not subtracted),
like MaxText; ``doc_lens`` counts same-document pairs only (the trainer's ``mfu``; ``mfu_row`` is
the default count; training/metrics.py).

MFU = ``tokens_per_s * flops_per_token / peak_flops`` with both throughput and peak for the same
set of devices (e.g. per device). Say which peak you use (H100 SXM dense bf16: 989e12).
"""

from __future__ import annotations

import dataclasses

from longgen_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """FLOPs per token, split into weight matmuls and attention (q.k and p.v)."""

  matmul: float
  attention: float

  @property
  def total(self) -> float:
    return self.matmul + self.attention


def matmul_params(cfg: ModelConfig) -> int:
  """Weights that take part in matmuls (see module docstring)."""
  D, H, K, Dh, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim
  per_layer = 2 * D * H * Dh + 2 * D * K * Dh + 3 * D * F
  return cfg.n_layers * per_layer + D * cfg.vocab_size


def attention_pairs(cfg: ModelConfig, seq_len: int, doc_lens=None) -> int:
  """Sum over layers of the visible (q, k) pairs of one causal row of ``seq_len`` tokens; with
  ``doc_lens`` (a row packed with documents, summing to ``seq_len``) only same-document pairs."""
  if doc_lens is not None and sum(int(n) for n in doc_lens) != seq_len:
    raise ValueError(f"doc_lens sum to {sum(doc_lens)}, not seq_len {seq_len}")
  cache: dict = {}
  total = 0
  for spec in cfg.layers:
    if spec not in cache:
      cache[spec] = (spec.visible_pairs(seq_len) if doc_lens is None
                     else spec.visible_pairs_packed(doc_lens))
    total += cache[spec]
  return total


def flops_per_token(cfg: ModelConfig, seq_len: int, *, training: bool = True,
                    doc_lens=None) -> FlopCount:
  """Model FLOPs per token at ``seq_len`` (training: fwd + bwd; else forward only). ``doc_lens``:
  the row is packed with these documents and attention counts same-document pairs only (what a
  kernel that skips cross-document work really has to do)."""
  if seq_len <= 0:
    raise ValueError(f"seq_len must be > 0, got {seq_len}")
  mult = 3 if training else 1
  matmul = 2.0 * mult * matmul_params(cfg)
  attn_fwd = 4.0 * attention_pairs(cfg, seq_len, doc_lens) * cfg.n_heads * cfg.head_dim / seq_len
  return FlopCount(matmul=matmul, attention=mult * attn_fwd)


def mfu(tokens_per_s: float, cfg: ModelConfig, seq_len: int, peak_flops: float, *,
        training: bool = True) -> float:
  """Model FLOPs utilisation in [0, 1] (``tokens_per_s`` and ``peak_flops`` of the same
  devices)."""
  if peak_flops <= 0:
    raise ValueError(f"peak_flops must be > 0, got {peak_flops}")
  return tokens_per_s * flops_per_token(cfg, seq_len, training=training).total / peak_flops
