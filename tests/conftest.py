"""Shared pytest setup: the ``gpu`` marker, skipped unless JAX runs on a GPU."""

import jax
import pytest


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
