"""Generation tasks: passkey retrieval, needle in a haystack, RULER-style synthetic tasks.

Every task turns ``(length, rng, counter, depth)`` into a ``Sample``: a prompt that, tokenized
with the model's tokenizer, fills ``length`` tokens minus the tokens reserved for the answer
(RULER's convention: ``tokens(prompt) + max_new_tokens <= length``), the reference answers and
its scorer. Templates follow the originals (notes: ``serving_peers.md`` §8) with offline
material: the shipped essays and word lists, generated nonce / coded words.

  passkey          Landmark-attention passkey: a 5-digit key in the "grass is green" noise;
                   score: the first integer of the answer is the key.
  niah             Needle in a haystack over essays ("The best thing to do in <town> is
                   <activity>."), for a length x depth grid; score: keyword recall of the
                   activity (offline stand-in for ROUGE-1 x 100).
  niah_single      RULER single_1: one "special magic number" (7 digits) for an adjective-noun
                   key in the noise haystack.
  niah_multikey    RULER multikey_1: 4 keys in the essay haystack, one asked.
  niah_multivalue  RULER multivalue: 4 values for one key, all asked.
  niah_multiquery  RULER multiquery: 4 keys, all asked.
  vt               variable tracking: two chains of 4 hops (``VAR X = VAR Y``) in the noise
                   haystack; the variables holding one chain's value are asked. (RULER's default
                   has one chain, in which case every variable of the text is an answer.)
  cwe              common words extraction: a numbered list; 10 words appear 30x (6x / 2x when
                   the length is short for the tokenizer), the others 3x (1x); the 10 are asked.
  fwe              frequent words extraction: coded words with Zipf(2) counts; the top word is
                   "..." (noise) and ranks 2-4 are asked.

RULER scores with ``string_match_all`` (``scoring.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from longgen_jax.eval import corpus, scoring
from longgen_jax.eval.errors import EvalError
from longgen_jax.eval.fit import TokenCounter, fit_units


@dataclasses.dataclass
class Sample:
  """One prompt with its references."""

  task: str
  length: int
  prompt: str
  answers: list
  max_new_tokens: int
  depth: float | None = None
  choices: list | None = None      # the pool the answers were drawn from (None: open-ended)
  n_units: int = 0
  meta: dict | None = None          # task-specific labels, copied into the result records


def _gen_tokens(counter: TokenCounter, default: int, answers) -> int:
  """RULER's tokens_to_generate, widened when the answers themselves need more tokens (a byte
  tokenizer spends one token per character)."""
  need = counter.count(" " + ", ".join(str(a) for a in answers)) + 8
  return max(default, need)


def _place(units: list[str], inserts: list[tuple[float, str]]) -> list[str]:
  """Inserts ``(depth in [0, 1], text)`` items at the unit boundary closest to that fraction of
  the haystack's characters (a sentence break, as gkamradt's NIAH walks back to a period)."""
  ends = np.cumsum([len(u) + 1 for u in units])
  total = ends[-1] if len(units) else 0
  where = []
  for depth, text in inserts:
    cut = int(np.searchsorted(ends, depth * total, side="left"))
    # boundary i = before unit i; pick the nearer of the boundaries around the target
    if cut < len(units) and depth * total - (ends[cut - 1] if cut else 0) > ends[cut] - depth * total:
      cut += 1
    where.append((cut, text))
  out = list(units)
  for cut, text in sorted(where, key=lambda x: x[0], reverse=True):
    out.insert(cut, text)
  return out


def _essay_units(rng: np.random.Generator) -> Callable[[int], list[str]]:
  sents = corpus.essay_sentences()
  start = int(rng.integers(len(sents)))
  return lambda n: [sents[(start + i) % len(sents)] for i in range(n)]


def _noise_units(n: int) -> list[str]:
  return [corpus.NOISE] * n


def _fit(task: str, length: int, reserve: int, counter: TokenCounter, answers, default_gen: int,
         build: Callable[[int], str], guess: int | None = None, max_units: int | None = None):
  gen = _gen_tokens(counter, default_gen, answers)
  budget = length - gen - reserve
  if budget < 16:
    raise EvalError(f"{task}: length {length} leaves {budget} tokens for the prompt (answer "
                    f"{gen}, reserved {reserve}); use a longer length")
  try:
    n, text = fit_units(build, budget, counter.count, guess=guess, max_units=max_units)
  except EvalError as e:
    raise EvalError(f"{task} at length {length}: {e}") from None
  return gen, n, text


class Task:
  """Base class: ``make`` builds a sample, ``score`` grades a prediction (0-100)."""

  name = ""
  default_gen = 32
  uses_depth = False

  def __init__(self):
    self._guess: dict[int, int] = {}

  def make(self, length: int, rng: np.random.Generator, counter: TokenCounter,
           depth: float | None = None, reserve: int = 0) -> Sample:
    raise NotImplementedError

  def score(self, prediction: str, sample: Sample) -> float:
    return scoring.string_match_all(prediction, sample.answers)

  def _fit(self, length, reserve, counter, answers, build, max_units=None):
    gen, n, text = _fit(self.name, length, reserve, counter, answers, self.default_gen, build,
                        self._guess.get(length), max_units)
    self._guess[length] = n
    return gen, n, text


# ----------------------------------------------------------------------------- passkey
class Passkey(Task):
  name = "passkey"
  default_gen = 12
  uses_depth = True
  INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
           "memorize them. I will quiz you about the important information there.")
  QUESTION = "What is the pass key? The pass key is"

  def make(self, length, rng, counter, depth=None, reserve=0):
    key = str(int(rng.integers(10000, 100000)))
    depth = float(rng.uniform()) if depth is None else float(depth)
    info = f"The pass key is {key}. Remember it. {key} is the pass key."

    def build(n):
      pre = int(round(depth * n))
      return "\n".join([self.INTRO, " ".join(_noise_units(pre)), info,
                        " ".join(_noise_units(n - pre)), self.QUESTION])

    gen, n, text = self._fit(length, reserve, counter, [key], build)
    return Sample(self.name, length, text, [key], gen, depth, None, n)

  def score(self, prediction, sample):
    return scoring.first_int_match(prediction, sample.answers[0])


# ----------------------------------------------------------------------------- NIAH
class Niah(Task):
  name = "niah"
  default_gen = 32
  uses_depth = True

  def make(self, length, rng, counter, depth=None, reserve=0):
    w = corpus.word_lists()
    town = str(rng.choice(w["towns"]))
    activity = str(rng.choice(w["activities"]))
    depth = float(rng.uniform()) if depth is None else float(depth)
    needle = f"The best thing to do in {town} is {activity}."
    head = "This is a very long story book: <book> "
    tail = (f" </book>.\nBased on the content of the book, Question: What is the best thing to "
            f"do in {town}?\nAnswer: The best thing to do in {town} is")
    units = _essay_units(rng)

    def build(n):
      return head + " ".join(_place(units(n), [(depth, needle)])) + tail

    gen, n, text = self._fit(length, reserve, counter, [activity], build)
    return Sample(self.name, length, text, [activity], gen, depth, list(w["activities"]), n)

  def score(self, prediction, sample):
    return scoring.keyword_recall(prediction, sample.answers[0])


# ----------------------------------------------------------------------------- RULER NIAH
class RulerNiah(Task):
  """RULER NIAH: ``variant`` in single / multikey / multivalue / multiquery."""

  default_gen = 128
  CONFIG = {  # haystack, number of keys, values per key, keys asked
      "single": ("noise", 1, 1, 1),
      "multikey": ("essay", 4, 1, 1),
      "multivalue": ("essay", 1, 4, 1),
      "multiquery": ("essay", 4, 1, 4),
  }

  def __init__(self, variant: str):
    super().__init__()
    if variant not in self.CONFIG:
      raise EvalError(f"unknown RULER NIAH variant {variant!r}")
    self.variant = variant
    self.name = f"niah_{variant}"

  def make(self, length, rng, counter, depth=None, reserve=0):
    hay, n_keys, n_vals, n_query = self.CONFIG[self.variant]
    keys = corpus.distinct_word_pairs(rng, n_keys)
    values = [[str(int(rng.integers(1_000_000, 10_000_000))) for _ in range(n_vals)]
              for _ in keys]
    needles = [f"One of the special magic numbers for {k} is: {v}."
               for k, vs in zip(keys, values) for v in vs]
    grid = np.linspace(0, 1, 40)
    depths = list(rng.choice(grid, size=len(needles), replace=False))
    if depth is not None:
      depths[0] = float(depth)
    inserts = [(float(d), nd) for d, nd in zip(depths, needles)]   # needles[0]: the asked one
    asked = list(range(n_query))
    query = keys[0] if n_query == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]
    answers = [v for i in asked for v in values[i]]
    one = len(answers) == 1
    kind = "number" if one else "numbers"
    head = ("Some special magic numbers are hidden within the following text. Make sure to "
            "memorize it. I will quiz you about the numbers afterwards.\n")
    question = (f"\nWhat {'is the special magic number' if one else 'are all the special magic numbers'}"
                f" for {query} mentioned in the provided text? The special magic {kind} for "
                f"{query} mentioned in the provided text {'is' if one else 'are'}")
    units = _essay_units(rng) if hay == "essay" else _noise_units
    sep = " " if hay == "essay" else "\n"

    def build(n):
      return head + sep.join(_place(units(n), inserts)) + question

    gen, n, text = self._fit(length, reserve, counter, answers, build)
    return Sample(self.name, length, text, answers, gen, depths[0], None, n)


# ----------------------------------------------------------------------------- variable tracking
class VariableTracking(Task):
  name = "vt"
  default_gen = 30
  HOPS = 4
  CHAINS = 2

  def make(self, length, rng, counter, depth=None, reserve=0):
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    names: list[str] = []
    while len(names) < self.CHAINS * (self.HOPS + 1):
      nm = "".join(rng.choice(letters, size=5))
      if nm not in names:
        names.append(nm)
    values = [str(v) for v in rng.choice(np.arange(10000, 100000), self.CHAINS, replace=False)]
    inserts = []
    for c in range(self.CHAINS):
      chain = names[c * (self.HOPS + 1):(c + 1) * (self.HOPS + 1)]
      stmts = [f"VAR {chain[0]} = {values[c]}"] + [
          f"VAR {chain[i + 1]} = VAR {chain[i]}" for i in range(self.HOPS)]
      pos = np.sort(rng.uniform(size=len(stmts)))
      inserts += [(float(p) + 1e-9 * i, s) for i, (p, s) in enumerate(zip(pos, stmts))]
    answers = names[:self.HOPS + 1]
    head = ("Memorize and track the chain(s) of variable assignment hidden in the following "
            "text.\n\n")
    question = (f"\nQuestion: Find all variables that are assigned the value {values[0]} in the "
                "text above. Answer: According to the chain(s) of variable assignment in the "
                f"text above, {self.HOPS + 1} variables are assigned the value {values[0]}, "
                "they are:")

    def build(n):
      return head + "\n".join(_place(_noise_units(n), inserts)) + question

    gen, n, text = self._fit(length, reserve, counter, answers, build)
    return Sample(self.name, length, text, answers, gen, None, names, n)


# ----------------------------------------------------------------------------- common words
class CommonWords(Task):
  name = "cwe"
  default_gen = 120
  N_COMMON = 10
  REPEATS = ((30, 3), (6, 1), (2, 1))

  def make(self, length, rng, counter, depth=None, reserve=0):
    head = ("Below is a numbered list of words. In these words, some appear more often than "
            "others. Memorize the ones that appear most often.\n")
    question = ("\nQuestion: What are the 10 most common words in the above list? Answer: The "
                "top 10 words that appear most often in the list are:")
    per_item = max(1, counter.count(" 999. " + "velmorask"))
    pool = corpus.nonce_words(rng, self.N_COMMON + max(16, length // per_item))
    common, rest = pool[:self.N_COMMON], pool[self.N_COMMON:]
    seed = int(rng.integers(2**31))
    last_err = None
    for cw, ucw in self.REPEATS:

      def build(n, cw=cw, ucw=ucw):
        words = common * cw + [w for w in rest[:n] for _ in range(ucw)]
        words = list(np.random.default_rng(seed).permutation(np.array(words, dtype=object)))
        return head + " ".join(f"{i + 1}. {w}" for i, w in enumerate(words)) + question

      try:
        gen, n, text = _fit(self.name, length, reserve, counter, common, self.default_gen,
                            build, self._guess.get((length, cw)), max_units=len(rest))
      except EvalError as e:
        last_err = e
        continue
      self._guess[(length, cw)] = n
      if n >= self.N_COMMON:
        return Sample(self.name, length, text, list(common), gen, None,
                      list(common) + list(rest[:n]), n)
    raise EvalError(f"cwe: length {length} is too short for a list with 10 common words"
                    + (f" ({last_err})" if last_err else ""))


# ----------------------------------------------------------------------------- frequent words
class FrequentWords(Task):
  name = "fwe"
  default_gen = 50
  ALPHA = 2.0

  def make(self, length, rng, counter, depth=None, reserve=0):
    vocab = ["..."] + corpus.coded_words(rng, max(50, length // 50) - 1)
    answers = vocab[1:4]
    seed = int(rng.integers(2**31))
    zeta = math.pi ** 2 / 6  # zeta(2)
    k = np.arange(1, len(vocab) + 1, dtype=np.float64)
    head = ("Read the following coded text and track the frequency of each coded word. Find the "
            "three most frequently appeared coded words. ")
    question = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What "
                "are the three most frequently appeared words in the above coded text? Answer: "
                "According to the coded text above, the three most frequently appeared words "
                "are:")

    def counts(n):
      return (n * k ** -self.ALPHA / zeta).astype(int)

    def build(n):
      words = [w for w, c in zip(vocab, counts(n)) for _ in range(c)]
      words = list(np.random.default_rng(seed).permutation(np.array(words, dtype=object)))
      return head + " ".join(words) + question

    gen, n, text = self._fit(length, reserve, counter, answers, build)
    c = counts(n)
    if not c[1] > c[2] > c[3] > c[4]:
      raise EvalError(f"fwe: length {length} is too short to make ranks 2-4 distinct")
    used = [w for w, ci in zip(vocab[1:], c[1:]) if ci > 0]
    return Sample(self.name, length, text, answers, gen, None, used, n)
