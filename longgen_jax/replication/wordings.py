"""Paraphrased wordings of the replication's synthetic retrieval facts, and their slot vocabulary.

Five families, eight wordings each. A wording is a fact line (hidden in filler text) and a
question ending right where the answer starts (the document goes on with " <answer>"):

  memo    a code of a person: memo, reminder, dialogue, log line, table row, letter, bullet,
          (held out) a card
  fact    a person's favourite thing, a 2-4 word value: note, quote, fun fact, parenthesis,
          survey, hearsay, bullet, (held out) an order
  config  a setting: python constant, shell export, YAML, JSON, Tcl ``set``, INI section, C
          ``#define``, (held out) a Makefile ``?=``
  table   2-6 key/value records, 1-3 asked: arrows, pipes, fat arrows, numbered entries, map
          assignments, sentences, dotted leaders, (held out) "has the value" sentences
  chain   a value passed along 3-5 names (2-4 hops) at increasing depths; asked for every name
          bound to the value or for the value of the last name: ``:=``, ``let``, prose, shell
          alias, ``<-``, "equals", comments, (held out) "takes"

The LAST wording of each family (``HELDOUT``) never appears in training documents: the
retrieval probe (``probe.py``) scores it apart from the training wordings, which tells retrieval
learned in one wording from retrieval that carries over to a new one. Slots (names, code kinds,
things, keys, values) are drawn from generated syllables and small pools, values from the seed,
and memo / fact / config facts come with 0-3 decoys (the same wording about other keys), a chain
with an optional second chain, so that a model must match the key rather than copy the last fact.

No wording shares a 4-word sequence with the evaluation's prompt templates
(``longgen_jax/eval/tasks.py``); ``tests/test_replication_wordings.py`` checks it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

SYLLABLES = ("ka", "lo", "mi", "ren", "dus", "vo", "tal", "qui", "ber", "nox", "sa", "pel",
             "rim", "zo", "fa", "gun", "hel", "ix", "jor", "mun", "ost", "pra", "sil", "tu",
             "ul", "vek", "wen", "yar", "zed", "bri", "cor", "dal")
CODES = ("locker code", "badge number", "room number", "ticket id", "bin number",
         "parcel number", "desk number", "shelf code", "gate number", "order number",
         "seat number", "crate label", "lab code", "mailbox number", "bike lock code",
         "cabinet tag")
THINGS = ("snack", "tool", "river", "song", "colour", "book", "city", "game", "plant", "metal",
          "bird", "tea", "dance", "fabric", "sport", "stone", "boat", "spice")
SECTIONS = ("core", "paths", "limits", "net", "cache", "build", "auth", "ui")

# (fact, question, after the answer); slots: n, m (names), c (code kind), v (value), t (thing),
# w (words), K / k (upper / lower key), s (section).
MEMO = (
    ("Memo: the {c} of {n} is {v}.", "Q: the {c} of {n}?\nA: the {c} of {n} is", "."),
    ("Please keep in mind: {n} was given {c} {v}.", "Earlier, {n} was given a {c}. It was",
     "."),
    ("{n}: by the way, my {c} is {v}.", "{m}: {n}, remind me of your {c}?\n{n}: Sure, it's",
     "."),
    ("[log] assigned {c} {v} to {n}", "[log] lookup {c} for {n} ->", ""),
    ("{n} | {c} | {v}", "{n} | {c} |", " |"),
    ("Dear {m}, my new {c} is {v}. Regards, {n}",
     "In the letter to {m}, the new {c} of {n} was", "."),
    ("- {n}: {c} {v}", "Recap for {n}, {c}:", ""),
    ("{v} is the {c} written on {n}'s card.", "The {c} written on {n}'s card reads", "."),
)
FACT = (
    ("Note: the favourite {t} of {n} is {w}.", "Recall: the favourite {t} of {n} is", "."),
    ("{n} once said their favourite {t} was {w}.", "Asked about a favourite {t}, {n} answered",
     "."),
    ("Fun fact: {n} likes the {t} called {w}.", "Which {t} does {n} like? The one called", "."),
    ("{n} (favourite {t}: {w})", "{n}'s favourite {t}:", ""),
    ("In the survey, {n} picked {w} as the top {t}.", "Survey result for {n}, top {t}:", ""),
    ("{m} heard {n} praise a {t} named {w}.",
     "According to {m}, the {t} that {n} praised is named", "."),
    ("* {n} -- {t} of choice: {w}", "{t} of choice for {n}:", ""),
    ("{n} would always order the {t} known as {w}.", "When {n} orders a {t}, it is always", "."),
)
CONFIG = (
    ("{K} = {v}  # pinned", "assert {K} ==", ""),
    ("export {K}={v}", "echo ${K}  # prints", ""),
    ("{k}: {v}", "# {k} resolves to", ""),
    ('"{k}": {v},', 'settings["{k}"] ->', ""),
    ("set {k} {v}", "get {k} =>", ""),
    ("[{s}]\n{k} = {v}", "the ini key {s}.{k} holds", ""),
    ("#define {K} {v}", "static_assert({K} ==", ");"),
    ("{K} ?= {v}", "$({K}) expands to", ""),
)
# (record, question, after the answer); slots: i (1-based index), k, v.
TABLE = (
    ("record {k} -> {v}", "lookup {k} ->", ""),
    ("| {k} | {v} |", "| {k} |", " |"),
    ("{k} => {v}", "fetch({k}) =>", ""),
    ("entry {i}: key={k} val={v}", "val for key={k}:", ""),
    ("map[{k}] = {v}", "map[{k}] ==", ""),
    ("The entry stored under {k} is {v}.", "Stored under {k}:", ""),
    ("{k} .......... {v}", "{k} ..........", ""),
    ("{k} has the value {v}.", "The value of {k} is", "."),
)
# (first, hop, question, answer kind, name separator, after the answer); slots: x (first name),
# y (next name), v (value), last (last name). Answer kind "names": every name bound to v, in
# order; "value": the value of the last name.
CHAIN = (
    ("{x} := {v}", "{y} := {x}", "names bound to {v}:", "names", " ", ""),
    ("let {x} = {v};", "let {y} = {x};", "// so {last} evaluates to", "value", "", ""),
    ("{x} starts at {v}.", "{y} copies {x}.", "In the end, {last} holds", "value", "", "."),
    ("alias {x}='{v}'", "alias {y}='{x}'", "# aliases expanding to {v}:", "names", " ", ""),
    ("{x} <- {v}", "{y} <- {x}", "resolve({last}) ->", "value", "", ""),
    ("{x} is {v}.", "{y} equals {x}.", "Everything equal to {v}:", "names", ", ", "."),
    ("{x} = {v}  # origin", "{y} = {x}  # alias", "print({last})  # ->", "value", "", ""),
    ("{x} takes {v}", "{y} takes {x}", "All that take {v}:", "names", ", ", ""),
)
WORDINGS = {"memo": MEMO, "fact": FACT, "config": CONFIG, "table": TABLE, "chain": CHAIN}
FAMILIES = tuple(WORDINGS)
HELDOUT = {f: len(w) - 1 for f, w in WORDINGS.items()}     # the last wording of each family


def wordings(family: str, split: str) -> list[int]:
  """Wording indices of a family: ``train`` (used in training documents) or ``heldout``."""
  if family not in WORDINGS:
    raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
  if split not in ("train", "heldout"):
    raise ValueError(f"split must be train or heldout, got {split!r}")
  idx = list(range(len(WORDINGS[family])))
  return [i for i in idx if (i == HELDOUT[family]) == (split == "heldout")]


@dataclasses.dataclass(frozen=True)
class Item:
  """One retrieval question: facts to hide, and the document's ending."""

  family: str
  wording: int
  facts: tuple[str, ...]       # lines hidden in the filler (the asked one first; chains in order)
  decoys: tuple[str, ...]      # lines about other keys, hidden too
  ordered: bool                # facts must keep their order (a chain)
  query: str                   # the ending up to the first answer (no trailing space)
  answer: str                  # the first answer, exact
  rest: str                    # what follows " <answer>" in a training document
  keys: tuple[str, ...]        # every name or key its lines give a value (decoys' too), and a
                               # chain's values: what must differ between items of one document

  def ending(self) -> str:
    return f"{self.query} {self.answer}{self.rest}"


