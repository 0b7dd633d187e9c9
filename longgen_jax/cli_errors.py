"""One-line command-line errors shared by the absl programs (trainer, planner, HF export).

``<prog>: error: <message>`` on stderr and exit code 2 for bad input; ``--help`` prints the
program's usage and flags and exits 0.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

from absl import app, flags

HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def fail(prog: str, msg: str) -> NoReturn:
  print(f"{prog}: error: {msg}", file=sys.stderr)
  sys.exit(2)


def wants_help(argv: list[str]) -> bool:
  return any(a in HELP_FLAGS for a in argv[1:])


def root_cause(e: BaseException) -> BaseException:
  """The innermost exception of a ``raise ... from`` / implicit chain (respecting ``from None``)."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  return e


def config_flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
  """An ``app.run`` ``flags_parser``: a bad config file, argument or override is one line."""
  def parse(argv: list[str]) -> list[str]:
    if wants_help(argv):
      app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)
    try:
      return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, OSError) as e:
      root = root_cause(e)   # config_flags chains the config file's own exception: report that
      if isinstance(root, (AttributeError, KeyError)):   # an override of a missing field
        key = str(root).strip("'\" ")
        where = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
        fail(prog, f"no config field {key!r}" + (f" (in {where[0]})" if where else "")
             + "; the config is locked: only existing fields can be overridden")
      msg = (str(root).strip().splitlines() or [repr(root)])[0]
      if isinstance(root, OSError) and root.filename:
        msg = f"cannot load {root.filename}: {root.strerror}"
      fail(prog, f"{str(e).split(':', 1)[0]}: {msg}" if root is not e else msg)
  return parse


def parse_private_flags(flag_values: flags.FlagValues, argv: list[str], doc: str) -> None:
  """Parses ``argv`` into a private ``FlagValues``; ``--help`` prints ``doc`` and the flags."""
  if wants_help(argv):
    print(doc.strip() + "\n\nflags:\n" + flag_values.get_help(), file=sys.stdout)
    sys.exit(0)
  flag_values(argv)


def config_value(holder, prog: str):
  """The loaded config of a ``DEFINE_config_file`` flag; a file that failed to load is one line
  (config_flags only reports it on first access, as a multi-line ``OSError``)."""
  config = holder.value
  if config is not None:
    try:
      config.keys()
    except OSError as e:
      fail(prog, f"cannot load --config: {str(e).strip().splitlines()[-1].strip()}")
  return config
