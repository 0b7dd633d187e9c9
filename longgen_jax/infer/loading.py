"""Loads a model for inference: config, canonical parameters and tokenizer from ``--checkpoint``.

Accepted ``--checkpoint`` values:

* a trainer run: ``WORKDIR``, ``WORKDIR/checkpoints`` (newest step) or ``WORKDIR/checkpoints/<step>``
  (checksums verified; the model config and tokenizer come from the config saved in the step);
* a converted checkpoint of ``longgen_jax.hf.import_hf`` (a directory with
  ``longgen_checkpoint.json``), or a Hugging Face model directory (``config.json``);
* ``random:<preset>[:<seed>]`` (``tiny``, ``llama2_7b``, ...): random weights, for smoke tests and
  benchmarks (the vocabulary is widened to fit the tokenizer when the preset's is smaller).

Which kind a path is, and reading it, is ``longgen_jax.ckpt``'s (one reader for train, infer and
hf); it imports orbax and the HF modules only on their branch and needs neither grain nor
ml_collections, which a serving machine may not have.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from longgen_jax import ckpt
from longgen_jax.infer.errors import InferError
from longgen_jax.model.config import ModelConfig


@dataclasses.dataclass
class LoadedModel:
  """What inference needs: the config, canonical params, a tokenizer and whether to add BOS."""

  cfg: ModelConfig
  params: dict
  tokenizer: Any
  add_bos: bool
  source: str


def _tokenizer(spec: Any):
  from longgen_jax.data.tokenizers import get_tokenizer  # pylint: disable=import-outside-toplevel
  try:
    return get_tokenizer(spec)
  except ValueError as e:
    raise InferError(f"tokenizer {spec!r}: {e}") from None


def load_random(text: str, tokenizer: str | None = None) -> LoadedModel:
  """``random:<preset>[:<seed>]``."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from longgen_jax.model.llama import Llama  # pylint: disable=import-outside-toplevel
  from longgen_jax.model.params import to_canonical  # pylint: disable=import-outside-toplevel
  from longgen_jax.model.presets import PRESETS  # pylint: disable=import-outside-toplevel
  parts = text.split(":")
  name = parts[1] if len(parts) > 1 else ""
  if name not in PRESETS or len(parts) > 3:
    raise InferError(f"--checkpoint={text!r}: expected random:<preset>[:<seed>] with a preset in "
                     f"{sorted(PRESETS)}")
  try:
    seed = int(parts[2]) if len(parts) == 3 else 0
  except ValueError:
    raise InferError(f"--checkpoint={text!r}: the seed must be an int") from None
  tok = _tokenizer(tokenizer or "byte")
  cfg = PRESETS[name]()
  if tok.vocab_size > cfg.vocab_size:
    cfg = cfg.replace(vocab_size=-(-tok.vocab_size // 8) * 8)
  params = to_canonical(Llama(cfg, rngs=nnx.Rngs(seed)))
  return LoadedModel(cfg, params, tok, tok.bos_id is not None, f"random {name} (seed {seed})")


def load_trainer(path: str, tokenizer: str | None = None) -> LoadedModel:
  """A trainer workdir / checkpoints dir / step dir."""
  try:
    run = ckpt.restore_run(path, what="--checkpoint")
    cfg = run.cfg
  except ckpt.CheckpointReadError as e:
    raise InferError(str(e)) from None
  data = run.config.get("data") or {}
  tok = _tokenizer(tokenizer or data.get("tokenizer") or "byte")
  add_bos = bool(data.get("add_bos", True)) and tok.bos_id is not None
  return LoadedModel(cfg, run.params, tok, add_bos,
                     f"trainer checkpoint step {run.step} in {run.directory}")


def load_converted(path: str, tokenizer: str | None = None) -> LoadedModel:
  """A ``longgen_checkpoint.json`` directory or a Hugging Face model directory."""
  from longgen_jax.hf import import_hf  # pylint: disable=import-outside-toplevel
  try:
    params, cfg = ckpt.read_converted(path, what="--checkpoint")
  except ckpt.CheckpointReadError as e:
    raise InferError(str(e)) from None
  tok_dir = tokenizer or import_hf.tokenizer_dir(path)
  tok = _tokenizer(tok_dir or "byte")
  used = (f"tokenizer {tok_dir}" if tok_dir else "no tokenizer files there: using the byte "
          "tokenizer (ids = bytes + 3, BOS 1); pass --tokenizer=DIR if the model used another")
  return LoadedModel(cfg, params, tok, tok.bos_id is not None,
                     f"converted checkpoint {path}; {used}")


def load_model(checkpoint: str, *, tokenizer: str | None = None) -> LoadedModel:
  """Dispatches on the ``--checkpoint`` forms of the module docstring."""
  if not checkpoint:
    raise InferError("--checkpoint is required (a trainer workdir, a converted checkpoint or "
                     "random:<preset>)")
  if checkpoint.startswith("random:"):
    return load_random(checkpoint, tokenizer)
  try:
    kind = ckpt.kind_of(checkpoint, what="--checkpoint")
  except ckpt.CheckpointReadError as e:
    raise InferError(str(e)) from None
  path = os.path.abspath(os.path.expanduser(checkpoint))
  return (load_trainer if kind == ckpt.TRAINER else load_converted)(path, tokenizer)
