"""The tutorial notebook and the README's Python examples run, end to end, as a user would run them.

The notebook runs in a real Jupyter kernel (nbclient + ipykernel) on short settings; any cell error fails the
test. The README's ```python blocks under "Python API" run in a fresh interpreter. Both work in a temporary
folder with their own registry, so they never touch the checkout or the user's runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "mnist-tour.ipynb"


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MNISTLAB_HOME": str(tmp_path / "home"), "MNISTLAB_TOUR_QUICK": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def test_the_notebook_in_git_is_output_free_and_matches_its_generator() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import make_tour
    finally:
        sys.path.pop(0)
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count") for cell in stored.cells
               if cell.cell_type == "code")
    assert [c.source for c in stored.cells] == [c.source for c in make_tour.build().cells]


@pytest.mark.integration
def test_the_tour_notebook_runs_in_a_real_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs if output.get("output_type") == "stream")
    accuracies = [float(x) for x in re.findall(r"cnn test accuracy (0\.\d+)", text)]
    assert accuracies and accuracies[0] > 0.95, text[-2000:]          # one epoch of the tutorial's CNN
    assert "Total params: 61,514" in text                              # the CNN's summary was printed
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= 4                                            # digits, curves, confusion, drawn digit
    assert re.search(r"read as 7 ", text), "the drawn 7 was not read as a 7"


def readme_api_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_has_python_api_examples() -> None:
    assert len(readme_api_blocks()) >= 2


@pytest.mark.integration
def test_the_readme_python_examples_run(tmp_path: Path) -> None:
    script = "\n\n".join(readme_api_blocks())
    # The examples use the tutorial's settings; the test shortens training, the only thing it changes.
    script = ("import mnistlab\n_train = mnistlab.train\n"
              "mnistlab.train = lambda *args, **kwargs: _train(*args, **{**kwargs, 'epochs': 1})\n" + script)
    (tmp_path / "readme_examples.py").write_text(script, encoding="utf-8")
    done = subprocess.run([sys.executable, "readme_examples.py"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
