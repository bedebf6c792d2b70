"""TensorBoard logging (issue 11, item 5): the events, read back with TensorBoard's own reader, are the run's
history.json and metrics.json, epoch by epoch, across --resume; the settings are hparams; a missing package is one
line before any training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mnistlab
from mnistlab import runs
from mnistlab.errors import MnistlabError
from tests.clitools import run_cli

pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install 'mnistlab[tensorboard]'")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

# history.json key -> TensorBoard tag
TAGS = {"loss": "loss", "accuracy": "accuracy", "val_loss": "val_loss", "val_accuracy": "val_accuracy", "lr": "lr",
        "seconds": "epoch_seconds"}
SRC = Path(__file__).resolve().parents[1] / "src"


def settings(data_dir: Path) -> dict[str, Any]:
    return {"batch_size": 64, "val_split": 0.2, "device": "cpu", "threads": 1, "data_dir": data_dir,
            "progress": False, "registry": False}


def read_events(folder: Path) -> EventAccumulator:
    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    reader.Reload()
    return reader


def scalars(reader: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in reader.Scalars(tag)]


def assert_events_are_the_history(folder: Path, run_dir: Path) -> None:
    """Every epoch exactly once, at step = epoch, with history.json's value (TensorBoard stores float32)."""
    history = json.loads((run_dir / runs.HISTORY_JSON).read_text())
    reader = read_events(folder)
    for key, tag in TAGS.items():
        expected = [(row["epoch"], float(np.float32(row[key]))) for row in history]
        assert scalars(reader, tag) == expected, tag


def session_hparams(folder: Path) -> dict[str, Any]:
    content = read_events(folder).PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    values: dict[str, Any] = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    values["__metrics__"] = sorted(info.name.tag for info in experiment.metric_infos)
    return values


def test_every_scalar_is_the_history_and_the_settings_are_hparams(tmp_path: Path, tiny_data_dir: Path) -> None:
    board = tmp_path / "tb"
    run = mnistlab.train("mlp", epochs=3, run_dir=tmp_path / "alpha", tensorboard=board, **settings(tiny_data_dir))
    folder = board / "alpha"
    assert_events_are_the_history(folder, run.path)
    reader = read_events(folder)
    metrics = run.metrics
    for tag in ("test_loss", "test_accuracy"):
        assert scalars(reader, tag) == [(3, float(np.float32(metrics[tag])))]
    hparams = session_hparams(folder)
    config = run.config
    assert hparams["model"] == "mlp" and hparams["optimizer"] == config.optimizer
    assert (hparams["epochs"], hparams["batch_size"], hparams["lr"]) == (3, 64, config.lr)
    assert hparams["val_split"] == pytest.approx(0.2) and hparams["threads"] == 1
    assert hparams["__metrics__"] == ["test_accuracy", "test_loss"]


def test_the_api_callback_and_one_folder_per_run_side_by_side(tmp_path: Path, tiny_data_dir: Path) -> None:
    board = tmp_path / "tb"
    logger = mnistlab.TensorBoardLogger(log_dir=board)
    first = mnistlab.train("mlp", epochs=1, run_dir=tmp_path / "a" / "run", callbacks=[logger],
                           **settings(tiny_data_dir))
    # Another run with the same folder name gets its own sub-folder; it never mixes into the first one's.
    second = mnistlab.train("mlp", epochs=2, seed=1, run_dir=tmp_path / "b" / "run", tensorboard=board,
                            **settings(tiny_data_dir))
    assert sorted(path.name for path in board.iterdir()) == ["run", "run-2"]
    assert_events_are_the_history(board / "run", first.path)
    assert_events_are_the_history(board / "run-2", second.path)


def test_resume_continues_the_steps_and_updates_the_hparams(tmp_path: Path, tiny_data_dir: Path) -> None:
    board = tmp_path / "tb"
    run = mnistlab.train("mlp", epochs=2, run_dir=tmp_path / "grow", tensorboard=board, **settings(tiny_data_dir))
    extended = mnistlab.train("mlp", resume=run.path, epochs=4, progress=False, registry=False, tensorboard=board)
    assert len(extended.epochs) == 4
    assert_events_are_the_history(board / "grow", run.path)
    reader = read_events(board / "grow")
    # Each session's test figures at the epoch it ended; the hparams say what the run is now (4 epochs).
    assert [step for step, _ in scalars(reader, "test_accuracy")] == [2, 4]
    assert scalars(reader, "test_loss")[-1] == (4, float(np.float32(extended.metrics["test_loss"])))
    assert session_hparams(board / "grow")["epochs"] == 4


