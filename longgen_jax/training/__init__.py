"""Trainer helpers for ``longgen_jax/train.py`` (docs/training.md).

  config_utils   base_config (every field, its default), parse_arg, validate_config
  optim          warmup + cosine / constant schedules, AdamW with global-norm clipping
  loss           chunked cross-entropy (never the full [B, T, V] logits)
  checkpoint     Checkpointer: orbax layout, checksums, verified restore, fallback past bad steps
  metrics        metrics.jsonl, TensorBoard, peak FLOP/s table, MFU convention

Import the submodules; this package imports nothing (configs load ``config_utils`` quickly).
"""
