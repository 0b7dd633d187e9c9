"""Held-out long text for perplexity by position: a generated valley chronicle.

A seeded generator writes dated entries about a fixed cast of people, places and objects. Many
sentences refer back to an earlier entry ("as on day 12, when Mara lost the blue lantern at
Oakhurst"), so later tokens are easier to predict for a model that can still see the beginning:
perplexity by position shows whether (and how far) the model uses its long context. The text is
produced on the fly from a seed (no large file is shipped) and is not part of any training corpus
in this repository.
"""

from __future__ import annotations

import numpy as np

from longgen_jax.eval import corpus

FIRST = ("Mara", "Tobin", "Elsa", "Rowan", "Ida", "Caspar", "Nell", "Oswin", "Freya", "Linus",
         "Hester", "Bram", "Wilma", "Ansel", "Petra", "Ned", "Gwen", "Tomas", "Alma", "Rufus")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")

TEMPLATES = (
    "{p} walked from {t} to {t2} carrying a {a} {n}.",
    "At the market in {t} there were {k} baskets of {n}s, and {p} counted them twice.",
    "{p} told {p2} that the {n} at {t} had been {a} since the spring.",
    "It rained over {t} until noon, and the road to {t2} was closed by the river.",
    "The council of {t} agreed to pay {k} coins for a new {n} by the end of {m}.",
    "{p} and {p2} argued about the price of a {a} {n} and did not speak again that day.",
    "In the evening {p} wrote a letter to {p2} about the {n} that had gone missing.",
    "A traveller from {t2} stayed at the inn in {t} and paid with {k} silver pieces.",
    "The bell of {t} rang {k} times, which meant that the ferry would not cross.",
    "{p} mended the {n} of {p2} with brass pins and a little glue.",
    "Nobody in {t} could remember a {m} as {a} as this one.",
    "{p} planted {k} rows of beans behind the chapel at {t}.",
)
RECALL = (
    "{p} remembered day {d}, when {q} lost the {a} {n} at {t}.",
    "As on day {d}, {q} went looking for the {a} {n} near {t}, but found nothing.",
    "The {a} {n} that {q} lost at {t} on day {d} was still the talk of the valley.",
    "{p} asked whether anyone had seen the {a} {n} of {q} since day {d}.",
)


def chronicle(seed: int, min_chars: int) -> str:
  """At least ``min_chars`` characters of chronicle (deterministic in ``seed``)."""
  rng = np.random.default_rng(seed)
  w = corpus.word_lists()
  surnames = [s.capitalize() for s in corpus.nonce_words(rng, 12, syllables=(2, 2))]
  people = [f"{f} {s}" for f, s in zip(rng.permutation(FIRST), surnames)]
  towns = list(w["towns"])
  adjs, nouns = list(w["adjectives"]), list(w["nouns"])
  losses: list[dict] = []
  parts: list[str] = []
  total, day = 0, 0

  def pick(xs):
    return xs[int(rng.integers(len(xs)))]

  while total < min_chars:
    day += 1
    month = MONTHS[(day // 30) % 12]
    sents = [f"Day {day}, {month}."]
    for _ in range(int(rng.integers(4, 9))):
      p, p2 = pick(people), pick(people)
      t, t2 = pick(towns), pick(towns)
      if losses and rng.uniform() < 0.3:
        ev = losses[int(rng.integers(len(losses)))]
        sents.append(pick(RECALL).format(p=p.split()[0], **ev))
        continue
      sents.append(pick(TEMPLATES).format(p=p.split()[0], p2=p2.split()[0], t=t, t2=t2,
                                          a=pick(adjs), n=pick(nouns),
                                          k=int(rng.integers(2, 90)), m=month))
      if rng.uniform() < 0.15:
        ev = {"q": p, "a": pick(adjs), "n": pick(nouns), "t": t, "d": day}
        losses.append(ev)
        sents.append(f"That day {p} lost a {ev['a']} {ev['n']} somewhere in {t}.")
    para = " ".join(sents)
    parts.append(para)
    total += len(para) + 2
  return "\n\n".join(parts)
