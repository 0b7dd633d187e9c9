"""Eval task generators and scorers: lengths fit, a perfect oracle scores 100, a random one
scores near chance, bad requests fail clearly."""

import numpy as np
import pytest

from longgen_jax.data.tokenizers import ByteTokenizer
from longgen_jax.eval import corpus, longtext, scoring
from longgen_jax.eval.errors import EvalError
from longgen_jax.eval.fit import fit_units
from longgen_jax.eval.registry import (GENERATION, RULER, make_task, parse_lengths,
                                       resolve_tasks)
from longgen_jax.eval.runner import (build_samples, encode, position_edges, run_generation,
                                     run_perplexity, summarize)

TOK = ByteTokenizer()
LENGTHS = (2048, 4096)


@pytest.fixture(scope="module")
def samples():
  return {name: build_samples(name, LENGTHS, samples=6, depths=[0.0, 0.5, 1.0], seed=0,
                              tokenizer=TOK, add_bos=True) for name in GENERATION}


def random_guess(sample, rng):
  """An uninformed guesser of the right format: picks from the answer pool when there is one,
  else random numbers of the same shape."""
  k = len(sample.answers)
  if sample.choices:
    return ", ".join(rng.choice(sample.choices, size=k, replace=False))
  return " ".join(str(rng.integers(10 ** (len(a) - 1), 10 ** len(a))) for a in sample.answers)


def chance(sample):
  """Expected score of ``random_guess`` (0 for open-ended numeric answers)."""
  if not sample.choices:
    return 0.0
  if sample.task == "niah":
    return 100.0 / len(sample.choices)
  return 100.0 * len(sample.answers) / len(sample.choices)


@pytest.mark.parametrize("name", list(GENERATION))
def test_prompts_fit_their_length(name, samples):
  for s in samples[name]:
    n = len(encode(TOK, s.prompt, True))
    assert n + s.max_new_tokens <= s.length
    assert n + s.max_new_tokens > 0.8 * s.length, (n, s.max_new_tokens, s.length)
    for a in s.answers:                          # the reference is in the prompt (or derivable)
      assert name in ("vt",) or str(a).split()[0] in s.prompt


@pytest.mark.parametrize("name", list(GENERATION))
def test_oracle_scores_100_and_random_scores_near_chance(name, samples):
  task = make_task(name)
  rng = np.random.default_rng(1)
  oracle = [task.score(" " + ", ".join(s.answers) + ".", s) for s in samples[name]]
  assert oracle == [100.0] * len(oracle)
  rand = [task.score(random_guess(s, rng), s) for s in samples[name]]
  expect = np.mean([chance(s) for s in samples[name]])
  assert abs(np.mean(rand) - expect) <= 15.0, (np.mean(rand), expect)


def test_depth_grid_places_the_needle_where_asked(samples):
  """Needle offset within the haystack (not the instructions) ~ the requested depth."""
  for name, needle, lo, hi in (("niah", "The best thing to do in", "<book> ", " </book>"),
                               ("passkey", "The pass key is", "there.\n", "\nWhat is the")):
    for s in samples[name]:
      start, end = s.prompt.find(lo) + len(lo), s.prompt.rfind(hi)
      at = (s.prompt.find(needle) - start) / (end - start)
      assert abs(at - s.depth) < 0.06, (name, at, s.depth)


def test_samples_are_reproducible_and_vary():
  a = build_samples("niah_multikey", [2048], samples=3, depths=[], seed=5, tokenizer=TOK,
                    add_bos=False)
  b = build_samples("niah_multikey", [2048], samples=3, depths=[], seed=5, tokenizer=TOK,
                    add_bos=False)
  assert [s.prompt for s in a] == [s.prompt for s in b]
  assert len({s.answers[0] for s in a}) == 3


def test_scorers():
  assert scoring.first_int_match("it is 12345, yes", "12345") == 100.0
  assert scoring.first_int_match("it is 123456", "12345") == 0.0
  assert scoring.string_match_all("Blue-Fox 77; red", ["blue-fox", "red", "green"]) == \
      pytest.approx(200 / 3)
  assert scoring.string_match_all("velmorask", ["velmo"]) == 0.0          # whole words only
  assert scoring.keyword_recall("They eat a plum tart by the harbour wall",
                                "eat a plum tart and sit on the harbour wall") == \
      pytest.approx(500 / 6)


