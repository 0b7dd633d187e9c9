"""The replication's synthetic wordings: many per family, deterministic, disjoint from the eval.

Disjoint means: no 4-word sequence (case-insensitive, punctuation stripped) of any synthetic
fact, decoy or question, in any wording with any slot value, occurs in the prompt templates of
the eval tasks (passkey, NIAH, the RULER NIAH variants, variable tracking). The eval templates
are the tasks' real prompts with the essay haystack replaced by a placeholder (the noise
haystack is kept: it is part of the passkey / VT prompts) over many seeds, so the needles,
questions and answer stubs with their slot values are all covered.
"""

import re

import numpy as np
import pytest

from longgen_jax.data.tokenizers import ByteTokenizer
from longgen_jax.eval import tasks as eval_tasks
from longgen_jax.eval.fit import TokenCounter
from longgen_jax.eval.registry import make_task
from longgen_jax.replication import synthetic, wordings

EVAL_TASKS = ("passkey", "niah", "niah_single", "niah_multikey", "niah_multivalue",
              "niah_multiquery", "vt")
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]


def ngrams(text: str, n: int = 4) -> set:
  words = re.sub(r"[^\w\s]|_", " ", text.lower()).split()
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@pytest.fixture(scope="module")
def eval_ngrams():
  placeholder = lambda rng: (lambda n: ["ESSAYHAYSTACK"] * n)  # noqa: E731
  orig, eval_tasks._essay_units = eval_tasks._essay_units, placeholder  # pylint: disable=protected-access
  try:
    counter, out = TokenCounter(ByteTokenizer()), set()
    for name in EVAL_TASKS:
      task = make_task(name)
      for seed in range(20):
        out |= ngrams(task.make(1024, np.random.default_rng(seed), counter, reserve=1).prompt)
  finally:
    eval_tasks._essay_units = orig  # pylint: disable=protected-access
  out |= ngrams(eval_tasks.Passkey.INTRO + " " + eval_tasks.Passkey.QUESTION)
  assert ("what", "is", "the", "pass") in out and ("one", "of", "the", "special") in out
  return out


def _item_texts(item: wordings.Item) -> list[str]:
  return list(item.facts) + list(item.decoys) + [item.ending()]


def test_wordings_share_no_4gram_with_eval_prompts(eval_ngrams):
  bad = {}
  for family, table in wordings.WORDINGS.items():
    for w in range(len(table)):
      texts = [" ".join(str(x) for x in table[w])]        # the bare templates, slots as words
      for seed in range(60):
        texts += _item_texts(wordings.make_item(np.random.default_rng(seed), WORDS, family, w))
      for code in wordings.CODES + wordings.THINGS:       # every slot-pool phrase in every wording
        if family in ("memo", "fact"):
          fact, question, after = table[w]
          slots = dict(n="Kalo", m="Vosa", c=code, t=code, v="4821", w="alpha bravo")
          texts += [fact.format(**slots), question.format(**slots) + " 4821" + after]
      for t in texts:
        shared = ngrams(t) & eval_ngrams
        if shared:
          bad[f"{family}:{w}"] = (t, sorted(shared)[:3])
  assert not bad, bad


def test_every_family_has_six_training_wordings_and_one_held_out():
  for family in wordings.FAMILIES:
    train, held = wordings.wordings(family, "train"), wordings.wordings(family, "heldout")
    assert len(train) >= 6 and len(held) == 1 and not set(train) & set(held), family
  texts = {" ".join(map(str, w)) for table in wordings.WORDINGS.values() for w in table}
  assert len(texts) == sum(len(t) for t in wordings.WORDINGS.values())    # all distinct


def test_items_are_deterministic_and_answerable():
  for family in wordings.FAMILIES:
    for w in range(len(wordings.WORDINGS[family])):
      a = wordings.make_item(np.random.default_rng(7), WORDS, family, w)
      assert a == wordings.make_item(np.random.default_rng(7), WORDS, family, w)
      assert a.answer and not a.query.endswith(" ") and a.ending().startswith(a.query + " ")
      facts = "\n".join(a.facts)
      if family == "chain" and a.answer[0].isalpha():     # "names" questions: every name is hidden
        assert all(n.strip(",") in facts for n in a.answer.split())
      else:
        assert a.answer in facts, (family, w, a)
      for d in a.decoys:                                  # a decoy never carries the answer's key
        assert d not in a.facts


def test_documents_use_only_training_wordings_and_every_filler_style(tmp_path):
  texts = ["\n".join(f"Line {i} of the filler text is here for the test number {j}."
                     for i in range(200)) for j in range(4)]
  filler = synthetic.Filler(texts)
  rng = np.random.default_rng(0)
  seen, styles = set(), set()
  for _ in range(400):
    doc = synthetic.document(rng, filler, WORDS, 600)
    _, family, w, style = doc["source"].split(":")
    seen.add((family, int(w)))
    styles.add(style)
    assert int(w) != wordings.HELDOUT[family]
  assert len(seen) == sum(len(wordings.wordings(f, "train")) for f in wordings.FAMILIES)
  assert styles == set(synthetic.STYLES)
  a = synthetic.document(np.random.default_rng(3), filler, WORDS, 600)
  assert a == synthetic.document(np.random.default_rng(3), filler, WORDS, 600)


def test_place_keeps_chain_order():
  rng = np.random.default_rng(1)
  item = wordings.make_item(rng, WORDS, "chain", 0)
  text, depth = synthetic.place(rng, [f"filler {i}" for i in range(50)], item)
  pos = [text.index(f + "\n") if f + "\n" in text else text.index(f) for f in item.facts]
  assert pos == sorted(pos) and 0 <= depth <= 1
