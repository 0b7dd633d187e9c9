"""The shipped text material of the evaluation tasks (``eval/texts/``) and word generators.

All text under ``texts/`` is original, written for this repository and dedicated to the public
domain (CC0): short essays (the NIAH / RULER "essay" haystack), a word list (needle keys), towns
and activities (NIAH needles). Everything else is generated from seeds: the RULER "noise"
haystack sentence, pronounceable nonce words (common / frequent words extraction) and the long
held-out chronicle of the perplexity task (``longtext.py``).
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np

TEXT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "texts")
ESSAY_FILES = ("essays_1.txt", "essays_2.txt", "essays_3.txt")

# The passkey / RULER "noise" haystack (Mohtashami & Jaggi 2023).
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _read(name: str) -> str:
  with open(os.path.join(TEXT_DIR, name), encoding="utf-8") as f:
    return f.read()


@functools.lru_cache(maxsize=None)
def essays() -> tuple[str, ...]:
  """The essays, title lines removed, each as one string of paragraphs."""
  out = []
  for name in ESSAY_FILES:
    for block in re.split(r"^# .*$", _read(name), flags=re.M):
      block = block.strip()
      if block:
        out.append(block)
  return tuple(out)


def split_sentences(text: str) -> list[str]:
  """Regex sentence splitter (no nltk data needed): breaks after . ! ? before a capital."""
  out = []
  for para in text.split("\n"):
    para = para.strip()
    if para:
      out.extend(s.strip() for s in _SENT.split(para) if s.strip())
  return out


@functools.lru_cache(maxsize=None)
def essay_sentences() -> tuple[str, ...]:
  """Every sentence of every essay, in order (the essay haystack's units)."""
  return tuple(s for e in essays() for s in split_sentences(e))


@functools.lru_cache(maxsize=None)
def word_lists() -> dict[str, tuple[str, ...]]:
  """Sections of ``words.txt``: adjectives, nouns, towns (words), activities (lines)."""
  out: dict[str, list[str]] = {}
  section = None
  for line in _read("words.txt").splitlines():
    line = line.strip()
    if not line:
      continue
    if line.startswith("[") and line.endswith("]"):
      section = line[1:-1]
      out[section] = []
    elif section == "activities":
      out[section].append(line)
    else:
      out[section].extend(line.split())
  return {k: tuple(v) for k, v in out.items()}


def word_pair(rng: np.random.Generator) -> str:
  """A RULER-style key: ``adjective-noun``."""
  w = word_lists()
  return f"{rng.choice(w['adjectives'])}-{rng.choice(w['nouns'])}"


def distinct_word_pairs(rng: np.random.Generator, n: int) -> list[str]:
  out: list[str] = []
  while len(out) < n:
    k = word_pair(rng)
    if k not in out:
      out.append(k)
  return out


_ONSETS = ("b", "br", "d", "dr", "f", "fl", "g", "gr", "k", "kl", "l", "m", "n", "p", "pl", "r",
           "s", "sk", "st", "t", "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ea")
_CODAS = ("", "", "n", "r", "l", "s", "m", "th", "sk", "nd")


def nonce_words(rng: np.random.Generator, n: int, syllables=(2, 3)) -> list[str]:
  """``n`` distinct pronounceable made-up words (none of them a listed real word)."""
  real = set(word_lists()["adjectives"]) | set(word_lists()["nouns"])
  out: list[str] = []
  seen: set[str] = set()
  while len(out) < n:
    k = int(rng.integers(syllables[0], syllables[1] + 1))
    w = "".join(str(rng.choice(_ONSETS)) + str(rng.choice(_VOWELS)) for _ in range(k))
    w += str(rng.choice(_CODAS))
    if w not in seen and w not in real:
      seen.add(w)
      out.append(w)
  return out


def coded_words(rng: np.random.Generator, n: int, length: int = 6) -> list[str]:
  """``n`` distinct random lowercase strings of ``length`` letters (RULER's "coded words")."""
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  out: list[str] = []
  seen: set[str] = set()
  while len(out) < n:
    w = "".join(rng.choice(letters, size=length))
    if w not in seen:
      seen.add(w)
      out.append(w)
  return out
