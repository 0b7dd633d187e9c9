"""The in-distribution retrieval probe: does a model retrieve in the wording it was trained on?

The eval's tasks ask in wordings the study never trains on (on purpose), so a model at floor
there may still retrieve in its training wording. This probe asks in the synthetic documents'
own wordings (``wordings.py``) with fresh slot values: the facts and decoys hidden at random
depths in HELD-OUT corpus text (``DATA/raw/heldout.jsonl``) in the training filler styles, the
prompt ending where the answer starts. Two tasks per length:

  probe         a training wording of a random family (in distribution)
  probe_unseen  the family's held-out wording, never in training (does retrieval carry over to a
                new phrasing of a familiar kind of fact?)

Seeds: the samples of (task, length) come from ``default_rng([seed, crc32(task), length])``
(``eval.runner.task_rng``) with ``--probe_seed`` (default 1000), unrelated to the streams of
the training documents (seeds 1 and 2): fresh names, keys, values and filler.

Scoring (``score_answer``), exact, 0 or 100 per sample: after leading white space the
prediction starts with the answer, and the answer is not continued by a word character,
directly or after one space, tab, comma or semicolon ("4821" is right for "4821." and
"4821 |", wrong for "48210"; a two-word value is wrong when a third word follows, a list of
names when another name follows). The report gives the mean and standard error by length.

Batched through ``longgen_jax.eval.runner.run_generation`` (one batch of ``--probe_samples``
prompts per task and length, greedy, through the serving engine with the model's own layout or
the kv_drop cache). Every prompt fills its length minus 64 generated tokens exactly (the last
filler line is cut to fit), so all batches of a length share their compiled programs. Writes
``WORKDIR/eval/<model>/probe/results.json`` in the eval's results format; each sample's record
carries its family, wording and filler style in ``meta``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

from longgen_jax.eval.errors import EvalError
from longgen_jax.eval.fit import fit_units
from longgen_jax.eval.tasks import Sample, Task
from longgen_jax.replication import synthetic, wordings

TASKS = {"probe": "train", "probe_unseen": "heldout"}    # task name -> wording split
_CONTINUED = re.compile(r"(?:[,;]?[ \t]?)\w")    # the answer goes on: more digits, words, names


def score_answer(prediction: str, answer: str) -> float:
  """100 when ``prediction`` gives exactly ``answer`` (see the module docstring), else 0."""
  p = prediction.lstrip()
  if not answer or not p.startswith(answer):
    return 0.0
  return 0.0 if _CONTINUED.match(p[len(answer):]) else 100.0


class ProbeTask(Task):
  """Retrieval in the synthetic wordings of ``split`` (``train`` or ``heldout``)."""

  uses_depth = False
  default_gen = 64     # one generation length for every sample (the longest answer is ~54
                       # bytes), so that every batch of a length has the same shapes

  def __init__(self, filler: synthetic.Filler, words: Sequence[str], split: str = "train",
               name: str = "probe", families: Sequence[str] = wordings.FAMILIES):
    super().__init__()
    for f in families:
      wordings.wordings(f, split)          # validates both
    self.filler, self.words, self.split = filler, list(words), split
    self.families, self.name = tuple(families), name
    self._chars_per_token = None

  def _ratio(self, counter) -> float:
    if self._chars_per_token is None:
      text = "\n".join(self.filler.take(np.random.default_rng(0), 4096))
      self._chars_per_token = len(text) / max(1, counter.count(text))
    return self._chars_per_token

  def make(self, length, rng, counter, depth=None, reserve=0):
    item = wordings.draw_item(rng, self.words, self.split, self.families)
    style = str(rng.choice(list(synthetic.STYLES), p=list(synthetic.STYLES.values())))
    gen = max(self.default_gen, counter.count(" " + item.answer) + 4)
    budget = length - gen - reserve
    lines = self.filler.take(rng, int(1.25 * budget * self._ratio(counter)) + 256, style)
    inserts, first = synthetic.hide(rng, item)

    def build(n, tail=""):
      body = lines[:n] + ([tail] if tail else [])
      return synthetic.insert_lines(body, inserts) + "\n" + item.query

    try:       # whole lines, then a cut of the following text fills the budget exactly
      n, text = fit_units(build, budget, counter.count, guess=self._guess.get(length),
                          max_units=len(lines))
      rest = " ".join(lines[n:])
      if rest and counter.count(build(n, rest[:1])) <= budget:
        _, text = fit_units(lambda c: build(n, rest[:c]), budget, counter.count,
                            guess=budget - counter.count(text), max_units=len(rest))
    except EvalError as e:
      raise EvalError(f"{self.name} at length {length}: {e}") from None
    self._guess[length] = n
    meta = {"family": item.family, "wording": item.wording, "style": style,
            "decoys": len(item.decoys)}
    return Sample(self.name, length, text, [item.answer], gen, first, None, n, meta)

  def score(self, prediction, sample):
    return score_answer(prediction, sample.answers[0])


def heldout_texts(data_dir: str, max_chars: int = 16 * 2**20) -> list[str]:
  """The held-out corpus documents of a study's data directory (the probe's filler)."""
  path = os.path.join(data_dir, "raw", "heldout.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"probe: no held-out text at {path}; run the data stage first")
  return synthetic.read_filler(path, max_chars)


def run(engine, tokenizer, texts: Sequence[str], lengths: Sequence[int], *, samples: int,
        seed: int, tasks: Sequence[str] = tuple(TASKS), quiet: bool = True) -> dict:
  """``{task: run_generation result}`` for the probe tasks at every length."""
  from longgen_jax.eval import runner  # pylint: disable=import-outside-toplevel
  filler, words = synthetic.Filler(texts), synthetic.vocabulary(texts)
  stop = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
  return {t: runner.run_generation(engine, tokenizer, True, t, lengths, samples=samples,
                                   depths=[], seed=seed, batch=samples, stop_tokens=stop,
                                   quiet=quiet, task=ProbeTask(filler, words, TASKS[t], t))
          for t in tasks}


def by_family(result: dict) -> dict:
  """``{length: {family: mean score}}`` of one probe task's records."""
  acc: dict = {}
  for r in result["samples"]:
    acc.setdefault(str(r["length"]), {}).setdefault(r["meta"]["family"], []).append(r["score"])
  return {L: {f: float(np.mean(v)) for f, v in sorted(fams.items())}
          for L, fams in sorted(acc.items(), key=lambda x: int(x[0]))}


