"""Test support: run a test module on N fake CPU devices without touching the caller's JAX.

``--xla_force_host_platform_device_count`` only works before JAX creates its CPU backend, and
setting it in a shared pytest process would change the device count for every other test
file. So multi-device test modules decorate their tests with ``@multidevice(8)``:

* in the parent pytest process the first such test runs the module once in a child
  ``python -m pytest`` (the parent's ``-k`` selection forwarded) with the flag set (and
  ``LONGGEN_PARALLEL_CHILD=1``), caches the per-test outcomes from its JUnit XML, and every
  decorated test then reports its own child outcome (a child failure fails the parent test
  with the child's message);
* in the child the decorated tests simply run.

Running a module directly with the flag already in the environment (CI, a debugger) also
runs the tests in-process.

Under ``pytest -n`` the child run is per worker process, so run with ``--dist loadfile`` (as
``make test`` does): one worker per module, one child run per module, not one per worker that drew
one of its tests. (``--dist loadgroup`` with an ``xdist_group`` mark would do the same, but
pytest-xdist 3.8's grouping silently does nothing under pytest 9.2: pytest-xdist issue 1386.)
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

CHILD_ENV = "LONGGEN_PARALLEL_CHILD"
_RESULTS: dict[tuple[str, int], dict[str, tuple[str, str]]] = {}


def device_flag(n: int) -> str:
  return f"--xla_force_host_platform_device_count={n}"


def in_child(n: int) -> bool:
  """True when this process was started with ``n`` fake devices (flag present)."""
  return os.environ.get(CHILD_ENV) == "1" or device_flag(n) in os.environ.get("XLA_FLAGS", "")


def child_env(n: int, extra: dict[str, str] | None = None) -> dict[str, str]:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + [device_flag(n)])
  env["JAX_PLATFORMS"] = "cpu"
  env[CHILD_ENV] = "1"
  # Tiny CPU programs: XLA's optimisation passes cost more than they save (2-3x faster compile).
  env.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
  env.pop("PYTEST_XDIST_WORKER", None)
  env.update(extra or {})
  return env


def _parent_keyword() -> list[str]:
  """The parent pytest's ``-k`` selection, forwarded so the child runs only selected tests."""
  argv = sys.argv
  for i, a in enumerate(argv):
    if a == "-k" and i + 1 < len(argv):
      return ["-k", argv[i + 1]]
    if a.startswith("-k") and len(a) > 2:
      return ["-k", a[2:]]
  return []


def _run_module(path: str, n: int, timeout: int) -> dict[str, tuple[str, str]]:
  with tempfile.TemporaryDirectory() as tmp:
    xml = os.path.join(tmp, "junit.xml")
    cmd = [sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider",
           "-p", "no:xdist", f"--junitxml={xml}", "-o", "junit_family=xunit1",
           *_parent_keyword()]
    proc = subprocess.run(cmd, env=child_env(n), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if not os.path.exists(xml):
      raise RuntimeError(f"child pytest for {path} produced no report (rc {proc.returncode}):\n"
                         f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    out = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
      name = case.get("name")
      status, msg = "passed", ""
      for tag in ("failure", "error"):
        el = case.find(tag)
        if el is not None:
          status, msg = "failed", (el.get("message") or "") + "\n" + (el.text or "")
      if case.find("skipped") is not None and status == "passed":
        status, msg = "skipped", case.find("skipped").get("message") or ""
      out[name] = (status, msg)
    return out


def _current_test_name() -> str:
  cur = os.environ.get("PYTEST_CURRENT_TEST", "")
  return cur.split("::")[-1].rsplit(" ", 1)[0]


def multidevice(n: int = 8, timeout: int = 900):
  """Decorator: run the test on ``n`` fake CPU devices (in a child process when needed)."""

  def deco(fn):
    path = os.path.abspath(sys.modules[fn.__module__].__file__)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      if in_child(n):
        return fn(*args, **kwargs)
      key = (path, n)
      if key not in _RESULTS:
        _RESULTS[key] = _run_module(path, n, timeout)
      name = _current_test_name()
      status, msg = _RESULTS[key].get(name, ("missing", ""))
      if status == "failed":
        raise AssertionError(f"{name} failed on {n} devices (child process):\n{msg[-6000:]}")
      if status == "missing":
        raise AssertionError(f"{name}: no outcome in the child run of {path}")
      if status == "skipped":
        import pytest  # pylint: disable=import-outside-toplevel
        pytest.skip(msg)
      return None

    wrapper.multidevice = n     # tests/conftest.py keeps a module's such tests on one xdist worker
    return wrapper

  return deco
