"""The grain input pipeline: sources -> documents -> mixture -> packed [B, T] batches.

Per source (all `grain.MapDataset`, random access, nothing materialized):

  source[i] --(select + tokenize + upsample, by doc index i)--> {"tokens"} | None
    --> [process_index::process_count]    disjoint per-process slice
    --> .shuffle(seed)                    fresh permutation each epoch
    --> .repeat(num_epochs)               None = forever
    --> .to_iter_dataset(ReadOptions)     None (dropped) documents are skipped

then `grain.IterDataset.mix` by weight (train), packing (packing.py), one
`FormatRow` map, `.batch(B)` and, with `worker_count > 0`, `.mp_prefetch`.
The result is a checkpointable `grain.DatasetIterator` (get_state/set_state).

Global batch = per-process batch x process_count: every process reads only its
own slice of every source, so processes never see the same document.
"""

from __future__ import annotations

import grain
import numpy as np

from longgen_jax.data import packing as packing_lib
from longgen_jax.data.config import normalize_data_config
from longgen_jax.data.errors import DataError
from longgen_jax.data.sources import make_source
from longgen_jax.data.tokenizers import encode_to_array, tokenizer_info
from longgen_jax.data.upsample import _splitmix64, is_eval_document, keep_document, name_salt

# Documents scanned at build time to prove a (split, upsampled) shard is not empty.
_NONEMPTY_SCAN = 4096


class SelectTokenize(grain.transforms.MapWithIndex):
  """Doc index i, raw document -> {"tokens": int32 with BOS/EOS} or None (dropped).

  Drops a document when it is on the other side of the eval split, when it is
  empty, or when the length-upsampling recipe does not keep it.
  """

  def __init__(self, *, tokenizer, num_docs: int, name: str, split: str, eval_fraction: float,
               upsample: dict | None, upsample_seed: int, add_bos: bool, add_eos: bool):
    self.tokenizer = tokenizer
    self.num_docs = num_docs
    self.name = name
    self.salt = name_salt(name)
    self.split = split
    self.eval_fraction = eval_fraction
    self.threshold = upsample["threshold"] if upsample else None
    self.keep_prob = upsample["keep_prob"] if upsample else 1.0
    self.upsample_seed = upsample_seed
    self.prefix = [tokenizer.bos_id] if add_bos else []
    self.suffix = [tokenizer.eos_id] if add_eos else []
    if None in self.prefix + self.suffix:
      raise DataError(f"tokenizer {tokenizer!r} has no {'BOS' if None in self.prefix else 'EOS'} token; "
                      "set add_bos/add_eos to False")
    self.vocab_size = tokenizer.vocab_size

  def map_with_index(self, index: int, element):
    doc = int(index) % self.num_docs
    if self.split != "all":
      held_out = is_eval_document(doc, eval_fraction=self.eval_fraction, salt=self.salt)
      if held_out != (self.split == "eval"):
        return None
    if isinstance(element, np.ndarray):
      tokens = element.astype(np.int32, copy=False)
      if len(tokens) and (tokens.max() >= self.vocab_size or tokens.min() < 0):
        raise DataError(f"source {self.name}: document {doc} has token ids outside [0, {self.vocab_size}); "
                        "it was tokenized with a different tokenizer")
    else:
      tokens = encode_to_array(self.tokenizer, element)
    if len(tokens) == 0:
      return None
    if not keep_document(len(tokens), doc, threshold=self.threshold, keep_prob=self.keep_prob,
                         seed=self.upsample_seed, salt=self.salt):
      return None
    if self.prefix or self.suffix:
      tokens = np.concatenate([np.asarray(self.prefix, np.int32), tokens, np.asarray(self.suffix, np.int32)])
    return {packing_lib.TOKENS: tokens}


