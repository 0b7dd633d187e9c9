"""The data config schema, its defaults and validation.

A data config is an `ml_collections.ConfigDict` or a plain dict:

  sources:       list of source dicts (below), or a mapping name -> source
                 dict (overridable per field from the command line); mixed by
                 `weight`
  eval_sources:  list of source dicts for eval ([] -> hold out `eval_fraction`)
  eval_fraction: fraction of each train source's documents held out for eval
                 (hashed by document index); 0 with eval_sources, or no eval
  tokenizer:     {type: "byte"|"hf", path: None|dir}
  packing:       "first_fit" | "concat_then_split"
  packing_bins:  first-fit bins per packing round (None -> the batch size)
  mask_documents: True -> one segment per document (attention and targets stay
                 inside it); False -> one segment per row (Fu et al.)
  add_bos, add_eos: wrap each document in BOS ... EOS before packing
  shuffle, shuffle_seed: seeded global shuffle per source (seed None -> the
                 `seed` argument of build_train_iterator)
  num_epochs:    None = repeat forever
  upsample_seed: seed of the per-document keep hash (fixes the kept sub-corpus)
  worker_count:  grain worker processes (0 = in-process, deterministic)
  read_threads, read_prefetch: grain ReadOptions per source

A source dict:

  type:      "text" | "jsonl" | "parquet" | "arrayrecord" | "tfds"
  path:      file, glob, comma-separated globs or list (arrayrecord: the
             `prepare` output directory or a glob; tfds: the dataset name)
  text_key:  JSON key / Parquet column / TFDS feature ("text")
  separator: text only; None = one document per file
  weight:    mixture weight (> 0), in documents drawn after upsampling
  upsample:  None or {threshold: int tokens, keep_prob: float in (0, 1]}
  name:      hash salt for upsampling / eval split (default "source{i}")
  split, data_dir: tfds only
"""

from __future__ import annotations

import copy
import os
from typing import Any

from longgen_jax.data.errors import DataError
from longgen_jax.data.sources import SOURCE_TYPES

CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
CORPUS_SEPARATOR = "\n<|endoftext|>\n"
# Fu et al. 2024 per-source length upsampling (docs/data.md "Length upsampling").
FU_ET_AL_UPSAMPLE = {"threshold": 4096, "keep_prob": 0.1}

SOURCE_DEFAULTS: dict[str, Any] = {
    "type": None,
    "path": None,
    "text_key": "text",
    "separator": None,
    "weight": 1.0,
    "upsample": None,
    "name": None,
    "split": None,
    "data_dir": None,
}

DATA_DEFAULTS: dict[str, Any] = {
    "sources": [],
    "eval_sources": [],
    "eval_fraction": 0.0,
    "tokenizer": {"type": "byte", "path": None},
    "packing": "first_fit",
    "packing_bins": None,
    "mask_documents": True,
    "add_bos": True,
    "add_eos": True,
    "shuffle": True,
    "shuffle_seed": None,
    "num_epochs": None,
    "upsample_seed": 0,
    "worker_count": 0,
    "read_threads": 2,
    "read_prefetch": 64,
}

PACKINGS = ("first_fit", "concat_then_split")


def corpus_path(name: str) -> str:
  """Absolute path of a file of the shipped corpus (works after pip install)."""
  path = os.path.join(CORPUS_DIR, name)
  if not os.path.isfile(path):
    raise DataError(f"shipped corpus file not found: {path}")
  return path


def default_data_config():
  """The tiny CPU demo's data config: the shipped corpus, byte tokenizer.

  Train on `corpus/train.txt`, evaluate on the held-out `corpus/eval.txt`.
  The upsampling here (threshold 1024 bytes, keep 0.5) shows the recipe at demo
  scale; use `FU_ET_AL_UPSAMPLE` (4096 tokens, 0.1) for the 128K run.
  """
  import ml_collections  # pylint: disable=import-outside-toplevel
  cfg = copy.deepcopy(DATA_DEFAULTS)
  cfg["sources"] = [{
      "type": "text", "path": corpus_path("train.txt"), "separator": CORPUS_SEPARATOR, "weight": 1.0,
      "upsample": {"threshold": 1024, "keep_prob": 0.5}, "name": "corpus",
  }]
  cfg["eval_sources"] = [{
      "type": "text", "path": corpus_path("eval.txt"), "separator": CORPUS_SEPARATOR, "name": "corpus_eval",
  }]
  cfg["tokenizer"]["path"] = ""   # a str field, so --config.data.tokenizer.path=DIR works
  return ml_collections.ConfigDict(cfg)


def prepared_data_config(path: str, tokenizer: str = ""):
  """A data config training on the output of ``python -m longgen_jax.data.prepare``.

  ``path``: the prepared directory (or a glob of its shards). ``tokenizer``: "byte", a Hugging Face
  tokenizer directory, or "" to take the one recorded in the directory's index.json. Returns
  ``(data config, vocab_size)``: the tokenizer's id count (None when unknown), for the model.
  """
  import json  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from longgen_jax.data.sources import INDEX_FILE  # pylint: disable=import-outside-toplevel
  recorded, vocab = {"type": "byte", "path": ""}, None
  index = os.path.join(path, INDEX_FILE)
  if os.path.isfile(index):
    try:
      with open(index, encoding="utf-8") as f:
        info = json.load(f).get("tokenizer") or {}
    except (OSError, ValueError, AttributeError) as e:
      raise DataError(f"prepared data {index} is not readable JSON ({e})") from None
    recorded = {"type": info.get("type", "byte"), "path": info.get("path") or ""}
    vocab = info.get("vocab_size")
  if tokenizer:
    wanted = {"type": "byte", "path": ""} if tokenizer == "byte" else {"type": "hf",
                                                                       "path": tokenizer}
    if wanted != recorded:
      vocab = None   # not the recorded tokenizer: the pipeline checks its fingerprint
    recorded = wanted
  cfg = copy.deepcopy(DATA_DEFAULTS)
  cfg["sources"] = [{"type": "arrayrecord", "path": path, "weight": 1.0, "name": "prepared"}]
  cfg["tokenizer"] = recorded
  return ml_collections.ConfigDict(cfg), vocab