def test_too_short_a_length_and_unknown_tasks_fail_clearly():
  with pytest.raises(EvalError, match="niah_single at length 300"):
    build_samples("niah_single", [300], samples=1, depths=[], seed=0, tokenizer=TOK,
                  add_bos=True)
  with pytest.raises(EvalError, match="unknown task 'bogus'"):
    resolve_tasks("passkey,bogus")
  assert resolve_tasks("ruler,passkey") == list(RULER) + ["passkey"]
  with pytest.raises(EvalError, match="bad length"):
    parse_lengths("4k,eight")


def test_lengths_parse_with_ellipsis():
  assert parse_lengths("4k,8k,...,128k") == [4096 * 2 ** i for i in range(6)]
  assert parse_lengths("1000, 2k") == [1000, 2048]


def test_fit_units_finds_the_largest_fitting_count():
  build = lambda n: "ab " * n
  for guess in (None, 3, 500, 10_000):
    n, text = fit_units(build, 300, len, guess=guess)
    assert n == 100 and len(text) == 300
  with pytest.raises(EvalError, match="exceeds the budget"):
    fit_units(lambda n: "x" * (50 + n), 10, len)


def test_shipped_texts_and_generators():
  assert len(corpus.essays()) >= 12 and len(corpus.essay_sentences()) > 250
  w = corpus.word_lists()
  assert len(w["adjectives"]) > 100 and len(w["nouns"]) > 150 and len(w["activities"]) == 10
  words = corpus.nonce_words(np.random.default_rng(0), 5000)
  assert len(set(words)) == 5000
  text = longtext.chronicle(0, 20_000)
  assert len(text) >= 20_000 and text == longtext.chronicle(0, 20_000)
  assert "remembered day" in text or "still the talk" in text or "looking for" in text


def test_summary_and_position_buckets():
  recs = [{"length": 4096, "depth": d, "score": s} for d, s in ((0.0, 100), (0.5, 0), (0.5, 100))]
  out = summarize("niah", recs)
  assert out["by_length"] == {"4096": pytest.approx(200 / 3)}
  assert out["grid"]["4096"] == {"0.0": 100.0, "0.5": 50.0}
  assert position_edges(1000, [300]) == [0, 64, 128, 256, 300, 512, 1000]


class FakeEngine:
  """Stands in for the serving engine: answers like an oracle (or uniformly, for scoring)."""

  def __init__(self, answers=None, vocab=None):
    self.answers, self.vocab = answers or {}, vocab

  def generate(self, ids, max_new_tokens, stop_tokens=()):
    class Result:  # pylint: disable=too-few-public-methods
      tokens = [TOK.encode(" " + ", ".join(self.answers[tuple(r)]))[:max_new_tokens]
                for r in ids]
    return Result()

  def score(self, ids):
    lp = 0.0 if self.vocab is None else -np.log(self.vocab)
    return np.full(len(ids) - 1, lp, np.float32)


def test_runner_with_an_oracle_engine_scores_100():
  for name in ("passkey", "niah", "cwe"):
    kw = dict(samples=2, depths=[0.0, 1.0], seed=3)
    todo = build_samples(name, [2048], tokenizer=TOK, add_bos=True, **kw)
    answers = {tuple(encode(TOK, s.prompt, True)): s.answers for s in todo}
    res = run_generation(FakeEngine(answers), TOK, True, name, [2048], quiet=True, **kw)
    assert res["by_length"] == {"2048": 100.0} and len(res["samples"]) == len(todo)


def test_perplexity_runner_on_known_log_probs():
  res = run_perplexity(FakeEngine(vocab=259), TOK, True, [1000, 300], quiet=True)
  assert res["ppl"] == pytest.approx(259, rel=1e-5)
  assert [b["hi"] for b in res["buckets"]][-1] == 1000
  res = run_perplexity(FakeEngine(), TOK, True, [512], quiet=True)
  assert res["ppl"] == pytest.approx(1.0) and res["ppl_at_length"]["512"] == pytest.approx(1.0)