def _check_tokenizer(source, src_cfg: dict, tokenizer):
  index = getattr(source, "index", None)
  if not index or "tokenizer" not in index:
    return
  want = index["tokenizer"].get("fingerprint")
  have = tokenizer_info(tokenizer)["fingerprint"]
  if want and want != have:
    raise DataError(f"source {src_cfg['name']}: {src_cfg['path']} was tokenized with "
                    f"{index['tokenizer'].get('type')}:{index['tokenizer'].get('path')} (fingerprint {want}), "
                    f"not with {tokenizer!r} (fingerprint {have})")


def source_documents(src_cfg: dict, *, tokenizer, split: str = "all", eval_fraction: float = 0.0,
                     upsample_seed: int = 0, add_bos: bool = True, add_eos: bool = True,
                     process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """One source's documents for one process, as a MapDataset of {"tokens"} or None.

  `src_cfg` is a normalized source dict (config.normalize_source). `split` is
  "train" (documents outside the hashed eval split), "eval" (inside) or "all".
  Element j of the result is document `process_index + j * process_count`.
  """
  if split not in ("train", "eval", "all"):
    raise DataError(f"split must be 'train', 'eval' or 'all', got {split!r}")
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index {process_index} not in [0, process_count={process_count})")
  source = make_source(src_cfg)
  if len(source) == 0:
    raise DataError(f"source {src_cfg['name']} ({src_cfg['path']}) holds no documents")
  if len(source) < process_count:
    raise DataError(f"source {src_cfg['name']} has {len(source)} documents, fewer than process_count={process_count}")
  if getattr(source, "pretokenized", False):
    _check_tokenizer(source, src_cfg, tokenizer)
  select = SelectTokenize(tokenizer=tokenizer, num_docs=len(source), name=src_cfg["name"], split=split,
                          eval_fraction=eval_fraction, upsample=src_cfg["upsample"],
                          upsample_seed=upsample_seed, add_bos=add_bos, add_eos=add_eos)
  ds = grain.MapDataset.source(source).map_with_index(select)
  return ds[process_index::process_count]


def _require_nonempty(ds: grain.MapDataset, what: str):
  """Raises unless some element among the first `_NONEMPTY_SCAN` survives selection."""
  for i in range(min(len(ds), _NONEMPTY_SCAN)):
    if ds[i] is not None:
      return
  raise DataError(f"{what}: no documents left after the eval split and upsampling "
                  f"(checked {min(len(ds), _NONEMPTY_SCAN)} of {len(ds)})")


def _source_seed(seed: int, name: str) -> int:
  return _splitmix64((seed << 32) ^ name_salt(name)) % (2**32)


def _read_options(cfg: dict) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=cfg["read_threads"], prefetch_buffer_size=cfg["read_prefetch"])


def _finish(ds: grain.IterDataset, cfg: dict, *, tokenizer, seq_len: int, batch_size: int, seed: int,
            train: bool) -> grain.IterDataset:
  bins = cfg["packing_bins"] or batch_size
  ds = packing_lib.pack(ds, seq_len=seq_len, packing=cfg["packing"], num_bins=bins, seed=seed,
                        shuffle_bins=train and cfg["shuffle"])
  ds = ds.map(packing_lib.FormatRow(mask_documents=cfg["mask_documents"], pad_id=tokenizer.pad_id))
  ds = ds.batch(batch_size, drop_remainder=train)
  if not train:
    ds = ds.map(packing_lib.PadBatch(batch_size, seq_len, tokenizer.pad_id))
  if cfg["worker_count"] > 0:
    _mark_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg["worker_count"]))
  return ds