_SYLLABLES = np.asarray(SYLLABLES)
_LETTERS = np.asarray(list("ABCDEFGHJKLMNPQRSTUVWXYZ"))


class _Slots:
  """Distinct generated names and keys within one item."""

  def __init__(self, rng: np.random.Generator):
    self.rng, self.used = rng, set()

  def word(self, lo: int = 2, hi: int = 3) -> str:
    while True:   # = rng.choice(SYLLABLES, size=n), the same draws without its per-call overhead
      n = int(self.rng.integers(lo, hi + 1))
      w = "".join(_SYLLABLES[self.rng.integers(0, len(_SYLLABLES), size=n)])
      if w not in self.used:
        self.used.add(w)
        return w

  def name(self) -> str:
    return self.word().capitalize()

  def key(self) -> str:
    parts = [self.word(1, 2) for _ in range(int(self.rng.integers(2, 4)))]
    return "_".join(parts) if self.rng.random() < 0.7 else ".".join(parts)

  def value(self) -> str:
    if self.rng.random() < 0.8:
      n = int(self.rng.integers(4, 8))
      return str(int(self.rng.integers(10 ** (n - 1), 10 ** n)))
    letters = "".join(_LETTERS[self.rng.integers(0, len(_LETTERS), size=2)])   # = rng.choice
    return f"{letters}{int(self.rng.integers(100, 1000))}"


