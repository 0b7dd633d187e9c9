"""Offline scorers (0-100 per sample); no LLM judge.

* ``first_int_match``   passkey: the first integer of the prediction equals the key.
* ``string_match_all``  RULER's metric: the fraction of reference strings found in the
                        prediction (case-insensitive). Matches are whole-word (not inside a longer
                        word), so a made-up word cannot match inside another one.
* ``keyword_recall``    NIAH: the fraction of the answer's content words (stop words removed)
                        present in the prediction, an offline stand-in for ROUGE-1 recall x 100.
"""

from __future__ import annotations

import re
from typing import Sequence

STOP_WORDS = frozenset(
    "a an and are as at be by for from in is it of on or the to with was were this that its "
    "his her their our your my".split())


def first_int_match(prediction: str, answer: str) -> float:
  m = re.search(r"\d+", prediction)
  return 100.0 if m is not None and m.group(0) == str(answer) else 0.0


def _present(ref: str, text: str) -> bool:
  pat = r"(?<![0-9A-Za-z])" + re.escape(ref.strip()) + r"(?![0-9A-Za-z])"
  return re.search(pat, text, flags=re.IGNORECASE) is not None


def string_match_all(prediction: str, answers: Sequence[str]) -> float:
  if not answers:
    raise ValueError("string_match_all needs at least one reference")
  return 100.0 * sum(_present(a, prediction) for a in answers) / len(answers)


def content_words(text: str) -> list[str]:
  return [w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in STOP_WORDS]


def keyword_recall(prediction: str, answer: str) -> float:
  want = set(content_words(answer))
  if not want:
    raise ValueError(f"answer {answer!r} has no content words")
  got = set(content_words(prediction))
  return 100.0 * len(want & got) / len(want)
