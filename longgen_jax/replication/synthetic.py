"""Synthetic retrieval documents for the replication's training mixture.

Each document hides one or more facts at random depths inside real text (slices of the training
corpus) and ends by asking for them, with the answer written out, so that retrieval over a
distance is learnable by next-token prediction. The wording is deliberately NOT the evaluation's
(``longgen_jax/eval/tasks.py``: "pass key", "best thing to do in", "special magic number",
``VAR X = ...``), so the evaluation measures whether retrieval generalises, not whether a prompt
was memorised.

Templates (one is drawn per document):

  memo    "Memo: the locker code of <Name> is <digits>." ... "Q: the locker code of <Name>?
          A: the locker code of <Name> is <digits>."
  fact    "Note: the favourite <thing> of <Name> is <two to four words>." ... "Recall: the
          favourite <thing> of <Name> is <words>."
  config  "<KEY_NAME> = <digits>  # pinned" inside the text ... "assert <KEY_NAME> == <digits>"
  table   2-6 records "record <key> -> <value>" at different depths; 1-3 of them asked:
          "lookup <key> -> <value>"
  chain   "<x> := <digits>", then 2-4 hops "<y> := <x>" in order at increasing depths ...
          "names bound to <digits>: <x> <y> ..."

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed and filler give the
same documents.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Sequence

import numpy as np

_SYLLABLES = ("ka", "lo", "mi", "ren", "dus", "vo", "tal", "qui", "ber", "nox", "sa", "pel",
              "rim", "zo", "fa", "gun", "hel", "ix", "jor", "mun", "ost", "pra", "sil", "tu",
              "ul", "vek", "wen", "yar", "zed", "bri", "cor", "dal")
_THINGS = ("snack", "tool", "river", "song", "colour", "book", "city", "game", "plant", "metal")
_CODES = ("locker code", "badge number", "room number", "ticket id", "bin number")


def _word(rng: np.random.Generator, lo: int = 2, hi: int = 3) -> str:
  return "".join(rng.choice(_SYLLABLES, size=int(rng.integers(lo, hi + 1))))


def _name(rng) -> str:
  return _word(rng).capitalize()


def _digits(rng) -> str:
  n = int(rng.integers(4, 8))
  return str(int(rng.integers(10 ** (n - 1), 10 ** n)))


class Filler:
  """Random slices of real text, cut at line breaks."""

  def __init__(self, texts: Sequence[str]):
    self.texts = [t for t in texts if len(t) > 256]
    if not self.texts:
      raise ValueError("no filler text of more than 256 characters")

  def take(self, rng, n_chars: int) -> list[str]:
    """Lines of real text totalling about ``n_chars`` characters."""
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


def _insert(lines: list[str], inserts: list[tuple[float, str]]) -> str:
  """Puts each ``(depth in [0, 1], line)`` at that fraction of the lines (order kept)."""
  out = list(lines)
  for depth, text in sorted(inserts, key=lambda x: -x[0]):
    out.insert(int(round(depth * len(lines))), text)
  return "\n".join(out)


def _memo(rng, words):
  name, what, val = _name(rng), str(rng.choice(_CODES)), _digits(rng)
  fact = f"Memo: the {what} of {name} is {val}."
  return [fact], f"Q: the {what} of {name}?\nA: the {what} of {name} is {val}."


def _fact(rng, words):
  name, thing = _name(rng), str(rng.choice(_THINGS))
  val = " ".join(rng.choice(words, size=int(rng.integers(2, 5))))
  return ([f"Note: the favourite {thing} of {name} is {val}."],
          f"Recall: the favourite {thing} of {name} is {val}.")


def _config(rng, words):
  key, val = "_".join(_word(rng).upper() for _ in range(2)), _digits(rng)
  return [f"{key} = {val}  # pinned"], f"assert {key} == {val}"


def _table(rng, words):
  n = int(rng.integers(2, 7))
  keys = list(dict.fromkeys(_word(rng, 2, 4) for _ in range(n)))
  vals = [_digits(rng) if rng.random() < 0.5 else _word(rng) for _ in keys]
  asked = rng.choice(len(keys), size=int(rng.integers(1, min(3, len(keys)) + 1)), replace=False)
  recs = [f"record {k} -> {v}" for k, v in zip(keys, vals)]
  return recs, "\n".join(f"lookup {keys[i]} -> {vals[i]}" for i in sorted(asked))


def _chain(rng, words):
  hops = int(rng.integers(2, 5))
  names = list(dict.fromkeys(_word(rng) for _ in range(hops + 1)))
  val = _digits(rng)
  stmts = [f"{names[0]} := {val}"] + [f"{names[i + 1]} := {names[i]}"
                                      for i in range(len(names) - 1)]
  return stmts, f"names bound to {val}: {' '.join(names)}"


TEMPLATES: dict[str, Callable] = {"memo": _memo, "fact": _fact, "config": _config,
                                  "table": _table, "chain": _chain}


def document(rng, filler: Filler, words: Sequence[str], n_chars: int) -> dict:
  """One document of about ``n_chars`` characters."""
  kind = str(rng.choice(list(TEMPLATES)))
  facts, question = TEMPLATES[kind](rng, words)
  body = filler.take(rng, max(64, n_chars - sum(len(f) for f in facts) - len(question)))
  depths = np.sort(rng.random(len(facts))) if kind == "chain" else rng.random(len(facts))
  text = _insert(body, list(zip(depths.tolist(), facts))) + "\n" + question + "\n"
  return {"text": text, "source": f"synthetic:{kind}"}


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
          seed: int, log_uniform: bool = False) -> dict:
  """Writes ``n_docs`` documents with lengths in ``[min_chars, max_chars]`` to a JSONL file."""
  texts = read_filler(filler_jsonl)
  filler, words = Filler(texts), vocabulary(texts)
  rng = np.random.default_rng(seed)
  total, kinds = 0, {}
  tmp = out_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for _ in range(n_docs):
      if log_uniform:
        n = int(np.exp(rng.uniform(np.log(min_chars), np.log(max_chars))))
      else:
        n = int(rng.integers(min_chars, max_chars + 1))
      doc = document(rng, filler, words, n)
      kinds[doc["source"]] = kinds.get(doc["source"], 0) + 1
      total += len(doc["text"].encode())
      f.write(json.dumps(doc) + "\n")
  os.replace(tmp, out_path)
  return {"documents": n_docs, "bytes": total, "templates": kinds, "seed": seed}
