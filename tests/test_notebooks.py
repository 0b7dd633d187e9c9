"""The notebooks: committed without outputs, in sync with their generator, and they run (tiny, CPU).

Each notebook runs unchanged in a fresh kernel with ``LONGGEN_NB_TINY=1`` and the checkout on
``PYTHONPATH`` (their install cell is skipped because the package is importable).
"""

import importlib.util
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(REPO, "notebooks")


def _generator():
  spec = importlib.util.spec_from_file_location("make_notebooks",
                                                os.path.join(NB_DIR, "make_notebooks.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


NAMES = sorted(_generator().NOTEBOOKS)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_stripped_and_generated(name):
  path = os.path.join(NB_DIR, name)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  assert text == _generator().render(name), f"{name} is stale: run notebooks/make_notebooks.py"
  nb = nbformat.reads(text, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"
  assert "pip" in nb.cells[1].source and 'find_spec("longgen_jax")' in nb.cells[1].source


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_tiny(name, tmp_path, monkeypatch):
  monkeypatch.setenv("LONGGEN_NB_TINY", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()   # raises CellExecutionError naming the failing cell
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
