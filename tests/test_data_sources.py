"""Every source type loads (text, jsonl, parquet, arrayrecord via prepare); bad inputs fail clearly."""

import json

import numpy as np
import pytest

from longgen_jax.data import (ArrayRecordTokenSource, ByteTokenizer, DataError, JsonlSource, TextSource,
                              build_train_iterator, make_source, tfds_source)
from longgen_jax.data.config import normalize_source
from longgen_jax.data.prepare import prepare

DOCS = ["First document about rivers.", "Second one, about bread and ovens.", "Third: lighthouses ✓.",
        "Fourth and last, on maps."]


def _write_text_files(d):
  for i, doc in enumerate(DOCS):
    (d / f"doc{i}.txt").write_text(doc + "\n", encoding="utf-8")


def _write_jsonl(path, docs=DOCS, key="text"):
  with open(path, "w", encoding="utf-8") as f:
    for i, doc in enumerate(docs):
      f.write(json.dumps({"id": i, key: doc}) + "\n")
      if i == 1:
        f.write("\n")  # blank lines are skipped


def _write_parquet(path, docs=DOCS, column="text", row_group_size=3):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  pq.write_table(pa.table({"id": list(range(len(docs))), column: docs}), str(path), row_group_size=row_group_size)


def test_text_one_doc_per_file_and_separator(tmp_path):
  _write_text_files(tmp_path)
  src = TextSource(str(tmp_path / "*.txt"))
  assert [src[i] for i in range(len(src))] == DOCS
  (tmp_path / "joined.md").write_text("\n===\n".join(DOCS) + "\n===\n\n", encoding="utf-8")
  split = TextSource([str(tmp_path / "joined.md")], separator="\n===\n")
  assert [split[i] for i in range(len(split))] == DOCS  # empty trailing piece skipped
  both = TextSource(f"{tmp_path}/doc0.txt,{tmp_path}/doc3.txt")
  assert [both[i] for i in range(len(both))] == [DOCS[0], DOCS[3]]


def test_jsonl_and_parquet(tmp_path):
  _write_jsonl(tmp_path / "a.jsonl")
  src = JsonlSource(str(tmp_path / "*.jsonl"))
  assert len(src) == 4 and [src[i] for i in range(4)] == DOCS
  _write_parquet(tmp_path / "a.parquet")
  _write_parquet(tmp_path / "b.parquet", docs=DOCS[::-1], row_group_size=1)
  pq_src = make_source(normalize_source({"type": "parquet", "path": str(tmp_path / "*.parquet")}, "s", "s"))
  assert len(pq_src) == 8
  assert [pq_src[i] for i in (7, 0, 3, 4, 1, 5)] == [DOCS[0], DOCS[0], DOCS[3], DOCS[3], DOCS[1], DOCS[2]]


def test_arrayrecord_via_prepare(tmp_path):
  _write_jsonl(tmp_path / "a.jsonl")
  tok = ByteTokenizer()
  index = prepare([str(tmp_path / "a.jsonl")], fmt="jsonl", tokenizer=tok, out=str(tmp_path / "ar"), shard_size=3,
                  progress=False)
  assert index["num_documents"] == 4 and len(index["shards"]) == 2
  src = ArrayRecordTokenSource(str(tmp_path / "ar"))
  assert src.pretokenized and len(src) == 4
  assert all(src[i].dtype == np.int32 and tok.decode(src[i]) == DOCS[i] for i in range(4))
  shards = ArrayRecordTokenSource(str(tmp_path / "ar" / "*.array_record"))  # a glob works too
  assert shards.index is None and tok.decode(shards[3]) == DOCS[3]


@pytest.mark.parametrize("kind", ["text", "jsonl", "parquet", "arrayrecord"])
def test_every_source_type_through_the_pipeline(tmp_path, kind):
  tok = ByteTokenizer()
  if kind == "text":
    _write_text_files(tmp_path)
    path = str(tmp_path / "*.txt")
  elif kind == "jsonl":
    _write_jsonl(tmp_path / "a.jsonl")
    path = str(tmp_path / "a.jsonl")
  elif kind == "parquet":
    _write_parquet(tmp_path / "a.parquet")
    path = str(tmp_path / "a.parquet")
  else:
    _write_jsonl(tmp_path / "a.jsonl")
    prepare([str(tmp_path / "a.jsonl")], fmt="jsonl", tokenizer=tok, out=str(tmp_path / "ar"), shard_size=2,
            progress=False)
    path = str(tmp_path / "ar")
  cfg = {"sources": [{"type": kind, "path": path}], "num_epochs": 1, "shuffle": False}
  docs = []
  for batch in build_train_iterator(cfg, tokenizer=tok, seq_len=64, batch_size=1):
    row, seg = batch["inputs"][0], batch["segment_ids"][0]
    docs += [tok.decode(row[seg == s]) for s in range(1, seg.max() + 1)]
  assert sorted(docs) == sorted(DOCS)


def test_bad_inputs_fail_clearly(tmp_path):
  with pytest.raises(DataError, match="matches no files"):
    TextSource(str(tmp_path / "*.txt"))
  with pytest.raises(DataError, match="file not found"):
    JsonlSource(str(tmp_path / "missing.jsonl"))
  with pytest.raises(DataError, match="is a directory"):
    TextSource(str(tmp_path))
  _write_jsonl(tmp_path / "k.jsonl", key="body")
  with pytest.raises(DataError, match=r"no key 'text' \(keys: body, id\)"):
    JsonlSource(str(tmp_path / "k.jsonl"))
  (tmp_path / "bad.jsonl").write_text('{"text": "ok"\n')
  with pytest.raises(DataError, match="invalid JSON"):
    JsonlSource(str(tmp_path / "bad.jsonl"))
  _write_parquet(tmp_path / "c.parquet", column="body")
  with pytest.raises(DataError, match=r"has no column 'text' \(columns: id, body\)"):
    make_source({"type": "parquet", "path": str(tmp_path / "c.parquet"), "text_key": "text"})
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(DataError, match="has no index.json"):
    ArrayRecordTokenSource(str(tmp_path / "empty_dir"))
  with pytest.raises(DataError, match="unknown source type"):
    make_source({"type": "csv", "path": "x"})
  try:
    import tensorflow_datasets  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    with pytest.raises(DataError, match=r"pip install longgen_jax\[tfds\]"):
      tfds_source("wikipedia")


def test_sources_pickle_for_worker_processes(tmp_path):
  """grain worker processes receive the sources pickled."""
  import pickle  # pylint: disable=import-outside-toplevel
  _write_text_files(tmp_path)
  _write_jsonl(tmp_path / "a.jsonl")
  _write_parquet(tmp_path / "a.parquet")
  prepare([str(tmp_path / "a.jsonl")], fmt="jsonl", tokenizer=ByteTokenizer(), out=str(tmp_path / "ar"),
          shard_size=2, progress=False)
  for src in (TextSource(str(tmp_path / "*.txt")), JsonlSource(str(tmp_path / "a.jsonl")),
              make_source({"type": "parquet", "path": str(tmp_path / "a.parquet"), "text_key": "text"}),
              ArrayRecordTokenSource(str(tmp_path / "ar"))):
    src[1]  # warm any per-thread cache before pickling
    copy = pickle.loads(pickle.dumps(src))
    got = copy[2]
    assert (ByteTokenizer().decode(got) if isinstance(got, np.ndarray) else got) == DOCS[2]
