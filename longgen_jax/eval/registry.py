"""Task names, groups and ``--lengths`` parsing."""

from __future__ import annotations

import re
from typing import Callable

from longgen_jax.eval import tasks
from longgen_jax.eval.errors import EvalError

GENERATION: dict[str, Callable[[], tasks.Task]] = {
    "passkey": tasks.Passkey,
    "niah": tasks.Niah,
    "niah_single": lambda: tasks.RulerNiah("single"),
    "niah_multikey": lambda: tasks.RulerNiah("multikey"),
    "niah_multivalue": lambda: tasks.RulerNiah("multivalue"),
    "niah_multiquery": lambda: tasks.RulerNiah("multiquery"),
    "vt": tasks.VariableTracking,
    "cwe": tasks.CommonWords,
    "fwe": tasks.FrequentWords,
}
SCORING = ("ppl",)
RULER = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
GROUPS = {"ruler": RULER, "all": ("passkey", "niah") + RULER + ("ppl",)}
KNOWN = tuple(GENERATION) + SCORING + tuple(GROUPS)


def resolve_tasks(text: str) -> list[str]:
  """``"passkey,ruler"`` -> task names (groups expanded, order kept, no duplicates)."""
  out: list[str] = []
  for name in (t.strip() for t in (text or "").split(",")):
    if not name:
      continue
    if name not in KNOWN:
      raise EvalError(f"unknown task {name!r}; known: {', '.join(KNOWN)}")
    for t in GROUPS.get(name, (name,)):
      if t not in out:
        out.append(t)
  if not out:
    raise EvalError("no task given (--task=passkey,niah,ruler,ppl or all)")
  return out


def make_task(name: str) -> tasks.Task:
  if name not in GENERATION:
    raise EvalError(f"unknown generation task {name!r}; known: {', '.join(GENERATION)}")
  return GENERATION[name]()


_LEN = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")


def parse_length(text: str) -> int:
  """``"4k"`` -> 4096, ``"1m"`` -> 1048576, ``"1000"`` -> 1000."""
  m = _LEN.match(text.strip())
  if not m:
    raise EvalError(f"bad length {text!r}; use e.g. 4096, 4k or 128k")
  mult = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
  value = int(round(float(m.group(1)) * mult))
  if value < 1:
    raise EvalError(f"length {text!r} must be positive")
  return value


def parse_lengths(text: str) -> list[int]:
  """Comma list; ``a,b,...,z`` continues the geometric progression ``b / a`` up to ``z``."""
  items = [t.strip() for t in (text or "").split(",") if t.strip()]
  if not items:
    raise EvalError("no lengths given (--lengths=4k,8k,...,128k)")
  out: list[int] = []
  for i, item in enumerate(items):
    if item == "...":
      if len(out) < 2 or i + 1 >= len(items):
        raise EvalError("'...' in --lengths needs two lengths before it and one after")
      ratio = out[-1] / out[-2]
      end = parse_length(items[i + 1])
      if ratio <= 1:
        raise EvalError("'...' in --lengths needs increasing lengths before it")
      nxt = out[-1] * ratio
      while nxt < end:
        out.append(int(round(nxt)))
        nxt *= ratio
      continue
    out.append(parse_length(item))
  return sorted(set(out))