def _single(rng, family: str, wording: int, words: Sequence[str]) -> Item:
  fact, question, after = WORDINGS[family][wording]
  slots = _Slots(rng)

  def draw(**fixed) -> dict:
    d = dict(n=slots.name(), m=slots.name(), s=str(rng.choice(SECTIONS)))
    if family == "config":
      d["k"] = slots.key()
      d["K"] = d["k"].replace(".", "_").upper()
      d["v"] = slots.value()
    elif family == "fact":
      d["w"] = " ".join(rng.choice(words, size=int(rng.integers(2, 5))))
    else:
      d["v"] = slots.value()
    d.update(fixed)
    return d

  asked = draw(c=str(rng.choice(CODES)), t=str(rng.choice(THINGS)))
  others = [draw(c=asked["c"], t=asked["t"], m=asked["m"]) for _ in range(int(rng.integers(0, 4)))]
  answer = asked["w"] if family == "fact" else asked["v"]
  return Item(family, wording, (fact.format(**asked),), tuple(fact.format(**d) for d in others),
              False, question.format(**asked), answer, after.format(**asked),
              _subjects(family, [asked] + others))


def _subjects(family: str, draws: list[dict]) -> tuple[str, ...]:
  """The keys of a config item's lines, else the names (``n`` and ``m``) of a memo / fact item."""
  if family == "config":
    return tuple(d["k"] for d in draws)
  return tuple(dict.fromkeys(x for d in draws for x in (d["n"], d["m"])))


def _table(rng, wording: int) -> Item:
  record, question, after = TABLE[wording]
  slots = _Slots(rng)
  keys = [slots.word(2, 4) for _ in range(int(rng.integers(2, 7)))]
  vals = [slots.value() if rng.random() < 0.6 else slots.word() for _ in keys]
  n_ask = int(rng.integers(1, min(3, len(keys)) + 1))
  asked = [int(i) for i in rng.choice(len(keys), size=n_ask, replace=False)]
  facts = [record.format(i=i + 1, k=keys[i], v=vals[i]) for i in asked]
  others = [record.format(i=i + 1, k=k, v=v) for i, (k, v) in enumerate(zip(keys, vals))
            if i not in asked]
  first = asked[0]
  more = "".join(f"\n{question.format(k=keys[i])} {vals[i]}{after}" for i in asked[1:])
  return Item("table", wording, tuple(facts), tuple(others), False,
              question.format(k=keys[first]), vals[first], after + more, tuple(keys))


def _chain_lines(first: str, hop: str, names: list[str], value: str) -> list[str]:
  return [first.format(x=names[0], v=value)] + [hop.format(y=names[i + 1], x=names[i])
                                                 for i in range(len(names) - 1)]


def _chain(rng, wording: int) -> Item:
  first, hop, question, kind, sep, after = CHAIN[wording]
  slots = _Slots(rng)
  names = [slots.word() for _ in range(int(rng.integers(3, 6)))]
  value = slots.value()
  decoys: list[str] = []
  keys = names + [value]
  if rng.random() < 0.5:
    other = [slots.word() for _ in range(int(rng.integers(3, 6)))]
    other_value = slots.value()
    decoys = _chain_lines(first, hop, other, other_value)
    keys += other + [other_value]
  answer = sep.join(names) if kind == "names" else value
  return Item("chain", wording, tuple(_chain_lines(first, hop, names, value)), tuple(decoys),
              True, question.format(v=value, last=names[-1]), answer, after, tuple(keys))


def make_item(rng: np.random.Generator, words: Sequence[str], family: str,
              wording: int) -> Item:
  """One item of ``family`` in ``wording``; ``words``: the vocabulary of ``fact`` values."""
  if family not in WORDINGS:
    raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
  if not 0 <= wording < len(WORDINGS[family]):
    raise ValueError(f"{family} has wordings 0..{len(WORDINGS[family]) - 1}, got {wording}")
  if family == "table":
    return _table(rng, wording)
  if family == "chain":
    return _chain(rng, wording)
  return _single(rng, family, wording, words)


def draw_item(rng: np.random.Generator, words: Sequence[str], split: str = "train",
              families: Sequence[str] = FAMILIES) -> Item:
  """A family and one of its ``split`` wordings drawn from ``rng``, then an item."""
  family = str(rng.choice(list(families)))
  return make_item(rng, words, family, int(rng.choice(wordings(family, split))))