def run_model(st, name: str, checkpoint: str, kv_drop: str | None) -> dict:
  """The driver's ``probe`` stage for one model: ``WORKDIR/eval/<name>/probe/results.json``."""
  from longgen_jax.eval.registry import parse_lengths  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.engine import Engine  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.loading import load_model  # pylint: disable=import-outside-toplevel
  a = st.args
  texts = heldout_texts(st.data)
  model = load_model(checkpoint, tokenizer="byte")
  engine = Engine(model.cfg, model.params, kv_drop=kv_drop)
  lengths = parse_lengths(a.lengths)
  tasks = run(engine, model.tokenizer, texts, lengths, samples=a.probe_samples,
              seed=a.probe_seed)
  out = st.path("eval", name, "probe")
  os.makedirs(out, exist_ok=True)
  results = {"checkpoint": checkpoint, "model": model.cfg.describe(),
             "served_layers": [str(s) for s in engine.specs], "kv_drop": kv_drop,
             "lengths": lengths, "samples": a.probe_samples, "seed": a.probe_seed,
             "tasks": tasks, "by_family": {t: by_family(r) for t, r in tasks.items()}}
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  for t, r in tasks.items():
    print(f"{name} {t}: " + ", ".join(f"{L}: {v:.1f}" for L, v in r["by_length"].items()),
          flush=True)
  return {"name": name, "results": os.path.join(out, "results.json"),
          "by_length": {t: r["by_length"] for t, r in tasks.items()}}
