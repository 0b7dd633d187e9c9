"""Random-access document sources (grain `RandomAccessDataSource`s).

Every source has `len()` and `source[i]` for `0 <= i < len()`:

* `TextSource`: text files; one document per file, or each file split on a
  separator string. Byte offsets are indexed once; documents are read lazily.
* `JsonlSource`: JSON-lines files, the document is `record[text_key]`.
* `ParquetSource`: Parquet files, the document is column `text_key` (pyarrow;
  one row group cached per thread).
* `ArrayRecordTokenSource`: ArrayRecord shards written by `prepare`; each record
  is the raw bytes of an int32 token array; `source[i]` is that np.ndarray.
* `tfds_source(...)`: a TFDS dataset through `tfds.data_source` (lazy import).

Text sources return `str`; pre-tokenized sources set `pretokenized = True` and
return `np.ndarray[int32]`. Document indices follow the sorted file order, so
they are stable across runs and hosts (the upsampling and eval split hash them).
`make_source(cfg)` builds one from a source config (see `config.py`).
"""

from __future__ import annotations

import bisect
import glob
import json
import os
import threading
from collections.abc import Sequence

import numpy as np

from longgen_jax.data.errors import DataError, one_line

INDEX_FILE = "index.json"
ARRAYRECORD_SUFFIX = ".array_record"


def expand_paths(patterns: str | Sequence[str], *, what: str = "input") -> list[str]:
  """Expands globs (a string, comma-separated string or list) to sorted files.

  Raises DataError when a pattern matches nothing or names a missing file.
  """
  if isinstance(patterns, (str, os.PathLike)):
    patterns = [p for p in str(patterns).split(",") if p.strip()]
  patterns = [os.path.expanduser(str(p).strip()) for p in patterns]
  if not patterns:
    raise DataError(f"{what}: no path given")
  files: list[str] = []
  for pattern in patterns:
    if any(c in pattern for c in "*?["):
      matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
      if not matches:
        raise DataError(f"{what}: glob {pattern!r} matches no files")
      files.extend(matches)
    elif os.path.isfile(pattern):
      files.append(pattern)
    elif os.path.isdir(pattern):
      raise DataError(f"{what}: {pattern!r} is a directory; give a file or a glob such as {pattern}/*.txt")
    else:
      raise DataError(f"{what}: file not found: {pattern}")
  return files


def _read_span(path: str, start: int, end: int) -> str:
  with open(path, "rb") as f:
    f.seek(start)
    return f.read(end - start).decode("utf-8", errors="replace")


class TextSource:
  """Plain-text documents: whole files, or files split on `separator`.

  Documents are stripped of surrounding whitespace; empty ones are skipped.
  """

  pretokenized = False

  def __init__(self, paths: str | Sequence[str], *, separator: str | None = None):
    self.files = expand_paths(paths, what="text source")
    self.separator = separator
    if separator is None:
      self._file_idx = np.arange(len(self.files), dtype=np.int64)
      self._start = np.zeros(len(self.files), dtype=np.int64)
      self._end = np.array([os.path.getsize(p) for p in self.files], dtype=np.int64)
      return
    if not separator:
      raise DataError("text source: `separator` must be a non-empty string or None")
    sep = separator.encode("utf-8")
    file_idx, starts, ends = [], [], []
    for i, path in enumerate(self.files):
      with open(path, "rb") as f:
        data = f.read()
      pos = 0
      while pos <= len(data):
        nxt = data.find(sep, pos)
        stop = len(data) if nxt < 0 else nxt
        if data[pos:stop].strip():
          file_idx.append(i)
          starts.append(pos)
          ends.append(stop)
        if nxt < 0:
          break
        pos = nxt + len(sep)
    self._file_idx = np.asarray(file_idx, dtype=np.int64)
    self._start = np.asarray(starts, dtype=np.int64)
    self._end = np.asarray(ends, dtype=np.int64)

  def __len__(self) -> int:
    return len(self._start)

  def __getitem__(self, index: int) -> str:
    i = int(index)
    return _read_span(self.files[self._file_idx[i]], int(self._start[i]), int(self._end[i])).strip()

  def __repr__(self) -> str:
    return f"TextSource({len(self.files)} files, {len(self)} docs, separator={self.separator!r})"