def _plain(value):
  """ConfigDict / FrozenConfigDict / tuples -> plain dicts and lists."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _check_keys(d: dict, allowed, where: str):
  unknown = sorted(set(d) - set(allowed))
  if unknown:
    raise DataError(f"{where}: unknown key(s) {unknown} (allowed: {', '.join(sorted(allowed))})")


def normalize_source(src, where: str, default_name: str) -> dict:
  """Validates one source dict and fills its defaults."""
  src = _plain(src)
  if not isinstance(src, dict):
    raise DataError(f"{where}: a source must be a dict, got {type(src).__name__}")
  _check_keys(src, SOURCE_DEFAULTS, where)
  out = copy.deepcopy(SOURCE_DEFAULTS) | src
  if out["type"] not in SOURCE_TYPES:
    raise DataError(f"{where}: type must be one of {', '.join(SOURCE_TYPES)}, got {out['type']!r}")
  if not out["path"]:
    raise DataError(f"{where}: `path` is required")
  weight = out["weight"]
  if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
    raise DataError(f"{where}: weight must be a positive number, got {weight!r}")
  out["weight"] = float(weight)
  if out["upsample"] is not None:
    up = out["upsample"]
    if not isinstance(up, dict):
      raise DataError(f"{where}.upsample: must be a dict {{threshold, keep_prob}} or None")
    _check_keys(up, ("threshold", "keep_prob"), f"{where}.upsample")
    threshold, keep = up.get("threshold"), up.get("keep_prob", 1.0)
    if threshold is not None and (not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0):
      raise DataError(f"{where}.upsample.threshold must be a non-negative int (tokens) or None, got {threshold!r}")
    if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0.0 < keep <= 1.0:
      raise DataError(f"{where}.upsample.keep_prob must be in (0, 1], got {keep!r}")
    out["upsample"] = {"threshold": threshold, "keep_prob": float(keep)}
  out["name"] = str(out["name"] or default_name)
  return out


def _normalize_sources(sources, key: str, prefix: str) -> list[dict]:
  """A list of source dicts, or a mapping name -> source dict (the key is the name)."""
  if isinstance(sources, dict):
    items = []
    for name, src in sources.items():
      src = _plain(src)
      if isinstance(src, dict) and src.get("name") not in (None, name):
        raise DataError(f"data.{key}.{name}: name {src['name']!r} differs from its key")
      items.append(normalize_source(dict(src, name=name) if isinstance(src, dict) else src, f"data.{key}.{name}",
                                    name))
    return items
  if not isinstance(sources, list):
    raise DataError(f"data.{key} must be a list of source dicts or a mapping name -> source dict")
  return [normalize_source(s, f"data.{key}[{i}]", f"{prefix}{i}") for i, s in enumerate(sources)]


def normalize_data_config(cfg) -> dict:
  """Validates a data config (dict or ConfigDict) and returns a plain dict with defaults."""
  cfg = _plain(cfg)
  if not isinstance(cfg, dict):
    raise DataError(f"data config must be a dict or ConfigDict, got {type(cfg).__name__}")
  _check_keys(cfg, DATA_DEFAULTS, "data config")
  out = copy.deepcopy(DATA_DEFAULTS) | cfg
  if not out["sources"]:
    raise DataError("data config: `sources` is empty; give at least one source")
  out["sources"] = _normalize_sources(out["sources"], "sources", "source")
  out["eval_sources"] = _normalize_sources(out["eval_sources"] or [], "eval_sources", "eval_source")
  names = [s["name"] for s in out["sources"]]
  if len(set(names)) != len(names):
    raise DataError(f"data.sources: names must be unique, got {names}")
  frac = out["eval_fraction"]
  if not isinstance(frac, (int, float)) or not 0.0 <= frac < 1.0:
    raise DataError(f"data config: eval_fraction must be in [0, 1), got {frac!r}")
  if frac > 0 and out["eval_sources"]:
    raise DataError("data config: set either eval_sources or eval_fraction, not both")
  if out["packing"] not in PACKINGS:
    raise DataError(f"data config: packing must be one of {', '.join(PACKINGS)}, got {out['packing']!r}")
  for key in ("mask_documents", "add_bos", "add_eos", "shuffle"):
    if not isinstance(out[key], bool):
      raise DataError(f"data config: {key} must be True or False, got {out[key]!r}")
  for key, lo in (("worker_count", 0), ("read_threads", 1), ("read_prefetch", 0), ("upsample_seed", 0)):
    if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < lo:
      raise DataError(f"data config: {key} must be an int >= {lo}, got {out[key]!r}")
  for key in ("num_epochs", "packing_bins"):
    if out[key] is not None and (not isinstance(out[key], int) or out[key] < 1):
      raise DataError(f"data config: {key} must be None or an int >= 1, got {out[key]!r}")
  seed = out["shuffle_seed"]
  if seed is not None and (not isinstance(seed, int) or not 0 <= seed < 2**32):
    raise DataError(f"data config: shuffle_seed must be None or an int in [0, 2**32), got {seed!r}")
  if not isinstance(out["tokenizer"], (dict, str)) and out["tokenizer"] is not None:
    raise DataError("data config: tokenizer must be a dict {type, path}")
  return out
