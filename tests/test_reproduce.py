"""mnistlab.reproduce: the tutorial's experiments (the end-to-end run is in test_cli.py and test_compare.py)."""

from __future__ import annotations

from pathlib import Path

from tests.clitools import assert_one_line_error, run_cli


def test_reproduce_only_empty_is_an_error_not_everything(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "reproduce", "--only", "", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "--only ''")
    assert not (tmp_path / "r").exists()