class JsonlSource:
  """JSON-lines documents: `json.loads(line)[text_key]`, blank lines skipped."""

  pretokenized = False

  def __init__(self, paths: str | Sequence[str], *, text_key: str = "text"):
    self.files = expand_paths(paths, what="jsonl source")
    self.text_key = text_key
    file_idx, starts = [], []
    for i, path in enumerate(self.files):
      offset = 0
      first = True
      with open(path, "rb") as f:
        for line in f:
          if line.strip():
            if first:
              self._check_record(line, path, offset)
              first = False
            file_idx.append(i)
            starts.append(offset)
          offset += len(line)
    self._file_idx = np.asarray(file_idx, dtype=np.int64)
    self._start = np.asarray(starts, dtype=np.int64)

  def _check_record(self, line: bytes, path: str, offset: int):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"jsonl source: {path} (byte {offset}): invalid JSON: {one_line(e)}") from None
    if not isinstance(record, dict):
      raise DataError(f"jsonl source: {path} (byte {offset}): a line is a {type(record).__name__}, not an object")
    if self.text_key not in record:
      raise DataError(f"jsonl source: {path} (byte {offset}): no key {self.text_key!r} "
                      f"(keys: {', '.join(sorted(record))})")
    if not isinstance(record[self.text_key], str):
      raise DataError(f"jsonl source: {path} (byte {offset}): {self.text_key!r} is a "
                      f"{type(record[self.text_key]).__name__}, not a string")
    return record[self.text_key]

  def __len__(self) -> int:
    return len(self._start)

  def __getitem__(self, index: int) -> str:
    i = int(index)
    path = self.files[self._file_idx[i]]
    with open(path, "rb") as f:
      f.seek(int(self._start[i]))
      line = f.readline()
    return self._check_record(line, path, int(self._start[i]))

  def __repr__(self) -> str:
    return f"JsonlSource({len(self.files)} files, {len(self)} docs, text_key={self.text_key!r})"


class ParquetSource:
  """Parquet documents: string column `text_key`; null values read as ''."""

  pretokenized = False

  def __init__(self, paths: str | Sequence[str], *, text_key: str = "text"):
    try:
      import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise DataError("parquet source needs pyarrow: pip install longgen_jax[parquet]") from None
    self._pq = pq
    self.files = expand_paths(paths, what="parquet source")
    self.text_key = text_key
    self._group_starts: list[list[int]] = []  # per file: first row of each row group
    counts = []
    for path in self.files:
      try:
        meta = pq.ParquetFile(path).metadata
      except Exception as e:  # pylint: disable=broad-except
        raise DataError(f"parquet source: cannot read {path}: {one_line(e)}") from None
      names = meta.schema.to_arrow_schema().names
      if text_key not in names:
        raise DataError(f"parquet source: {path} has no column {text_key!r} (columns: {', '.join(names)})")
      starts, total = [], 0
      for g in range(meta.num_row_groups):
        starts.append(total)
        total += meta.row_group(g).num_rows
      self._group_starts.append(starts)
      counts.append(total)
    self._file_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._local = threading.local()

  def __getstate__(self):
    """Picklable for grain worker processes: drops the module and per-thread caches."""
    state = self.__dict__.copy()
    del state["_pq"], state["_local"]
    return state

  def __setstate__(self, state):
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    self.__dict__.update(state)
    self._pq = pq
    self._local = threading.local()

  def __len__(self) -> int:
    return int(self._file_offsets[-1])

  def _row_group(self, file_i: int, group: int) -> list:
    cache = getattr(self._local, "cache", None)
    if cache is not None and cache[0] == (file_i, group):
      return cache[1]
    handle = getattr(self._local, "handles", None)
    if handle is None:
      handle = self._local.handles = {}
    if file_i not in handle:
      handle[file_i] = self._pq.ParquetFile(self.files[file_i])
    values = handle[file_i].read_row_group(group, columns=[self.text_key]).column(0).to_pylist()
    self._local.cache = ((file_i, group), values)
    return values

  def __getitem__(self, index: int) -> str:
    i = int(index)
    if not 0 <= i < len(self):
      raise IndexError(f"parquet source index {i} out of range [0, {len(self)})")
    file_i = int(np.searchsorted(self._file_offsets, i, side="right") - 1)
    row = i - int(self._file_offsets[file_i])
    group = bisect.bisect_right(self._group_starts[file_i], row) - 1
    value = self._row_group(file_i, group)[row - self._group_starts[file_i][group]]
    if value is None:
      return ""
    if isinstance(value, bytes):
      return value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
      raise DataError(f"parquet source: {self.files[file_i]} column {self.text_key!r} holds "
                      f"{type(value).__name__}, not strings")
    return value

  def __repr__(self) -> str:
    return f"ParquetSource({len(self.files)} files, {len(self)} docs, text_key={self.text_key!r})"


