"""Tokenizers: the embedded byte tokenizer and local Hugging Face tokenizers.

Both kinds share one small interface (the contract of docs/architecture.md §5):

  encode(text: str) -> list[int]     # no special tokens added
  decode(ids) -> str                 # special tokens dropped
  vocab_size, bos_id, eos_id, pad_id # ints

BOS/EOS are added by the pipeline (`add_bos` / `add_eos`), never by `encode`,
so pre-tokenized ArrayRecord shards stay independent of that choice.

`tokenizer_info(tok)` returns a JSON-able description with a fingerprint (a hash
of the vocabulary size, special ids and the encoding of a probe string); the
`prepare` command stores it and the ArrayRecord source checks it, so shards
tokenized with one tokenizer are never silently trained with another.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from longgen_jax.data.errors import DataError, one_line

_PROBE = "LongGen probe: The quick brown fox, 1234567890 — naïve café ✓\n\tend."


class ByteTokenizer:
  """UTF-8 bytes offset by 3; ids 0, 1, 2 are pad, bos, eos (vocab 259).

  Needs no files, so it is the default for tests and the tiny CPU demo.
  """

  OFFSET = 3
  pad_id = 0
  bos_id = 1
  eos_id = 2
  vocab_size = 256 + OFFSET
  kind = "byte"
  path = None

  def encode_array(self, text: str) -> np.ndarray:
    """Encodes `text` to an int32 array (the pipeline's fast path)."""
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return raw.astype(np.int32) + self.OFFSET

  def encode(self, text: str) -> list[int]:
    """Encodes `text` to token ids, without BOS/EOS."""
    return self.encode_array(text).tolist()

  def decode(self, ids: Iterable[int]) -> str:
    """Decodes ids to text; special ids are dropped, bad UTF-8 is replaced."""
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
    arr = arr[(arr >= self.OFFSET) & (arr < self.vocab_size)] - self.OFFSET
    return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer(vocab_size=259)"


def _special_content(value: Any) -> str | None:
  """A special token entry of tokenizer_config.json: str or {"content": str}."""
  if isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]
  return None


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise DataError(f"tokenizer file {path} is not valid JSON: {one_line(e)}") from None


class HFTokenizer:
  """A Hugging Face tokenizer loaded from a local directory (no download).

  `path` is a directory holding `tokenizer.json` (loaded with the fast
  `tokenizers` library; special tokens are read from `tokenizer_config.json` /
  `special_tokens_map.json`), or a directory that only `transformers` can read
  (e.g. a SentencePiece `tokenizer.model`), or a `tokenizer.json` file itself.

  `pad_id` is the tokenizer's pad token, else its EOS, else 0: padded positions
  have segment id 0 and loss mask 0, so the value only needs to be a valid id.
  """

  kind = "hf"

  def __init__(self, path: str):
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
      raise DataError(f"tokenizer path not found: {path}")
    self.path = path
    tok_dir = path if os.path.isdir(path) else os.path.dirname(path)
    tok_json = path if os.path.isfile(path) else os.path.join(path, "tokenizer.json")
    if os.path.isfile(tok_json):
      self._init_fast(tok_json, tok_dir)
    else:
      self._init_transformers(path)

  def _init_fast(self, tok_json: str, tok_dir: str) -> None:
    try:
      import tokenizers  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise DataError("HFTokenizer needs the `tokenizers` package: pip install longgen_jax[hf]") from None
    try:
      self._fast = tokenizers.Tokenizer.from_file(tok_json)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"cannot load tokenizer {tok_json}: {one_line(e)}") from None
    self._hf = None
    config = _read_json(os.path.join(tok_dir, "tokenizer_config.json"))
    config_map = _read_json(os.path.join(tok_dir, "special_tokens_map.json"))

    def special_id(name: str) -> int | None:
      token = _special_content(config.get(name)) or _special_content(config_map.get(name))
      return None if token is None else self._fast.token_to_id(token)

    self.vocab_size = int(self._fast.get_vocab_size(with_added_tokens=True))
    self.bos_id = special_id("bos_token")
    self.eos_id = special_id("eos_token")
    pad = special_id("pad_token")
    self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)

  def _init_transformers(self, path: str) -> None:
    try:
      from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise DataError(f"{path} has no tokenizer.json and `transformers` is not installed: "
                      "pip install longgen_jax[hf]") from None
    try:
      self._hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"cannot load a Hugging Face tokenizer from {path}: {one_line(e)}") from None
    self._fast = None
    self.vocab_size = int(len(self._hf))
    self.bos_id = self._hf.bos_token_id
    self.eos_id = self._hf.eos_token_id
    pad = self._hf.pad_token_id
    self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)

  def encode(self, text: str) -> list[int]:
    """Encodes `text` to token ids, without special tokens."""
    if self._fast is not None:
      return list(self._fast.encode(text, add_special_tokens=False).ids)
    return list(self._hf.encode(text, add_special_tokens=False))

  def decode(self, ids: Iterable[int]) -> str:
    """Decodes ids to text, dropping special tokens."""
    ids = [int(i) for i in ids]
    if self._fast is not None:
      return self._fast.decode(ids, skip_special_tokens=True)
    return self._hf.decode(ids, skip_special_tokens=True)

  def __repr__(self) -> str:
    return f"HFTokenizer(path={self.path!r}, vocab_size={self.vocab_size})"


def tokenizer_info(tok) -> dict:
  """A JSON-able description of `tok`, with a fingerprint of its behaviour."""
  probe = [int(i) for i in tok.encode(_PROBE)]
  info = {
      "type": getattr(tok, "kind", type(tok).__name__),
      "path": getattr(tok, "path", None),
      "vocab_size": int(tok.vocab_size),
      "bos_id": tok.bos_id,
      "eos_id": tok.eos_id,
      "pad_id": tok.pad_id,
  }
  payload = json.dumps({k: info[k] for k in ("vocab_size", "bos_id", "eos_id", "pad_id")} | {"probe": probe})
  info["fingerprint"] = hashlib.sha256(payload.encode()).hexdigest()[:16]
  return info


def get_tokenizer(cfg=None):
  """Builds a tokenizer from `{type: "byte"|"hf", path: ...}` (dict or ConfigDict).

  Also accepts None or "byte" (the byte tokenizer) and a plain path string
  (a Hugging Face tokenizer directory).
  """
  if cfg is None or cfg == "byte":
    return ByteTokenizer()
  if isinstance(cfg, (str, os.PathLike)):
    return HFTokenizer(str(cfg))
  cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  unknown = sorted(set(cfg) - {"type", "path"})
  if unknown:
    raise DataError(f"tokenizer config: unknown key(s) {unknown} (allowed: type, path)")
  kind = cfg.get("type", "byte")
  if kind == "byte":
    return ByteTokenizer()
  if kind == "hf":
    if not cfg.get("path"):
      raise DataError("tokenizer config: type 'hf' needs a `path` (a local tokenizer directory)")
    return HFTokenizer(cfg["path"])
  raise DataError(f"tokenizer config: unknown type {kind!r} (expected 'byte' or 'hf')")


def encode_to_array(tok, text: str) -> np.ndarray:
  """`tok.encode(text)` as an int32 array (uses `encode_array` when present)."""
  if hasattr(tok, "encode_array"):
    return tok.encode_array(text)
  return np.asarray(tok.encode(text), dtype=np.int32)
