"""The replication's retrieval probe: exact scoring, prompts that fill the length, the wording
split, and the batched run through the eval runner (with a scripted engine: no model)."""

import dataclasses
import itertools

import numpy as np
import pytest

from longgen_jax.data.tokenizers import ByteTokenizer
from longgen_jax.eval import runner
from longgen_jax.eval.fit import TokenCounter
from longgen_jax.replication import probe, synthetic, wordings

_WORDS = ["".join(x) for x in itertools.product(("ka", "lom", "mir", "dus", "pel"), repeat=3)]
_RNG = np.random.default_rng(0)
TEXTS = ["\n".join(" ".join(_RNG.choice(_WORDS, size=8)).capitalize() + "." for _ in range(400))
         for _ in range(6)]


@pytest.mark.parametrize("prediction,answer,score", [
    (" 4821.", "4821", 100), ("4821", "4821", 100), ("\n4821 |", "4821", 100),
    (" 4821\nlookup x", "4821", 100), (" 48210", "4821", 0), (" 482", "4821", 0),
    (" x 4821", "4821", 0), (" KP257);", "KP257", 100), (" kp257", "KP257", 0),
    (" red fox.", "red fox", 100), (" red fox jumps", "red fox", 0), (" red foxes", "red fox", 0),
    (" a, b, c.", "a, b, c", 100), (" a, b, c, d", "a, b, c", 0), ("", "4821", 0),
    (" 4821_2", "4821", 0), (" 4821\tz", "4821", 0),
])
def test_score_answer(prediction, answer, score):
  assert probe.score_answer(prediction, answer) == score


@pytest.fixture(scope="module")
def filler():
  return synthetic.Filler(TEXTS), synthetic.vocabulary(TEXTS)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_probe_prompts_fill_the_length_in_their_split(filler, split):
  task = probe.ProbeTask(*filler, split=split)
  counter = TokenCounter(ByteTokenizer())
  for i in range(30):
    s = task.make(1024, np.random.default_rng(i), counter, reserve=1)
    assert counter.count(s.prompt) == 1024 - 1 - s.max_new_tokens and s.max_new_tokens == 64
    fam, w = s.meta["family"], s.meta["wording"]
    assert w in wordings.wordings(fam, split)
    assert 0 <= s.depth <= 1 and s.meta["style"] in synthetic.STYLES
    q = s.prompt[s.prompt.rindex("\n", 0, len(s.prompt) - 1) + 1:]
    assert s.prompt.endswith(q) and not s.prompt.endswith(" ")
    if fam != "chain" or not s.answers[0][0].isalpha():
      assert s.answers[0] in s.prompt[:-len(q)]        # the answer is hidden in the text


def test_probe_rejects_a_length_too_short(filler):
  from longgen_jax.eval.errors import EvalError
  with pytest.raises(EvalError, match="probe at length 64"):
    probe.ProbeTask(*filler).make(64, np.random.default_rng(0), TokenCounter(ByteTokenizer()))


@dataclasses.dataclass
class _Result:
  tokens: list


class _ScriptedEngine:
  """Answers right for the prompts in ``answers`` (by prompt ids), else says nothing useful."""

  def __init__(self, tok, answers):
    self.tok, self.answers, self.calls = tok, answers, []

  def generate(self, ids, max_new_tokens, stop_tokens=()):
    self.calls.append((len(ids), max_new_tokens))
    out = []
    for row in ids:
      text = " " + self.answers[tuple(row)] + "." if tuple(row) in self.answers else " no idea"
      out.append(self.tok.encode(text)[:max_new_tokens])
    return _Result(out)


def test_probe_runs_batched_through_the_eval_runner(filler):
  tok = ByteTokenizer()
  texts = TEXTS
  lengths = [512, 1024]
  # the samples the run will build (same seed stream), half of them answered right
  want = {}
  for name, split in probe.TASKS.items():
    samples = runner.build_samples(name, lengths, samples=4, depths=[], seed=1000, tokenizer=tok,
                                   add_bos=True, task=probe.ProbeTask(*filler, split, name))
    for i, s in enumerate(samples):
      if i % 2 == 0:
        want[tuple(runner.encode(tok, s.prompt, True))] = s.answers[0]
  engine = _ScriptedEngine(tok, want)
  res = probe.run(engine, tok, texts, lengths, samples=4, seed=1000)
  assert set(res) == {"probe", "probe_unseen"}
  assert engine.calls == [(4, 64)] * 4                # one batch per task and length
  for name, r in res.items():
    assert r["by_length"] == {"512": 50.0, "1024": 50.0}
    assert all(rec["meta"]["family"] in wordings.FAMILIES for rec in r["samples"])
    fams = probe.by_family(r)
    assert set(fams) == {"512", "1024"}
    held = [rec["meta"]["wording"] == wordings.HELDOUT[rec["meta"]["family"]]
            for rec in r["samples"]]
    assert all(held) if name == "probe_unseen" else not any(held)
