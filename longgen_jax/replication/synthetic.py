"""Synthetic retrieval documents for the replication's training mixture.

Each document hides one or more facts at random depths inside filler text and ends by asking
for them, with the answer written out, so that retrieval over a distance is learnable by
next-token prediction. The facts and questions come in many wordings per family
(``wordings.py``: memo, fact, config, table, chain; seven training wordings each, plus decoy
facts about other keys), so that the model learns the retrieval skill rather than one phrasing.
A document may ask several questions (``questions``): items with distinct keys, all hidden in
the one filler, their endings last in random order; that is more answers per training token.
None of them shares a 4-word sequence with the evaluation's prompts (``longgen_jax/eval/
tasks.py``), so the evaluation measures whether retrieval generalises, not whether a prompt was
memorised.

Filler, one style per document:

  text    slices of the training corpus, cut at line breaks (code and documentation)
  prose   runs of prose-looking lines of the corpus (sentences of documentation and comments)
  repeat  one to three short corpus lines repeated (a repetitive haystack, like the eval's noise
          haystack but never its sentences)

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed and filler give the
same documents. ``Filler``, ``hide`` and ``insert_lines`` are shared with the retrieval probe
(``probe.py``), which builds its prompts the same way from held-out text.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

from longgen_jax.replication import wordings

STYLES = {"text": 0.6, "prose": 0.25, "repeat": 0.15}      # filler style -> probability
_CODE_CHARS = frozenset("=<>{}[]|\\$_#`@*~^")


def is_prose(line: str) -> bool:
  """A sentence-like line: 40-200 characters, 6+ words, capitalised, ending in . ! or ?, no
  code characters, and at least 85% letters and spaces."""
  s = line.strip()
  if not (40 <= len(s) <= 200 and s[0].isupper() and s[-1] in ".!?" and len(s.split()) >= 6):
    return False
  if any(c in _CODE_CHARS for c in s):
    return False
  return sum(c.isalpha() or c == " " for c in s) >= 0.85 * len(s)


class Filler:
  """Filler lines of real text in the styles of ``STYLES``."""

  def __init__(self, texts: Sequence[str]):
    self.texts = [t for t in texts if len(t) > 256]
    if not self.texts:
      raise ValueError("no filler text of more than 256 characters")
    self.prose = [ln.strip() for t in self.texts for ln in t.split("\n") if is_prose(ln)]

  def take(self, rng, n_chars: int, style: str = "text") -> list[str]:
    """Lines of filler totalling about ``n_chars`` characters."""
    if style == "prose" and len(self.prose) >= 64:
      start = int(rng.integers(len(self.prose)))
      out, size = [], 0
      while size < n_chars:
        out.append(self.prose[(start + len(out)) % len(self.prose)])
        size += len(out[-1]) + 1
      return out
    if style == "repeat":
      unit = [self._line(rng) for _ in range(int(rng.integers(1, 4)))]
      reps = max(1, n_chars // (sum(len(x) + 1 for x in unit)))
      return unit * reps
    if style not in STYLES:
      raise ValueError(f"unknown filler style {style!r}; styles: {', '.join(STYLES)}")
    out, size = [], 0
    while size < n_chars:
      t = self.texts[int(rng.integers(len(self.texts)))]
      start = int(rng.integers(max(1, len(t) - 64)))
      start = t.find("\n", start) + 1
      piece = t[start:start + min(n_chars - size, 4096)]
      lines = piece.split("\n")[:-1] or [piece]
      out.extend(lines)
      size += sum(len(x) + 1 for x in lines)
    return out

  def _line(self, rng) -> str:
    """A non-empty stripped corpus line of 20-120 characters."""
    for _ in range(100):
      t = self.texts[int(rng.integers(len(self.texts)))]
      start = t.find("\n", int(rng.integers(len(t)))) + 1
      line = t[start:t.find("\n", start) if t.find("\n", start) >= 0 else len(t)].strip()
      if 20 <= len(line) <= 120:
        return line
    return "..."


def insert_lines(lines: list[str], inserts: list[tuple[float, str]]) -> str:
  """Puts each ``(depth in [0, 1], line)`` at that fraction of the lines (depth order kept)."""
  out = list(lines)
  for depth, text in sorted(inserts, key=lambda x: -x[0]):
    out.insert(int(round(depth * len(lines))), text)
  return "\n".join(out)


def hide(rng, item: wordings.Item) -> tuple[list[tuple[float, str]], float]:
  """Random depths for the item's facts and decoys (a chain's lines in order): the
  ``insert_lines`` list and the depth of the item's first fact."""
  d_facts, d_decoys = rng.random(len(item.facts)), rng.random(len(item.decoys))
  if item.ordered:
    d_facts, d_decoys = np.sort(d_facts), np.sort(d_decoys)
  inserts = list(zip(d_facts.tolist(), item.facts)) + list(zip(d_decoys.tolist(), item.decoys))
  return inserts, float(d_facts[0])


def place(rng, lines: list[str], item: wordings.Item) -> tuple[str, float]:
  """``lines`` with the item's facts and decoys hidden at random depths; returns the text and
  the depth of the item's first fact."""
  inserts, depth = hide(rng, item)
  return insert_lines(lines, inserts), depth


def hidden_chars(item: wordings.Item) -> int:
  return sum(len(x) + 1 for x in item.facts + item.decoys)


MIN_FILLER = 64            # characters of filler a document keeps, however much it hides
MAX_REDRAWS = 100


