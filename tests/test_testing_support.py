"""``make test``'s xdist mode keeps a ``@multidevice`` module's child run to one per module.

``longgen_jax/parallel/testing.py`` runs a decorated module once in a child pytest per worker
process that draws one of its tests. Under pytest 9.2 the ``--dist loadgroup`` grouping this
relied on silently stopped working (pytest-xdist issue 1386): each parallel module ran twice,
about 3 minutes of the CI budget. This runs the Makefile's own ``-n`` / ``--dist`` flags on a
synthetic module of two decorated tests and counts the child runs.
"""

import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODULE = textwrap.dedent("""
    import os
    from longgen_jax.parallel.testing import multidevice

    if os.environ.get("LONGGEN_PARALLEL_CHILD") == "1":
      with open(os.environ["CHILD_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")

    @multidevice(2)
    def test_a():
      import jax
      assert jax.device_count() == 2

    @multidevice(2)
    def test_b():
      import jax
      assert jax.device_count() == 2
    """)


def _make_test_flags() -> list[str]:
  """The ``-n`` and ``--dist`` arguments of the Makefile's ``test`` recipe."""
  with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
    recipe = re.search(r"^test:.*\n\t(.*)$", f.read(), re.M).group(1)
  n = re.search(r"(?:^|\s)-n\s+(\S+)", recipe)
  dist = re.search(r"--dist[=\s]+(\S+)", recipe)
  assert n and dist, f"make test has no -n / --dist: {recipe}"
  return ["-n", n.group(1), "--dist", dist.group(1)]


def _child_runs(tmp_path, flags) -> int:
  (tmp_path / "test_two_multidevice.py").write_text(MODULE)
  log = tmp_path / "children.log"
  env = dict(os.environ, CHILD_LOG=str(log), JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  for k in ("LONGGEN_PARALLEL_CHILD", "XLA_FLAGS", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS"):
    env.pop(k, None)
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
       str(tmp_path), *flags, str(tmp_path / "test_two_multidevice.py")],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr
  return len(set(log.read_text().split()))


def test_make_test_runs_a_multidevice_module_once(tmp_path):
  assert _child_runs(tmp_path, _make_test_flags()) == 1
