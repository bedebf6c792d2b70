"""curves.png off the answer's path: runs.deferred_writes() and `mnistlab train`, which draws the curves after
metrics.json is committed and waits for them before it exits."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from mnistlab import runs
from tests.clitools import run_cli
from tests.conftest import write_dataset_dir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_block_waits_for_every_deferred_write(tmp_path: Path) -> None:
    done: list[str] = []
    release = threading.Event()

    def slow_writer(name: str) -> None:
        release.wait()
        time.sleep(0.05)  # the write is still in flight when the block's body has finished
        runs.write_text_atomic(tmp_path / name, "x")
        done.append(name)

    with runs.deferred_writes():
        assert runs.writes_deferred()
        runs.write_later(slow_writer, "a.txt")
        runs.write_later(slow_writer, "b.txt")
        assert done == []  # background: the caller goes on while the writers wait
        release.set()
    assert sorted(done) == ["a.txt", "b.txt"]
    assert not runs.writes_deferred()


def test_outside_a_block_a_write_happens_in_line(tmp_path: Path) -> None:
    runs.write_later(runs.write_text_atomic, tmp_path / "now.txt", "x")
    assert (tmp_path / "now.txt").read_text() == "x"


def test_train_command_commits_metrics_then_curves_before_exit(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    data = write_dataset_dir(tmp_path / "data", n_train=256, n_test=64)
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(capsys, "train", "softmax", "--epochs", "1", "--data-dir", str(data),
                                   "--device", "cpu", "--out", str(out),
                                   "--registry", str(tmp_path / "r.db"))
    assert code == 0, stderr
    assert "test accuracy" in stdout  # the summary was printed
    assert json.loads((out / runs.METRICS_FILE).read_text())["status"] == "completed"
    # main() returned: the background plot has been joined and written whole.
    assert (out / runs.CURVES_PNG).read_bytes().startswith(PNG_SIGNATURE)
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*tmp*"))
    assert not [t for t in threading.enumerate() if t.name.startswith("mnistlab-")]
