"""The tutorial notebooks run top to bottom on the data shipped in the repository."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01_fit", "02_predict", "03_compare_optimizers")


def test_notebooks_are_generated_from_the_script(tmp_path):
    """The committed notebooks are exactly what notebooks/make_notebooks.py writes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks",
                                                  NOTEBOOKS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.write_all(tmp_path):
        assert path.read_text() == (NOTEBOOKS / path.name).read_text(), (
            f"{path.name} is stale: run python notebooks/make_notebooks.py")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the kernel's temporary files go here
    # (PyTensor's numba backend leaves its generated sources there too; not ours to clean)
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    errors = [o for cell in notebook.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert not list(scratch.glob("bayeslr-notebook-*")), "the notebook left its files behind"
    print(f"{name}: {seconds:.0f} s")
