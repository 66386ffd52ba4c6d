"""Every notebook in notebooks/ runs top to bottom in a fresh kernel of this venv."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("quickstart.ipynb", "partitioning_study.ipynb", "what_if.ipynb",
         "frameworks_study.ipynb", "phone_study.ipynb")


@pytest.fixture
def venv_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernelspec that launches *this* interpreter, found first.

    A user-level or system ``python3`` kernelspec could point at another Python; one
    written here, on ``JUPYTER_PATH``, takes precedence.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "dnntune test kernel", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # what the notebooks make in tempfile
    monkeypatch.setenv("DNNTUNE_STUDY", "quick")  # phone_study: one small model, few runs
    return "python3"


def execute(nb, kernel: str, cwd: Path):
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=kernel,
                                     resources={"metadata": {"path": str(cwd)}})
    return client.execute()


def test_the_kernel_is_this_venvs_python(venv_kernel: str, tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys, dnntune; print(sys.executable); print(dnntune.__file__)")])
    out = execute(nb, venv_kernel, tmp_path).cells[0].outputs[0]["text"].splitlines()
    assert out[0] == sys.executable
    assert Path(out[1]).resolve().parent.parent == NOTEBOOKS.parent


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, name


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name: str, venv_kernel: str, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    start = time.perf_counter()
    executed = execute(nb, venv_kernel, tmp_path)  # raises CellExecutionError on failure
    elapsed = time.perf_counter() - start
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
              if o.get("output_type") == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in executed.cells
                 if c.cell_type == "code" for o in c.outputs)
    assert images >= 1, "every notebook shows at least one plot"
    # How long it took is reported, not asserted (benchmarks/ measure speed); the
    # per-cell timeout above only stops a hang.
    print(f"{name}: {elapsed:.0f} s")