def _norm(key: str) -> str:
  return key.lower().replace(".", "_")     # a config key's upper-case form, a name's lower case


def _distinct(rng, words: Sequence[str], taken: set[str]) -> wordings.Item:
  """A training-wording item none of whose keys (names, config keys, ...) is in ``taken``."""
  for _ in range(MAX_REDRAWS):
    item = wordings.draw_item(rng, words, "train")
    if not {_norm(k) for k in item.keys} & taken:
      return item
  raise ValueError(f"no item with keys distinct from {len(taken)} others in {MAX_REDRAWS} draws")


def draw_items(rng, words: Sequence[str], n_chars: int, questions: int = 1) -> list[wordings.Item]:
  """``questions`` items in training wordings (families drawn independently) with pairwise
  distinct keys, so that no fact or decoy gives another item's key a value. Items after the
  first are dropped where their lines and endings would leave less than ``MIN_FILLER``
  characters of filler in ``n_chars``; the first is always kept."""
  if questions < 1:
    raise ValueError(f"questions must be >= 1, got {questions}")
  items = [wordings.draw_item(rng, words, "train")]
  for _ in range(questions - 1):
    item = _distinct(rng, words, {_norm(k) for i in items for k in i.keys})
    if n_chars - overhead(items + [item]) >= MIN_FILLER:
      items.append(item)
  return items


def overhead(items: Sequence[wordings.Item]) -> int:
  """Characters the items add to a document: hidden lines and endings."""
  return sum(hidden_chars(i) for i in items) + len("\n".join(i.ending() for i in items))


def compose(rng, filler: Filler, items: Sequence[wordings.Item], n_chars: int) -> dict:
  """A document of about ``n_chars`` characters: every item's facts and decoys hidden in one
  filler, then the items' endings, one per line (in random order when there are several)."""
  style = str(rng.choice(list(STYLES), p=list(STYLES.values())))
  body = filler.take(rng, max(MIN_FILLER, n_chars - overhead(items)), style)
  inserts = [x for item in items for x in hide(rng, item)[0]]
  order = rng.permutation(len(items)).tolist() if len(items) > 1 else [0]
  ending = "\n".join(items[i].ending() for i in order)
  families = "+".join(i.family for i in items)
  numbers = "+".join(str(i.wording) for i in items)
  return {"text": insert_lines(body, inserts) + "\n" + ending + "\n",
          "source": f"synthetic:{families}:{numbers}:{style}"}


def document(rng, filler: Filler, words: Sequence[str], n_chars: int, questions: int = 1) -> dict:
  """One document of about ``n_chars`` characters asking ``questions`` questions (fewer where
  they do not fit, see ``draw_items``) in training wordings. The source is
  ``synthetic:FAMILIES:WORDINGS:STYLE``, the items' families and wordings joined by ``+``."""
  return compose(rng, filler, draw_items(rng, words, n_chars, questions), n_chars)


def vocabulary(texts: Sequence[str], limit: int = 5000) -> list[str]:
  """Common lower-case English-looking words of the filler (for ``fact`` values)."""
  counts: dict[str, int] = {}
  for t in texts:
    for w in re.findall(r"\b[a-z]{4,10}\b", t):
      counts[w] = counts.get(w, 0) + 1
  words = sorted(counts, key=lambda w: (-counts[w], w))[:limit]
  if len(words) < 50:
    raise ValueError("filler text has too few words for a vocabulary")
  return words


def read_filler(jsonl_path: str, max_chars: int = 64 * 2**20) -> list[str]:
  """The first ``max_chars`` characters' worth of documents of a corpus JSONL file."""
  texts, size = [], 0
  with open(jsonl_path, encoding="utf-8") as f:
    for line in f:
      texts.append(json.loads(line)["text"])
      size += len(texts[-1])
      if size >= max_chars:
        break
  return texts


def write(out_path: str, *, filler_jsonl: str, n_docs: int, min_chars: int, max_chars: int,
          seed: int, log_uniform: bool = False, questions: int = 1) -> dict:
  """Writes ``n_docs`` documents with lengths in ``[min_chars, max_chars]``, each asking up to
  ``questions`` questions, to a JSONL file; returns its stats (``families`` and ``wordings``
  count items, ``styles`` documents)."""
  if questions < 1:
    raise ValueError(f"questions must be >= 1, got {questions}")
  texts = read_filler(filler_jsonl)
  filler = Filler(texts)
  words = np.asarray(vocabulary(texts))   # once: rng.choice converts a list on every call
  rng = np.random.default_rng(seed)
  total, counts = 0, {"families": {}, "wordings": {}, "styles": {}}
  tmp = out_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for _ in range(n_docs):
      if log_uniform:
        n = int(np.exp(rng.uniform(np.log(min_chars), np.log(max_chars))))
      else:
        n = int(rng.integers(min_chars, max_chars + 1))
      doc = document(rng, filler, words, n, questions)
      _count(counts, doc["source"])
      total += len(doc["text"].encode())
      f.write(json.dumps(doc) + "\n")
  os.replace(tmp, out_path)
  items = sum(counts["families"].values())
  return {"documents": n_docs, "bytes": total, "seed": seed, "questions": questions,
          "items": items, **counts}


def _count(counts: dict, source: str) -> None:
  _, families, numbers, style = source.split(":")
  names = [("styles", style)]
  for family, number in zip(families.split("+"), numbers.split("+")):
    names += [("families", family), ("wordings", f"{family}:{number}")]
  for key, name in names:
    counts[key][name] = counts[key].get(name, 0) + 1
