"""Packing: no attention or target crosses a document; positions restart; long docs are split, not dropped."""

import collections

import grain
import numpy as np
import pytest

from longgen_jax.data import ByteTokenizer, build_train_iterator
from longgen_jax.data.packing import ChunkDocuments, FormatRow, pack

SEQ = 32


def _docs(seed=0, n=40):
  """Doc d holds tokens 1000*d + 10 + k: the doc and the offset can be read back from any token."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, 3 * (SEQ + 1), size=n)  # many longer than a row
  lengths[:3] = [SEQ + 1, SEQ + 2, 2 * SEQ + 1]  # exact boundaries of the chunking
  return [(1000 * d + 10 + np.arange(L)).astype(np.int32) for d, L in enumerate(lengths)]


def _rows(docs, packing, mask_documents=True):
  ds = grain.MapDataset.source(docs).map(lambda t: {"tokens": t}).to_iter_dataset()
  ds = pack(ds, seq_len=SEQ, packing=packing, num_bins=4, seed=0, shuffle_bins=True)
  return list(ds.map(FormatRow(mask_documents=mask_documents, pad_id=0)))


def _doc(t):
  return t // 1000


@pytest.mark.parametrize("packing", ["first_fit", "concat_then_split"])
def test_segments_positions_and_targets_stay_inside_documents(packing):
  rows = _rows(_docs(), packing)
  assert rows
  for r in rows:
    assert all(r[k].shape == (SEQ,) for k in r)
    inp, tgt, pos, seg, mask = r["inputs"], r["targets"], r["positions"], r["segment_ids"], r["loss_mask"]
    real = seg > 0
    assert not np.any(real[np.argmin(real):]) or real.all()  # padding only at the end of a row
    ids = seg[real]
    assert ids[0] == 1 and np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)  # 1..n in order
    for s in range(1, ids.max() + 1):
      piece = inp[seg == s]
      assert len(set(_doc(piece))) == 1, "one segment holds tokens of two documents"
      assert np.all(np.diff(piece) == 1), "a segment is not a contiguous slice of its document"
      np.testing.assert_array_equal(pos[seg == s], np.arange(len(piece)))  # positions restart at 0
    for s in range(1, ids.max()):  # neighbouring segments hold different documents or pieces
      assert _doc(inp[seg == s][-1]) != _doc(inp[seg == s + 1][0]) or inp[seg == s + 1][0] > inp[seg == s][-1]
    on = mask > 0
    np.testing.assert_array_equal(tgt[on], inp[on] + 1)  # next token of the same document
    assert np.all(tgt[~on] == 0) and np.all(mask[~real] == 0)
    # The last input of each segment has loss 0 unless its next token is still in the row's segment.
    for s in range(1, ids.max() + 1):
      last = np.nonzero(seg == s)[0][-1]
      assert mask[last] == (last == SEQ - 1 and tgt[last] != 0)


def test_first_fit_splits_long_documents_and_keeps_every_target():
  docs = _docs(seed=1)
  rows = _rows(docs, "first_fit")
  got = collections.Counter(int(t) for r in rows for t in r["targets"][r["loss_mask"] > 0])
  want = collections.Counter(int(t) for d in docs for t in d[1:])  # every token but the first is a target once
  assert got == want


def test_chunking_overlaps_by_one_token():
  chunks = ChunkDocuments(4).flat_map({"tokens": np.arange(11)})
  assert [c["tokens"].tolist() for c in chunks] == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10]]
  assert len(ChunkDocuments(4).flat_map({"tokens": np.arange(5)})) == 1
  assert len(ChunkDocuments(4).flat_map({"tokens": np.arange(9)})) == 2


def test_concat_then_split_drops_nothing_but_row_cuts():
  docs = _docs(seed=2)
  rows = _rows(docs, "concat_then_split")
  seen = set()
  for r in rows:
    seen.update(int(t) for t in r["inputs"][r["segment_ids"] > 0])
    seen.update(int(t) for t in r["targets"][r["loss_mask"] > 0])
  missing = {int(t) for d in docs for t in d} - seen
  assert len(missing) <= len(rows)  # at most the token at each row cut


def test_mask_documents_false_gives_one_segment_per_row():
  rows = _rows(_docs(seed=3), "first_fit", mask_documents=False)
  crossed = 0
  for r in rows:
    real = r["segment_ids"] > 0
    n = int(real.sum())
    assert set(r["segment_ids"][real]) == {1}
    np.testing.assert_array_equal(r["positions"][:n], np.arange(n))
    np.testing.assert_array_equal(r["loss_mask"][:n - 1], 1)  # targets run across documents
    crossed += int(np.sum(_doc(r["targets"][r["loss_mask"] > 0]) != _doc(r["inputs"][r["loss_mask"] > 0])))
  assert crossed > 0


@pytest.mark.parametrize("add_bos,add_eos", [(True, True), (False, False), (True, False)])
def test_bos_eos_insertion_and_eos_loss_mask(tmp_path, add_bos, add_eos):
  tok = ByteTokenizer()
  texts = ["alpha beta", "gamma", "delta epsilon zeta", "eta"]
  (tmp_path / "d.txt").write_text("|".join(texts))
  cfg = {"sources": [{"type": "text", "path": str(tmp_path / "d.txt"), "separator": "|"}], "num_epochs": 1,
         "shuffle": False, "add_bos": add_bos, "add_eos": add_eos}
  segments = []
  for b in build_train_iterator(cfg, tokenizer=tok, seq_len=64, batch_size=1):
    inp, tgt, seg, mask = b["inputs"][0], b["targets"][0], b["segment_ids"][0], b["loss_mask"][0]
    for s in range(1, seg.max() + 1):
      idx = np.nonzero(seg == s)[0]
      segments.append(inp[idx].tolist())
      assert mask[idx[-1]] == 0  # last token of the document: its target is the next document
      if add_eos:
        assert inp[idx[-1]] == tok.eos_id and tgt[idx[-2]] == tok.eos_id and mask[idx[-2]] == 1
  assert sorted(tok.decode(s) for s in segments) == sorted(texts)
  assert all((s[0] == tok.bos_id) == add_bos for s in segments)
  assert all((s[-1] == tok.eos_id) == add_eos for s in segments)