def test_a_resumed_run_fills_in_epochs_the_events_lack(tmp_path: Path, tiny_data_dir: Path) -> None:
    # Trained without TensorBoard (as a session killed before its events were flushed would leave it): resuming
    # with it logs the checkpointed epochs from the run's own record, then the new ones.
    run = mnistlab.train("mlp", epochs=2, run_dir=tmp_path / "late", **settings(tiny_data_dir))
    mnistlab.train("mlp", resume=run.path, epochs=3, progress=False, registry=False, tensorboard=tmp_path / "tb")
    assert_events_are_the_history(tmp_path / "tb" / "late", run.path)


def test_events_beyond_the_checkpoint_are_replaced_not_duplicated(tmp_path: Path, tiny_data_dir: Path) -> None:
    board = tmp_path / "tb"
    run = mnistlab.train("mlp", epochs=2, run_dir=tmp_path / "again", tensorboard=board, **settings(tiny_data_dir))
    saved = shutil.copytree(run.path, tmp_path / "saved")
    mnistlab.train("mlp", resume=run.path, epochs=3, progress=False, registry=False, tensorboard=board)
    # The run goes back to its 2-epoch checkpoint (events of epoch 3 stay behind, like a kill after the flush
    # of an epoch whose checkpoint is then lost), and epoch 3 is trained again.
    shutil.rmtree(run.path)
    shutil.copytree(saved, run.path)
    mnistlab.train("mlp", resume=run.path, epochs=3, progress=False, registry=False, tensorboard=board)
    assert_events_are_the_history(board / "again", run.path)  # epoch 3 once, not twice


def test_cli_train_and_resume_with_tensorboard(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               tiny_data_dir: Path) -> None:
    run_dir, board = tmp_path / "cli-run", tmp_path / "tb"
    common = ("--device", "cpu", "--threads", "1", "--data-dir", str(tiny_data_dir),
              "--registry", str(tmp_path / "registry.sqlite"), "--tensorboard", str(board))
    code, _, err = run_cli(capsys, "train", "mlp", "--epochs", "2", "--batch-size", "64", "--val-split", "0.2",
                           "--out", str(run_dir), *common)
    assert code == 0, err
    assert_events_are_the_history(board / "cli-run", run_dir)
    code, _, err = run_cli(capsys, "train", "--resume", str(run_dir), "--epochs", "3", *common)
    assert code == 0, err
    assert len(json.loads((run_dir / runs.HISTORY_JSON).read_text())) == 3
    assert_events_are_the_history(board / "cli-run", run_dir)


def test_a_file_as_the_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "tb").write_text("not a folder")
    with pytest.raises(MnistlabError, match=r"^`tensorboard` .*tb: is a file; name a folder"):
        mnistlab.TensorBoardLogger(log_dir=tmp_path / "tb")


