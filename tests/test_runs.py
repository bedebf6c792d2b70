"""mnistlab.runs: run directories — exclusive default folders, strict JSON, damaged files as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnistlab import runs
from tests.clitools import assert_one_line_error, copy_run, run_cli


def test_default_run_dirs_are_reserved_exclusively(tmp_path: Path) -> None:
    first = runs.default_run_dir("mlp", root=tmp_path)
    second = runs.default_run_dir("mlp", root=tmp_path)
    assert first != second and first.is_dir() and second.is_dir()


def test_json_files_never_hold_bare_nan(tmp_path: Path) -> None:
    path = runs.write_json_atomic(tmp_path / "m.json", {"loss": float("nan"), "rows": [float("inf"), 1.5]})
    assert json.loads(path.read_text()) == {"loss": None, "rows": [None, 1.5]}


@pytest.mark.parametrize(("name", "content", "culprit"), [
    ("metrics.json", "[1, 2]", "metrics.json"),
    ("history.json", '{"a": 1}', "history.json"),
    ("model.json", None, "model.json"),
    ("config.json", None, "config.json"),
])
def test_damaged_run_files_are_one_line(capsys, tmp_path: Path, mlp_run: Path, name: str, content: str | None,
                                        culprit: str) -> None:
    run = copy_run(mlp_run, tmp_path / "run")
    if content is None:
        data = json.loads((run / name).read_text())
        data.update({"num_classes": "ten"} if name == "model.json" else {"val_split": "abc"})
        content = json.dumps(data)
    (run / name).write_text(content)
    code, _, err = run_cli(capsys, "evaluate", str(run), "--registry", str(tmp_path / "reg.sqlite"))
    assert_one_line_error(code, err, culprit)
