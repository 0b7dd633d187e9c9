"""Pipeline: batch contract, checkpoint/restore, per-process sharding, mixture, configs, errors."""

import json

import numpy as np
import pytest

from longgen_jax.data import (ByteTokenizer, DataError, build_eval_iterator, build_train_iterator,
                              default_data_config, iterator_checkpoint_args, iterator_restore_args,
                              normalize_data_config, restore_iterator, save_iterator, source_documents)
from longgen_jax.data.config import normalize_source

TOK = ByteTokenizer()


def _write_jsonl(path, texts):
  with open(path, "w") as f:
    for t in texts:
      f.write(json.dumps({"text": t}) + "\n")


@pytest.fixture(name="two_sources")
def _two_sources(tmp_path):
  rng = np.random.default_rng(0)
  words = ["river", "bread", "lamp", "map", "bee", "clock", "snow", "letter"]
  _write_jsonl(tmp_path / "a.jsonl", [f"A{i} " + " ".join(rng.choice(words, rng.integers(3, 80))) for i in range(60)])
  (tmp_path / "b.txt").write_text("|".join(f"B{i} " + "word " * int(rng.integers(1, 60)) for i in range(40)))
  return {"sources": [
      {"type": "jsonl", "path": str(tmp_path / "a.jsonl"), "weight": 3.0, "upsample": {"threshold": 100,
                                                                                        "keep_prob": 0.5}},
      {"type": "text", "path": str(tmp_path / "b.txt"), "separator": "|", "weight": 1.0}]}


