"""The prepare CLI end to end, its errors, and the tokenizer check of prepared shards."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from longgen_jax.data import ArrayRecordTokenSource, ByteTokenizer, DataError, build_train_iterator
from longgen_jax.data.prepare import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [f"Document {i}: " + "the long river runs on. " * (i % 7) for i in range(23)]


def _write_inputs(tmp_path):
  with open(tmp_path / "part-0.jsonl", "w") as f:
    for doc in DOCS[:15]:
      f.write(json.dumps({"body": doc}) + "\n")
  with open(tmp_path / "part-1.jsonl", "w") as f:
    for doc in DOCS[15:]:
      f.write(json.dumps({"body": doc}) + "\n")
    f.write(json.dumps({"body": ""}) + "\n")  # empty: skipped and counted


def test_prepare_cli_end_to_end(tmp_path):
  _write_inputs(tmp_path)
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "longgen_jax.data.prepare", f"--input={tmp_path}/part-*.jsonl", "--format=jsonl",
       "--text_key=body", "--tokenizer=byte", f"--out={out}", "--shard_size=10"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "wrote 23 documents" in proc.stdout and "in 3 shards" in proc.stdout and "skipped 1 empty" in proc.stdout
  assert "tokenizing" in proc.stderr  # the tqdm progress bar
  index = json.loads((out / "index.json").read_text())
  assert [s["num_documents"] for s in index["shards"]] == [10, 10, 3]
  assert index["num_tokens"] == sum(len(d.encode()) for d in DOCS) == sum(s["num_tokens"] for s in index["shards"])
  assert index["tokenizer"]["type"] == "byte" and index["tokenizer"]["vocab_size"] == 259
  assert all((out / s["file"]).is_file() for s in index["shards"])
  src = ArrayRecordTokenSource(str(out))
  tok = ByteTokenizer()
  assert [tok.decode(src[i]) for i in range(len(src))] == DOCS
  cfg = {"sources": [{"type": "arrayrecord", "path": str(out)}], "num_epochs": 1, "shuffle": False}
  rows = list(build_train_iterator(cfg, tokenizer=tok, seq_len=256, batch_size=1))
  assert sum(int(r["segment_ids"][0].max()) for r in rows) == 23


def test_prepare_text_with_separator_and_overwrite(tmp_path):
  (tmp_path / "a.txt").write_text("one\n\ntwo\n\nthree ✓")
  out = str(tmp_path / "out")
  args = [f"--input={tmp_path}/a.txt", "--format=text", "--separator=\\n\\n", f"--out={out}", "--no_progress"]
  assert main(args) == 0
  assert ArrayRecordTokenSource(out).index["num_documents"] == 3
  assert main(args) == 2  # refuses to overwrite ...
  assert main(args + ["--overwrite", "--shard_size=1"]) == 0  # ... unless asked
  assert sorted(os.listdir(out)) == ["index.json"] + [f"tokens-{i:05d}.array_record" for i in range(3)]
  assert ByteTokenizer().decode(ArrayRecordTokenSource(out)[2]) == "three ✓"


def test_prepare_errors(tmp_path, capsys):
  assert main([f"--input={tmp_path}/*.jsonl", "--format=jsonl", f"--out={tmp_path}/o", "--no_progress"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("prepare: error: ") and "matches no files" in err and err.count("\n") == 1
  _write_inputs(tmp_path)
  assert main([f"--input={tmp_path}/part-0.jsonl", "--format=jsonl", f"--out={tmp_path}/o", "--no_progress"]) == 2
  assert "no key 'text' (keys: body)" in capsys.readouterr().err
  assert main([f"--input={tmp_path}/part-0.jsonl", "--format=jsonl", "--text_key=body", "--tokenizer=/nope",
               f"--out={tmp_path}/o", "--no_progress"]) == 2
  assert "tokenizer path not found: /nope" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main([f"--input={tmp_path}/part-0.jsonl", "--format=csv", f"--out={tmp_path}/o"])


def test_prepared_shards_refuse_another_tokenizer(tmp_path):
  _write_inputs(tmp_path)
  out = str(tmp_path / "out")
  assert main([f"--input={tmp_path}/part-0.jsonl", "--format=jsonl", "--text_key=body", f"--out={out}",
               "--no_progress"]) == 0

  class OtherTokenizer(ByteTokenizer):
    vocab_size = 300

  cfg = {"sources": [{"type": "arrayrecord", "path": out}]}
  with pytest.raises(DataError, match="was tokenized with byte"):
    build_train_iterator(cfg, tokenizer=OtherTokenizer(), seq_len=16, batch_size=1)
  # Shards read by glob (no index.json) still reject ids outside the vocabulary.

  class SmallVocab(ByteTokenizer):
    vocab_size = 100

  cfg = {"sources": [{"type": "arrayrecord", "path": f"{out}/*.array_record"}]}
  with pytest.raises(DataError, match="token ids outside"):
    next(build_train_iterator(cfg, tokenizer=SmallVocab(), seq_len=16, batch_size=1))
  assert np.all(ArrayRecordTokenSource(out)[0] >= 3)