def read_index(directory: str) -> dict:
  """Reads the `index.json` written by `prepare` in `directory`."""
  path = os.path.join(directory, INDEX_FILE)
  if not os.path.isfile(path):
    raise DataError(f"arrayrecord source: {directory} has no {INDEX_FILE} (write it with "
                    "`python -m longgen_jax.data.prepare`, or give a glob of *.array_record files)")
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise DataError(f"arrayrecord source: {path} is not valid JSON: {one_line(e)}") from None


class ArrayRecordTokenSource:
  """Pre-tokenized documents from ArrayRecord shards (int32 token arrays).

  `path` is a directory written by `prepare` (its `index.json` lists the shards
  and the tokenizer; `self.index` holds it), or a glob / list of
  `*.array_record` files (then `self.index` is None).
  """

  pretokenized = True

  def __init__(self, path: str | Sequence[str]):
    import grain  # pylint: disable=import-outside-toplevel
    self.index = None
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(os.path.expanduser(str(path))):
      directory = os.path.expanduser(str(path))
      self.index = read_index(directory)
      try:
        shards = [os.path.join(directory, s["file"]) for s in self.index["shards"]]
      except (KeyError, TypeError):
        raise DataError(f"arrayrecord source: {directory}/{INDEX_FILE} has no valid 'shards' list") from None
      missing = [s for s in shards if not os.path.isfile(s)]
      if missing:
        raise DataError(f"arrayrecord source: shard listed in {INDEX_FILE} not found: {missing[0]}")
      if self.index.get("dtype", "int32") != "int32":
        raise DataError(f"arrayrecord source: {directory} holds dtype {self.index.get('dtype')}, expected int32")
    else:
      shards = expand_paths(path, what="arrayrecord source")
    self.files = shards
    if not shards:
      raise DataError(f"arrayrecord source: {path} holds no shards")
    try:
      self._source = grain.sources.ArrayRecordDataSource(shards)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"arrayrecord source: cannot open {shards[0]}...: {one_line(e)}") from None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> np.ndarray:
    record = self._source[int(index)]
    if len(record) % 4:
      raise DataError(f"arrayrecord source: record {index} has {len(record)} bytes, not int32 tokens")
    return np.frombuffer(record, dtype=np.int32)

  def __repr__(self) -> str:
    return f"ArrayRecordTokenSource({len(self.files)} shards, {len(self)} docs)"


class _TfdsTextSource:
  """Wraps a `tfds.data_source` and extracts the `text_key` feature as str."""

  pretokenized = False

  def __init__(self, source, text_key: str, name: str):
    self._source = source
    self.text_key = text_key
    self.name = name

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> str:
    record = self._source[int(index)]
    if self.text_key not in record:
      raise DataError(f"tfds source {self.name}: no feature {self.text_key!r} (features: {', '.join(sorted(record))})")
    value = record[self.text_key]
    if isinstance(value, np.ndarray):
      value = value.item()
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

  def __repr__(self) -> str:
    return f"TfdsSource({self.name}, {len(self)} docs, text_key={self.text_key!r})"


def tfds_source(name: str, *, split: str = "train", text_key: str = "text", data_dir: str | None = None):
  """A TFDS dataset as a random-access text source (`tfds.data_source`)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError("tfds source needs tensorflow-datasets: pip install longgen_jax[tfds]") from None
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"tfds source: cannot open {name!r} split {split!r}: {one_line(e)}") from None
  return _TfdsTextSource(source, text_key, f"{name}[{split}]")


SOURCE_TYPES = ("text", "jsonl", "parquet", "arrayrecord", "tfds")


def make_source(cfg: dict):
  """Builds the source for one normalized source config (see config.py)."""
  kind = cfg["type"]
  if kind == "text":
    return TextSource(cfg["path"], separator=cfg.get("separator"))
  if kind == "jsonl":
    return JsonlSource(cfg["path"], text_key=cfg.get("text_key", "text"))
  if kind == "parquet":
    return ParquetSource(cfg["path"], text_key=cfg.get("text_key", "text"))
  if kind == "arrayrecord":
    return ArrayRecordTokenSource(cfg["path"])
  if kind == "tfds":
    return tfds_source(cfg["path"], split=cfg.get("split") or "train", text_key=cfg.get("text_key", "text"),
                       data_dir=cfg.get("data_dir"))
  raise DataError(f"unknown source type {kind!r} (expected one of {', '.join(SOURCE_TYPES)})")
