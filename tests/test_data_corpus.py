"""The shipped demo corpus: reproducible from its generator, small, split into train and eval."""

import os

import numpy as np

from longgen_jax.data import CORPUS_DIR, CORPUS_SEPARATOR, TextSource, default_data_config
from tools.corpus_gen import corpus_texts, main


def test_shipped_corpus_matches_generator(tmp_path):
  assert main(["--check"]) == 0
  texts = corpus_texts()
  assert texts == corpus_texts()  # deterministic
  main(["--out", str(tmp_path)])
  for name, text in texts.items():
    assert (tmp_path / name).read_text(encoding="utf-8") == text


def test_corpus_size_split_and_lengths():
  sizes = {n: os.path.getsize(os.path.join(CORPUS_DIR, n)) for n in ("train.txt", "eval.txt")}
  assert sum(sizes.values()) < 300_000 and sizes["eval.txt"] > 10_000
  train = TextSource(os.path.join(CORPUS_DIR, "train.txt"), separator=CORPUS_SEPARATOR)
  held = TextSource(os.path.join(CORPUS_DIR, "eval.txt"), separator=CORPUS_SEPARATOR)
  train_docs = [train[i] for i in range(len(train))]
  eval_docs = [held[i] for i in range(len(held))]
  assert len(train_docs) > 100 and len(eval_docs) > 10
  assert not set(train_docs) & set(eval_docs)
  lengths = np.array([len(d.encode()) for d in train_docs])
  assert (lengths < 1024).mean() > 0.3 and (lengths > 4096).sum() >= 5  # short docs to drop, long docs to keep
  assert all(d.isascii() and "<|endoftext|>" not in d for d in train_docs)
  cfg = default_data_config()
  assert [s["path"] for s in cfg.sources] == [os.path.join(CORPUS_DIR, "train.txt")]
  assert [s["path"] for s in cfg.eval_sources] == [os.path.join(CORPUS_DIR, "eval.txt")]