def _mark_flags_parsed():
  """grain 0.2.18's mp_prefetch reads an absl flag and fails when flags were never
  parsed (scripts and tests not run through absl.app; google/grain#1355, fixed
  upstream by #1362). Marking them parsed keeps every flag at its default."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _check_shapes(seq_len: int, batch_size: int, process_count: int):
  for name, value, lo in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1), ("process_count", process_count, 1)):
    if not isinstance(value, (int, np.integer)) or value < lo:
      raise DataError(f"{name} must be an int >= {lo}, got {value!r}")


def build_train_dataset(data_cfg, *, tokenizer, seq_len: int, batch_size: int, seed: int = 0,
                        process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """The training pipeline as a `grain.IterDataset` of per-process [B, T] batches."""
  _check_shapes(seq_len, batch_size, process_count)
  cfg = normalize_data_config(data_cfg)
  shuffle_seed = cfg["shuffle_seed"] if cfg["shuffle_seed"] is not None else int(seed) % (2**32)
  split = "train" if cfg["eval_fraction"] > 0 else "all"
  streams, weights = [], []
  for src in cfg["sources"]:
    docs = source_documents(src, tokenizer=tokenizer, split=split, eval_fraction=cfg["eval_fraction"],
                            upsample_seed=cfg["upsample_seed"], add_bos=cfg["add_bos"], add_eos=cfg["add_eos"],
                            process_index=process_index, process_count=process_count)
    _require_nonempty(docs, f"train source {src['name']} (process {process_index})")
    if cfg["shuffle"]:
      docs = docs.shuffle(_source_seed(shuffle_seed, src["name"]))
    docs = docs.repeat(cfg["num_epochs"])
    streams.append(docs.to_iter_dataset(_read_options(cfg)))
    weights.append(src["weight"])
  ds = streams[0] if len(streams) == 1 else grain.IterDataset.mix(streams, weights)
  return _finish(ds, cfg, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size, seed=shuffle_seed,
                 train=True)


def build_eval_dataset(data_cfg, *, tokenizer, seq_len: int, batch_size: int, process_index: int = 0,
                       process_count: int = 1) -> grain.IterDataset:
  """The eval pipeline: one ordered pass, last batch padded with empty rows.

  Eval data is `eval_sources` if given, else the `eval_fraction` hold-out of
  every train source (each source keeps its own upsample setting). Sources are
  concatenated in order, unshuffled. Processes may get different batch counts.
  """
  _check_shapes(seq_len, batch_size, process_count)
  cfg = normalize_data_config(data_cfg)
  if cfg["eval_sources"]:
    sources, split = cfg["eval_sources"], "all"
  elif cfg["eval_fraction"] > 0:
    sources, split = cfg["sources"], "eval"
  else:
    raise DataError("data config has no eval data: set eval_sources or eval_fraction > 0")
  parts = [source_documents(src, tokenizer=tokenizer, split=split, eval_fraction=cfg["eval_fraction"],
                            upsample_seed=cfg["upsample_seed"], add_bos=cfg["add_bos"], add_eos=cfg["add_eos"],
                            process_index=process_index, process_count=process_count) for src in sources]
  docs = parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)
  _require_nonempty(docs, f"eval data (process {process_index})")
  ds = docs.to_iter_dataset(_read_options(cfg))
  return _finish(ds, cfg, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size, seed=0, train=False)


def build_train_iterator(data_cfg, *, tokenizer, seq_len: int, batch_size: int, seed: int = 0,
                         process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Checkpointable iterator of training batches (docs/architecture.md §5).

  Each `next(it)` is a dict of numpy arrays, all `[batch_size, seq_len]`:
  inputs, targets, positions, segment_ids (int32; 0 = padding), loss_mask
  (float32). `batch_size` is per process.
  """
  return iter(build_train_dataset(data_cfg, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size,
                                  seed=seed, process_index=process_index, process_count=process_count))


def build_eval_iterator(data_cfg, *, tokenizer, seq_len: int, batch_size: int, process_index: int = 0,
                        process_count: int = 1) -> grain.DatasetIterator:
  """Iterator over one pass of eval batches (same format as training)."""
  return iter(build_eval_dataset(data_cfg, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size,
                                 process_index=process_index, process_count=process_count))
