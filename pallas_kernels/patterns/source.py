"""A pattern's token predicate as source text, for kernels compiled from source (Triton).

``predicate_source(spec, "qpos", "kpos")`` evaluates ``spec.pattern.visible`` on symbolic
positions and returns the expression it built, with the spec's parameters as integer literals,
e.g. ``((kpos < 64) | ((qpos - kpos) < 512))``. Because ``visible`` uses operators only (see
``base.py``), the text means the same in Python, NumPy and Triton on non-negative integer
positions (Triton's ``//`` and ``%`` truncate, which equals flooring there). A predicate that
branches on its inputs (``if``, ``and``, ``or``) raises ``TypeError`` here instead of tracing one
branch.
"""

from __future__ import annotations

import numpy as np


class Sym:
  """A symbolic integer / boolean expression; operators build source text."""

  __slots__ = ("src",)

  def __init__(self, src: str):
    self.src = src

  def __bool__(self):
    raise TypeError("a pattern's visible() must use operators only (no if / and / or on "
                    "positions)")

  __hash__ = None


def _text(x) -> str:
  if isinstance(x, Sym):
    return x.src
  if isinstance(x, (bool, np.bool_)):
    return "True" if x else "False"
  if isinstance(x, (int, np.integer)):
    return str(int(x))
  raise TypeError(f"a pattern predicate may combine positions with ints only, got "
                  f"{type(x).__name__}")


def _binary(op: str):
  def fwd(self, other):
    return Sym(f"({self.src} {op} {_text(other)})")

  def rev(self, other):
    return Sym(f"({_text(other)} {op} {self.src})")
  return fwd, rev


for _name, _op in (("add", "+"), ("sub", "-"), ("mul", "*"), ("floordiv", "//"), ("mod", "%"),
                   ("and", "&"), ("or", "|")):
  _f, _r = _binary(_op)
  setattr(Sym, f"__{_name}__", _f)
  setattr(Sym, f"__r{_name}__", _r)
for _name, _op in (("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">="), ("eq", "=="),
                   ("ne", "!=")):
  setattr(Sym, f"__{_name}__", _binary(_op)[0])
Sym.__invert__ = lambda self: Sym(f"(~{self.src})")


def predicate_source(spec, q: str = "q", k: str = "k") -> str:
  """``spec.pattern.visible`` as an expression over the names ``q`` and ``k``."""
  return _text(spec.pattern.visible(Sym(q), Sym(k), spec))
