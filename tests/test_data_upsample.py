"""Length upsampling: keep rate ~ p for short docs, long docs always kept, deterministic; eval split."""

import json
import math

import pytest

from longgen_jax.data import ByteTokenizer, keep_document, source_documents
from longgen_jax.data.config import normalize_source
from longgen_jax.data.upsample import is_eval_document, name_salt


def _within_binomial(kept: int, n: int, p: float, sigmas: float = 5.0) -> bool:
  return abs(kept - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_and_long_docs(p):
  n = 20000
  kept = sum(keep_document(100, i, threshold=4096, keep_prob=p, seed=0, salt=7) for i in range(n))
  assert _within_binomial(kept, n, p), (kept, n * p)
  assert all(keep_document(4096 + i, i, threshold=4096, keep_prob=p, seed=0, salt=7) for i in range(2000))
  assert all(keep_document(10, i, threshold=None, keep_prob=p, seed=0, salt=7) for i in range(100))


def test_keep_is_a_pure_function_of_seed_salt_index():
  decide = lambda i, seed=0, salt=7: keep_document(5, i, threshold=10, keep_prob=0.3, seed=seed, salt=salt)
  forward = [decide(i) for i in range(500)]
  backward = [decide(i) for i in reversed(range(500))][::-1]
  assert forward == backward  # order-independent, hence resumable
  assert forward != [decide(i, seed=1) for i in range(500)]
  assert forward != [decide(i, salt=8) for i in range(500)]


def test_per_source_upsampling_through_source_documents(tmp_path):
  """Short (< threshold tokens) docs kept at ~p, long ones all kept, with the byte tokenizer."""
  n_short, n_long, threshold, p = 1500, 300, 64, 0.2
  with open(tmp_path / "docs.jsonl", "w") as f:
    for i in range(n_short + n_long):
      text = f"short {i}" if i % 6 else "long document " * 10 + str(i)  # every 6th doc is long
      f.write(json.dumps({"text": text}) + "\n")
  src = normalize_source({"type": "jsonl", "path": str(tmp_path / "docs.jsonl"),
                          "upsample": {"threshold": threshold, "keep_prob": p}}, "s", "web")
  docs = source_documents(src, tokenizer=ByteTokenizer(), add_bos=False, add_eos=False)
  kept = [docs[i] for i in range(len(docs))]
  long_kept = sum(d is not None for i, d in enumerate(kept) if i % 6 == 0)
  short_kept = sum(d is not None for i, d in enumerate(kept) if i % 6)
  assert long_kept == n_long
  assert _within_binomial(short_kept, n_short, p), (short_kept, n_short * p)
  # Another source name (salt) keeps a different subset at the same rate.
  other = source_documents(dict(src, name="books"), tokenizer=ByteTokenizer(), add_bos=False, add_eos=False)
  assert [other[i] is None for i in range(len(other))] != [d is None for d in kept]


def test_eval_split_is_disjoint_and_covering(tmp_path):
  (tmp_path / "d.txt").write_text("|".join(f"doc {i}" for i in range(2000)))
  src = normalize_source({"type": "text", "path": str(tmp_path / "d.txt"), "separator": "|"}, "s", "s0")
  kw = dict(tokenizer=ByteTokenizer(), eval_fraction=0.1, add_bos=False, add_eos=False)
  train = source_documents(src, split="train", **kw)
  held = source_documents(src, split="eval", **kw)
  in_train = [train[i] is not None for i in range(2000)]
  in_eval = [held[i] is not None for i in range(2000)]
  assert all(a != b for a, b in zip(in_train, in_eval))
  assert _within_binomial(sum(in_eval), 2000, 0.1)
  assert in_eval == [is_eval_document(i, eval_fraction=0.1, salt=name_salt("s0")) for i in range(2000)]