def _equal(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_batch_contract(two_sources):
  it = build_train_iterator(two_sources, tokenizer=TOK, seq_len=48, batch_size=3, seed=1)
  batch = next(it)
  assert sorted(batch) == ["inputs", "loss_mask", "positions", "segment_ids", "targets"]
  for key, value in batch.items():
    assert isinstance(value, np.ndarray) and value.shape == (3, 48), key
    assert value.dtype == (np.float32 if key == "loss_mask" else np.int32), key
  assert batch["loss_mask"].sum() > 0 and batch["inputs"].max() < TOK.vocab_size


@pytest.mark.parametrize("packing", ["first_fit", "concat_then_split"])
def test_state_restore_gives_identical_next_batches(two_sources, packing):
  cfg = dict(two_sources, packing=packing)
  make = lambda: build_train_iterator(cfg, tokenizer=TOK, seq_len=40, batch_size=2, seed=5)
  it = make()
  for _ in range(7):  # several steps in: mid-epoch, mid-packing-round
    next(it)
  state = it.get_state()
  json.dumps(state)  # what grain's orbax handler stores
  expected = [next(it) for _ in range(6)]
  fresh = make()  # a new process restoring the checkpoint
  fresh.set_state(state)
  assert _equal([next(fresh) for _ in range(6)], expected)
  it.set_state(state)  # and the same iterator rewound
  assert _equal([next(it) for _ in range(6)], expected)
  other_seed = build_train_iterator(cfg, tokenizer=TOK, seq_len=40, batch_size=2, seed=6)
  assert not _equal([next(other_seed) for _ in range(6)], [next(make()) for _ in range(6)])


def test_orbax_and_json_iterator_checkpoints(two_sources, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  make = lambda: build_train_iterator(two_sources, tokenizer=TOK, seq_len=32, batch_size=2, seed=2)
  it = make()
  for _ in range(3):
    next(it)
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
    mngr.save(3, args=ocp.args.Composite(data_iter=iterator_checkpoint_args(it)))
    mngr.wait_until_finished()
  save_iterator(it, str(tmp_path / "json_state"))
  expected = [next(it) for _ in range(4)]
  fresh = make()
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
    restored = mngr.restore(3, args=ocp.args.Composite(data_iter=iterator_restore_args(fresh)))
  assert restored["data_iter"] is fresh
  assert _equal([next(fresh) for _ in range(4)], expected)
  again = restore_iterator(make(), str(tmp_path / "json_state"))
  assert _equal([next(again) for _ in range(4)], expected)
  with pytest.raises(DataError, match="not found"):
    restore_iterator(make(), str(tmp_path / "nowhere"))


def test_process_shards_are_disjoint_and_covering(tmp_path):
  _write_jsonl(tmp_path / "d.jsonl", [f"doc number {i}" for i in range(101)])
  src = normalize_source({"type": "jsonl", "path": str(tmp_path / "d.jsonl")}, "s", "s0")
  shards = []
  for p in range(3):
    docs = source_documents(src, tokenizer=TOK, add_bos=False, add_eos=False, process_index=p, process_count=3)
    shards.append({TOK.decode(docs[i]["tokens"]) for i in range(len(docs))})
  assert sum(len(s) for s in shards) == 101
  assert set.union(*shards) == {f"doc number {i}" for i in range(101)}
  # Through the full pipeline: each process sees only its own documents.
  cfg = {"sources": [{"type": "jsonl", "path": str(tmp_path / "d.jsonl")}], "num_epochs": 1}
  for p in range(3):
    seen = set()
    for b in build_train_iterator(cfg, tokenizer=TOK, seq_len=64, batch_size=1, process_index=p, process_count=3):
      seg = b["segment_ids"][0]
      seen |= {TOK.decode(b["inputs"][0][seg == s]) for s in range(1, seg.max() + 1)}
    assert seen == shards[p]


def test_mixture_weights(two_sources):
  cfg = dict(two_sources, mask_documents=True)
  it = build_train_iterator(cfg, tokenizer=TOK, seq_len=64, batch_size=4, seed=0)
  counts = {"A": 0, "B": 0}
  for _ in range(40):
    b = next(it)
    inp, pos = b["inputs"], b["positions"]
    starts = (pos[:, 1:] == 1) & (inp[:, :-1] == TOK.bos_id)  # the letter after BOS names the source
    for letter, n in zip(*np.unique(inp[:, 1:][starts], return_counts=True)):
      counts[chr(letter - 3)] += n
  frac_a = counts["A"] / (counts["A"] + counts["B"])
  assert 0.65 < frac_a < 0.85, counts  # documents drawn ~3:1


def test_default_config_train_and_eval_on_shipped_corpus():
  cfg = default_data_config()
  assert normalize_data_config(cfg)["sources"][0]["upsample"] == {"threshold": 1024, "keep_prob": 0.5}
  it = build_train_iterator(cfg, tokenizer=TOK, seq_len=256, batch_size=4, seed=0)
  batch = next(it)
  assert batch["inputs"].shape == (4, 256) and batch["loss_mask"].mean() > 0.9
  text = TOK.decode(batch["inputs"][0])
  assert sum(ch.isalpha() for ch in text) > 0.6 * len(text)
  batches = list(build_eval_iterator(cfg, tokenizer=TOK, seq_len=256, batch_size=8))
  assert 5 < len(batches) < 40
  assert all(b["inputs"].shape == (8, 256) for b in batches)
  assert batches[-1]["segment_ids"][-1].max() == 0 or len(batches[-1]["inputs"]) == 8  # padded last batch


def test_eval_fraction_split_is_finite_and_unshuffled(two_sources):
  cfg = dict(two_sources, eval_fraction=0.2)
  first = [b["inputs"] for b in build_eval_iterator(cfg, tokenizer=TOK, seq_len=64, batch_size=2)]
  second = [b["inputs"] for b in build_eval_iterator(cfg, tokenizer=TOK, seq_len=64, batch_size=2)]
  assert first and all(np.array_equal(a, b) for a, b in zip(first, second)) and len(first) == len(second)


def test_worker_process_matches_in_process_and_restores(two_sources):
  """One grain worker process gives the in-process batches, and its state restores."""
  local = build_train_iterator(two_sources, tokenizer=TOK, seq_len=32, batch_size=2, seed=0)
  expected = [next(local) for _ in range(5)]
  cfg = dict(two_sources, worker_count=1)
  it = build_train_iterator(cfg, tokenizer=TOK, seq_len=32, batch_size=2, seed=0)
  try:
    assert _equal([next(it) for _ in range(3)], expected[:3])
    state = it.get_state()
  finally:
    it.close()
  again = build_train_iterator(cfg, tokenizer=TOK, seq_len=32, batch_size=2, seed=0)
  try:
    again.set_state(state)
    assert _equal([next(again) for _ in range(2)], expected[3:])
  finally:
    again.close()


@pytest.mark.parametrize("change,message", [
    ({"shuffel": True}, r"unknown key\(s\) \['shuffel'\]"),
    ({"packing": "best_fit"}, "packing must be one of"),
    ({"sources": []}, "`sources` is empty"),
    ({"sources": [{"type": "text", "path": "x", "wieght": 2}]}, r"data.sources\[0\]: unknown key"),
    ({"sources": [{"type": "text", "path": "x", "weight": 0}]}, "weight must be a positive number"),
    ({"sources": [{"type": "text", "path": "x", "upsample": {"threshold": 10, "keep": 0.1}}]}, "upsample: unknown"),
    ({"sources": [{"type": "text", "path": "x", "upsample": {"threshold": 10, "keep_prob": 0}}]}, "keep_prob"),
    ({"sources": [{"type": "csv", "path": "x"}]}, "type must be one of"),
    ({"eval_fraction": 0.1}, "either eval_sources or eval_fraction"),
    ({"num_epochs": 0}, "num_epochs must be None or an int"),
])
def test_config_errors(change, message):
  cfg = default_data_config().to_dict()
  cfg.update(change)
  with pytest.raises(DataError, match=message):
    normalize_data_config(cfg)


def test_pipeline_errors(tmp_path, two_sources):
  with pytest.raises(DataError, match="no eval data"):
    build_eval_iterator(two_sources, tokenizer=TOK, seq_len=8, batch_size=1)
  with pytest.raises(DataError, match="matches no files"):
    build_train_iterator({"sources": [{"type": "text", "path": str(tmp_path / "none*.txt")}]}, tokenizer=TOK,
                         seq_len=8, batch_size=1)
  with pytest.raises(DataError, match="fewer than process_count"):
    build_train_iterator(two_sources, tokenizer=TOK, seq_len=8, batch_size=1, process_index=0, process_count=50)
  with pytest.raises(DataError, match="process_index 2 not in"):
    build_train_iterator(two_sources, tokenizer=TOK, seq_len=8, batch_size=1, process_index=2, process_count=2)
  with pytest.raises(DataError, match="seq_len must be"):
    build_train_iterator(two_sources, tokenizer=TOK, seq_len=0, batch_size=1)
  (tmp_path / "blank.txt").write_text("\n\n")
  with pytest.raises(DataError, match="no documents left"):
    build_train_iterator({"sources": [{"type": "text", "path": str(tmp_path / "blank.txt")}]}, tokenizer=TOK,
                         seq_len=8, batch_size=1)


def test_sources_as_a_named_mapping_in_a_frozen_configdict(tmp_path):
  import ml_collections  # pylint: disable=import-outside-toplevel
  _write_jsonl(tmp_path / "d.jsonl", [f"doc {i}" for i in range(10)])
  cfg = ml_collections.ConfigDict({"sources": {"web": {"type": "jsonl", "path": str(tmp_path / "d.jsonl"),
                                                       "upsample": {"threshold": 5, "keep_prob": 0.5}}}})
  norm = normalize_data_config(ml_collections.FrozenConfigDict(cfg))
  assert norm["sources"][0]["name"] == "web" and norm["sources"][0]["upsample"]["keep_prob"] == 0.5
  assert next(build_train_iterator(cfg, tokenizer=TOK, seq_len=16, batch_size=2))["inputs"].shape == (2, 16)
