"""Shared pytest setup: the ``gpu`` marker, skipped unless JAX runs on a GPU; the trainer tests'
subprocess environment (``env``). ``make test`` runs ``pytest -n 2 --dist loadfile``: one xdist
worker per test module, so a ``@multidevice`` module's child run happens once
(``longgen_jax/parallel/testing.py``; ``tests/test_testing_support.py`` checks it)."""

import os

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
  config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped when jax's backend is not gpu)")


def pytest_collection_modifyitems(config, items):
  del config
  if jax.default_backend() == "gpu":
    return
  skip = pytest.mark.skip(reason=f"needs a GPU; jax backend is {jax.default_backend()!r}")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Environment of a trainer subprocess: CPU only, single process, the repository importable,
  a persistent compilation cache shared by the module's runs (only speed), no test hooks."""
  e = dict(os.environ)
  e.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""),
           JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  for k in ("LONGGEN_TEST_SIGKILL_AT_CHECKPOINT", "XLA_FLAGS", "LONGGEN_COORDINATOR",
            "JAX_COORDINATOR_ADDRESS"):
    e.pop(k, None)
  return e