HIDDEN = """
import sys
sys.modules["tensorboard"] = None  # as if the package were not installed: importing it raises ImportError
from mnistlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_package_the_option_fails_in_one_line_before_training(tmp_path: Path,
                                                                         tiny_data_dir: Path) -> None:
    run_dir = tmp_path / "never"
    done = subprocess.run(
        [sys.executable, "-c", HIDDEN, "train", "mlp", "--epochs", "1", "--device", "cpu", "--threads", "1",
         "--data-dir", str(tiny_data_dir), "--out", str(run_dir), "--registry", str(tmp_path / "registry.sqlite"),
         "--tensorboard", str(tmp_path / "tb")],
        capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin",
                                                         "MNISTLAB_HOME": str(tmp_path / "home")},
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert lines == ["mnistlab: error: TensorBoard logging (--tensorboard) needs the tensorboard package, which is "
                     "not installed: pip install 'mnistlab[tensorboard]' (or pip install tensorboard)"]
    assert not run_dir.exists() and not (tmp_path / "tb").exists()  # refused before any folder or epoch


def test_the_module_stays_light_until_a_logger_is_made() -> None:
    code = ("import sys, mnistlab, mnistlab.tensorboard; "
            "print(sorted(m for m in ('torch', 'tensorboard') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, check=True)
    assert done.stdout.strip() == "[]"


def test_event_files_sort_in_session_order_even_within_one_second(tmp_path: Path, tiny_data_dir: Path) -> None:
    # TensorBoard reads a run's files in name order; a resumed session read before an earlier one has its epochs
    # purged by the earlier one's START. Twelve quick sessions (the stock writers' counter goes 9 -> 10 within
    # one second, and "10" sorts before "9"): name order must be creation order (each file's first wall time).
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    run = mnistlab.train("mlp", epochs=1, run_dir=tmp_path / "quick", **settings(tiny_data_dir))
    logger = mnistlab.TensorBoardLogger(log_dir=tmp_path / "tb")
    for _ in range(12):
        logger.on_train_start(config=run.config, run_dir=run.path, steps_per_epoch=1, samples=1)
        logger.close()
    files = sorted((tmp_path / "tb" / "quick").glob("events.out.tfevents.*"))
    sessions = [path for path in files if not path.name.endswith("hparams")]
    started = [next(iter(EventFileLoader(str(path)).Load())).wall_time for path in sessions]
    assert len(sessions) == 12 and started == sorted(started)
    assert_events_are_the_history(tmp_path / "tb" / "quick", run.path)


def test_a_folder_marker_is_claimed_once(tmp_path: Path) -> None:
    """Two runs claiming one folder: the first marker stays whole, the second claim is refused."""
    from mnistlab.tensorboard import _create_marker, _marker_run

    marker = tmp_path / "run" / "mnistlab-run.json"
    marker.parent.mkdir()
    assert _create_marker(marker, "/runs/a/run") is True
    assert _create_marker(marker, "/runs/b/run") is False
    assert _marker_run(marker) == "/runs/a/run"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mnistlab-run.json", "run"]  # no private files left


def test_a_folder_marker_without_hard_links_is_still_exclusive(tmp_path: Path, monkeypatch) -> None:
    """On a filesystem without hard links (FAT, some network mounts: EPERM) the marker is made by an exclusive
    create instead: still one winner, and a whole marker."""
    import errno
    import os

    from mnistlab.tensorboard import _create_marker, _marker_run

    def no_links(*_args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    marker = tmp_path / "run" / "mnistlab-run.json"
    marker.parent.mkdir()
    assert _create_marker(marker, "/runs/a/run") is True
    assert _create_marker(marker, "/runs/b/run") is False
    assert _marker_run(marker) == "/runs/a/run"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mnistlab-run.json", "run"]


def test_runs_of_one_name_claiming_at_once_get_a_folder_each(tmp_path: Path) -> None:
    """Six real processes, released together, each claim a log folder for a run named ``run`` (from different
    parents): six different folders, each marker naming its own run."""
    import time

    go = tmp_path / "go"
    code = ("import sys, time, pathlib\n"
            "from mnistlab.tensorboard import TensorBoardLogger\n"
            "go = pathlib.Path(sys.argv[1])\n"
            "logger = TensorBoardLogger(log_dir=sys.argv[2])\n"
            "pathlib.Path(sys.argv[4]).touch()\n"
            "while not go.exists(): time.sleep(0.0005)\n"
            "print(logger._claim_folder(pathlib.Path(sys.argv[3])))\n")
    ready = [tmp_path / f"ready-{i}" for i in range(6)]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(go), str(tmp_path / "tb"),
                               str(tmp_path / f"p{i}" / "run"), str(ready[i])], stdout=subprocess.PIPE, text=True)
             for i in range(6)]
    deadline = time.monotonic() + 120
    while not all(path.exists() for path in ready) and time.monotonic() < deadline:  # all six waiting
        time.sleep(0.01)
    go.touch()
    folders = [Path(proc.communicate(timeout=60)[0].strip()) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert len(set(folders)) == 6
    from mnistlab.tensorboard import _marker_run

    for i, folder in enumerate(folders):
        assert _marker_run(folder / "mnistlab-run.json") == str((tmp_path / f"p{i}" / "run").resolve())
