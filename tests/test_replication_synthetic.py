"""Synthetic documents that ask several questions (``synthetic.document(..., questions=N)``).

The single-question documents must stay byte-identical to those of the second pass: the
digests below were computed from ``synthetic.py`` before ``questions`` existed (numpy 2.4.6;
``numpy.random.Generator`` streams may change across numpy versions).
"""

import argparse
import hashlib
import itertools
import json
import re

import numpy as np
import pytest

from longgen_jax.replication import synthetic, wordings
from longgen_jax.replication.__main__ import data_mismatch

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
OLD_DOCS = {0: "adb35ae68c098852", 1: "00c5577316997f61", 2: "7bff328f6cb74f8c"}
OLD_WRITE = {False: ("9b4829e39c1093e8", 36855), True: ("35166d47091d793d", 30984)}


def _filler() -> synthetic.Filler:
  return synthetic.Filler(["\n".join(f"Line {i} of the filler text is here for the test number "
                                     f"{j}." for i in range(200)) for j in range(4)])


def _corpus_jsonl(path) -> str:
  words = ["".join(p) for p in itertools.product("abcdefgh", repeat=4)][:80]
  texts = ["\n".join(f"Line {i} says "
                     f"{' '.join(words[(i * 7 + j * 3 + d) % 80] for j in range(8))}."
                     for i in range(60)) for d in range(5)]
  with open(path, "w", encoding="utf-8") as f:
    for t in texts:
      f.write(json.dumps({"text": t}) + "\n")
  return str(path)


def _norm(key: str) -> str:
  return key.lower().replace(".", "_")


@pytest.mark.parametrize("seed", sorted(OLD_DOCS))
def test_one_question_documents_are_unchanged(seed):
  filler, rng = _filler(), np.random.default_rng(seed)
  docs = [synthetic.document(rng, filler, WORDS, n) for n in (256, 600, 1000, 4000) * 3]
  digest = hashlib.sha256(json.dumps(docs, sort_keys=True).encode()).hexdigest()[:16]
  assert digest == OLD_DOCS[seed]


@pytest.mark.parametrize("log_uniform", [False, True])
def test_one_question_write_is_unchanged(tmp_path, log_uniform):
  out = str(tmp_path / "s.jsonl")
  stats = synthetic.write(out, filler_jsonl=_corpus_jsonl(tmp_path / "train.jsonl"), n_docs=40,
                          min_chars=128, max_chars=2048, seed=5, log_uniform=log_uniform)
  with open(out, "rb") as f:
    assert (hashlib.sha256(f.read()).hexdigest()[:16], stats["bytes"]) == OLD_WRITE[log_uniform]
  assert stats["questions"] == 1 and stats["items"] == 40 == sum(stats["styles"].values())


def _check_document(doc: dict, items: list) -> None:
  text = doc["text"]
  endings = [i.ending() for i in items]
  tail = text[len(text) - sum(len(e) + 1 for e in endings):]
  assert sorted(tail.rstrip("\n").split("\n")) == sorted("\n".join(endings).split("\n"))
  body = text[:len(text) - len(tail)]
  for item in items:
    assert f"\n{item.query} {item.answer}{item.rest}\n" in "\n" + tail     # answer after query
    for line in item.facts + item.decoys:
      assert "\n" + line + "\n" in "\n" + body
    if item.ordered:
      pos = [body.index("\n" + f + "\n") if ("\n" + f + "\n") in body else body.index(f + "\n")
             for f in item.facts]
      assert pos == sorted(pos)
  keys = [_norm(k) for i in items for k in set(i.keys)]
  assert len(keys) == len(set(keys))
  families, numbers = doc["source"].split(":")[1:3]
  assert families.split("+") == [i.family for i in items]
  assert numbers.split("+") == [str(i.wording) for i in items]


def test_four_question_document():
  filler, sizes = _filler(), []
  orders = set()
  for seed in range(40):
    rng = np.random.default_rng(seed)
    items = synthetic.draw_items(rng, WORDS, 2000, 4)
    doc = synthetic.compose(rng, filler, items, 2000)
    assert doc == synthetic.document(np.random.default_rng(seed), filler, WORDS, 2000, 4)
    assert len(items) == 4 and all(i.wording != wordings.HELDOUT[i.family] for i in items)
    _check_document(doc, items)
    sizes.append(len(doc["text"]))
    tail = doc["text"].rstrip("\n").split("\n")
    orders.add(tuple(sorted(range(4), key=lambda k, t=tail, it=items:
                            t.index(it[k].ending().split("\n")[0]))))
  assert len(orders) > 1                                   # endings in random order
  assert 0.9 * 2000 < np.mean(sizes) < 1.1 * 2000          # still about n_chars long
  a = synthetic.document(np.random.default_rng(9), filler, WORDS, 1500, questions=4)
  assert a == synthetic.document(np.random.default_rng(9), filler, WORDS, 1500, questions=4)
  assert a != synthetic.document(np.random.default_rng(10), filler, WORDS, 1500, questions=4)


def test_items_that_do_not_fit_are_dropped():
  filler, rng = _filler(), np.random.default_rng(0)
  for n in (256, 400, 700, 1016):
    for _ in range(30):
      items = synthetic.draw_items(rng, WORDS, n, 4)
      doc = synthetic.compose(rng, filler, items, n)
      _check_document(doc, items)
      assert len(items) == 1 or n - synthetic.overhead(items) >= synthetic.MIN_FILLER
      if len(items) > 1:
        assert len(doc["text"]) < n + 200


def test_keys_cover_every_hidden_line():
  """What makes distinct keys enough: each fact and decoy line names one of the item's keys."""
  for family in wordings.FAMILIES:
    for w in range(len(wordings.WORDINGS[family])):
      for seed in range(20):
        item = wordings.make_item(np.random.default_rng(seed), WORDS, family, w)
        keys = {_norm(k) for k in item.keys}
        for line in item.facts + item.decoys:
          assert keys & set(re.findall(r"[a-z0-9_]+", _norm(line))), (family, w, line)


def test_write_counts_items_and_rejects_bad_questions(tmp_path):
  src = _corpus_jsonl(tmp_path / "train.jsonl")
  stats = synthetic.write(str(tmp_path / "s.jsonl"), filler_jsonl=src, n_docs=30,
                          min_chars=1500, max_chars=2048, seed=3, questions=3)
  assert stats["questions"] == 3 and stats["items"] == 90
  assert sum(stats["families"].values()) == sum(stats["wordings"].values()) == 90
  assert sum(stats["styles"].values()) == 30
  with pytest.raises(ValueError, match=r"^questions must be >= 1, got 0$"):
    synthetic.document(np.random.default_rng(0), _filler(), WORDS, 600, questions=0)
  with pytest.raises(ValueError, match=r"^questions must be >= 1, got 0$"):
    synthetic.write(str(tmp_path / "t.jsonl"), filler_jsonl=src, n_docs=1, min_chars=100,
                    max_chars=200, seed=0, questions=0)


def test_data_mismatch_is_one_line():
  args = argparse.Namespace(synthetic_fraction=0.1, synthetic_questions=4)
  assert data_mismatch({"synthetic_fraction": 0.1, "synthetic_questions": 4}, args) is None
  msg = data_mismatch({"synthetic_fraction": 0.1}, args)          # a mark from before the flag
  assert msg == ("stages/data.json was made with --synthetic_questions=1, this run asks for "
                 "--synthetic_questions=4; pass --force=data to remake the synthetic documents")
  msg = data_mismatch({"synthetic_fraction": 0.2, "synthetic_questions": 2}, args)
  assert "\n" not in msg and "--synthetic_fraction=0.2, --synthetic_questions=2" in msg
  assert "asks for --synthetic_fraction=0.1, --synthetic_questions=4;" in msg
