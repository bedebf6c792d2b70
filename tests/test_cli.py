"""The command line end to end, in temporary folders: outputs, files, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from mnistlab import runs
from mnistlab.cli import main
from mnistlab.config import TrainConfig
from mnistlab.errors import MnistlabError
from tests.clitools import assert_one_line_error, run_cli


def test_help_does_not_import_torch() -> None:
    code = ("import sys; from mnistlab.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'numpy' not in sys.modules, 'numpy imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "reproduce" in done.stdout and "train" in done.stdout


def test_data_info_json(capsys) -> None:
    code, out, _ = run_cli(capsys, "data", "info", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["checksums"] == "verified"
    assert info["splits"]["train"]["images_shape"] == [60000, 28, 28]
    assert info["splits"]["test"]["label_counts"]["1"] == 1135


def test_data_info_table(capsys) -> None:
    code, out, _ = run_cli(capsys, "data", "info")
    assert code == 0 and "verified" in out and "6,742" in out


def test_data_show_writes_a_grid(capsys, tmp_path: Path) -> None:
    out_png = tmp_path / "grid.png"
    code, out, _ = run_cli(capsys, "data", "show", "--split", "test", "--start", "10", "--count", "9",
                           "--out", str(out_png))
    assert code == 0 and "9 images" in out
    with Image.open(out_png) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200


@pytest.mark.parametrize(("argv", "fragments"), [
    (["data", "show", "--count", "0", "--out", "x.png"], ["--count"]),
    (["data", "show", "--start", "70000", "--out", "x.png"], ["--start"]),
    (["data", "show", "--out", "/nonexistent-dir/x.png"], ["does not exist"]),
    (["data", "info", "--dataset", "cifar"], ["unknown dataset 'cifar'"]),
    (["data", "info", "--data-dir", "/nonexistent"], ["not a folder"]),
])
def test_data_errors(capsys, argv, fragments) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)


def test_summary_cnn(capsys) -> None:
    code, out, _ = run_cli(capsys, "summary", "cnn")
    assert code == 0
    assert "Total params: 61,514" in out and "(None, 64, 3, 3)" in out and "36,928" in out


def test_train_evaluate_end_to_end(capsys, tmp_path: Path, tiny_data_dir: Path) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "mlp", "--epochs", "2", "--batch-size", "64", "--val-split", "0.2",
                             "--seed", "7", "--device", "cpu", "--threads", "1", "--data-dir", str(tiny_data_dir),
                             "--out", str(run_dir))
    assert code == 0, err
    assert "epoch 1/2" in out and "epoch 2/2" in out and "val_acc" in out
    metrics = json.loads((run_dir / runs.METRICS_FILE).read_text())
    config = json.loads((run_dir / runs.CONFIG_FILE).read_text())
    assert (config["epochs"], config["batch_size"], config["seed"], config["val_split"]) == (2, 64, 7, 0.2)
    assert config["data_dir"] == str(tiny_data_dir.resolve())
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in out
    # The same device as training: the figures must then agree exactly (a GPU may round differently).
    code, out, err = run_cli(capsys, "evaluate", str(run_dir), "--json", "--device", "cpu")
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["accuracy"] == metrics["test_accuracy"]
    assert evaluated["loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)
    code, out, _ = run_cli(capsys, "evaluate", str(run_dir), "--device", "cpu")
    assert code == 0 and "(matches)" in out


@pytest.mark.parametrize(("argv", "fragments"), [
    (["train", "resnet"], ["unknown model 'resnet'"]),
    (["train", "mlp", "--epochs", "0"], ["--epochs must be a whole number >= 1"]),
    (["train", "mlp", "--batch-size", "-5"], ["--batch-size"]),
    (["train", "mlp", "--val-split", "1"], ["--val-split must be in [0, 1)"]),
    (["train", "mlp", "--optimizer", "lion"], ["--optimizer 'lion'"]),
    (["train", "mlp", "--epochs", "two"], ["--epochs", "invalid int value"]),
    (["train", "mlp", "--bogus"], ["unrecognized arguments"]),
    (["train", "mlp", "--dataset", "cifar"], ["unknown dataset"]),
])
def test_train_flag_errors(capsys, monkeypatch, tmp_path: Path, argv, fragments) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)
    assert list(tmp_path.iterdir()) == []  # a refused train leaves no default runs/ folder behind


def test_train_out_unwritable(capsys, tmp_path: Path, tiny_data_dir: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "train", "softmax", "--epochs", "1", "--data-dir", str(tiny_data_dir),
                           "--out", str(blocker / "run"))
    assert_one_line_error(code, err, "--out", "cannot create")
    with unwritable_dir(tmp_path / "locked") as locked:
        code, _, err = run_cli(capsys, "train", "softmax", "--epochs", "1", "--data-dir", str(tiny_data_dir),
                               "--out", str(locked / "run"))
    assert_one_line_error(code, err, "--out", str(locked / "run"))
    assert not (locked / "run").exists()


@contextmanager
def unwritable_dir(path: Path) -> Iterator[Path]:
    """A folder nobody can create entries in, root included: mode 0500 for a user; for root (who ignores
    permission bits, and CI runs as root) the immutable attribute, which the kernel enforces for root too."""
    path.mkdir(mode=0o500)
    if os.geteuid() != 0:
        yield path
        return
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"this filesystem has no immutable attribute for an unwritable folder: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_evaluate_errors(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "nope"))
    assert_one_line_error(code, err, "no such run directory")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert_one_line_error(code, err, "not a run directory")


def test_corrupt_data_file_is_one_line(capsys, tiny_data_dir: Path, tmp_path: Path) -> None:
    target = tiny_data_dir / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:200])
    code, _, err = run_cli(capsys, "train", "mlp", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "train-images-idx3-ubyte.gz", "truncated")


def test_reproduce_quick_subset(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "repro"
    started = time.perf_counter()
    code, out, err = run_cli(capsys, "reproduce", "--quick", "--only", "softmax,sgd", "--out", str(out_dir))
    wall = time.perf_counter() - started
    assert code == 0, err
    report = (out_dir / "report.md").read_text()
    results = json.loads((out_dir / "results.json").read_text())
    rows = {row["name"]: row for row in results["rows"]}
    assert set(rows) == {"softmax", "sgd"}
    assert rows["softmax"]["seed_accuracy"] == 0.9275 and rows["sgd"]["seed_accuracy"] == 0.9111
    assert rows["softmax"]["accuracy"] == rows["softmax"]["test_accuracy"] > 0.88  # one epoch of softmax
    assert rows["sgd"]["evaluated_on"] == "held-out 25% of train"
    assert rows["sgd"]["accuracy"] > 0.85 and rows["sgd"]["test_accuracy"] > 0.85
    for row in rows.values():
        assert f"{row['accuracy']:.4f} | {row['evaluated_on']}" in report
        assert f"{row['difference_points']:+.2f} pt" in report
    assert (out_dir / "comparison.png").is_file() and (out_dir / "softmax" / "curves.png").is_file()
    # The reported total is the whole command (data, training, evaluations, report), and its parts add up.
    timing = results["timing_seconds"]
    assert set(timing) == {"data", "softmax", "sgd", "evaluations", "total"}
    assert sum(v for k, v in timing.items() if k != "total") <= timing["total"] <= wall
    assert timing["total"] >= 0.8 * wall   # what the user waited for, not the training alone
    assert "the whole command (data" in report and "time: data" in out


def test_ctrl_c_in_a_real_process(tmp_path: Path, tiny_data_dir: Path) -> None:
    """SIGINT during training: exit 130, one line, and a run directory holding the completed epochs."""
    run_dir, registry = tmp_path / "run", tmp_path / "registry.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", "cnn", "--epochs", "500",
                             "--batch-size", "16", "--device", "cpu", "--data-dir", str(tiny_data_dir),
                             "--out", str(run_dir), "--registry", str(registry)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / runs.HISTORY_JSON).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    metrics = json.loads((run_dir / runs.METRICS_FILE).read_text())
    history = json.loads((run_dir / runs.HISTORY_JSON).read_text())
    assert metrics["status"] == "interrupted" and metrics["epochs_completed"] == len(history) >= 1
    # A partial run is still a run: the registry lists it, as interrupted, with the epochs it kept.
    from mnistlab.registry import Registry

    with Registry.open(registry, create=False) as opened:
        [record] = opened.all_runs()
    assert record.path == str(run_dir.resolve()) and record.status == "interrupted"
    assert record.metrics["epochs_completed"] == len(history) and record.history == history
    done = subprocess.run([sys.executable, "-m", "mnistlab", "evaluate", str(run_dir), "--json"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["count"] == 64


def test_a_closed_pipe_ends_quietly_with_status_0(tmp_path: Path) -> None:
    """`mnistlab data info | head -1`: the reader goes away; no traceback, exit 0 (rich alone exits 1)."""
    for argv in (["data", "info"], ["data", "info", "--json"], ["summary", "cnn"]):
        proc = subprocess.Popen([sys.executable, "-m", "mnistlab", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=tmp_path)
        assert proc.stdout is not None
        proc.stdout.read(1)       # read a byte, then hang up like `head -c1`
        proc.stdout.close()
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert proc.wait(timeout=60) == 0, err
        assert "Traceback" not in err and "Exception ignored" not in err, err


def test_a_refused_reproduce_leaves_no_folder(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "reproduce", "--quick", "--device", "bogus")
    assert_one_line_error(code, err, "--device 'bogus' is not one of auto, cpu, cuda")
    code, _, err = run_cli(capsys, "reproduce", "--quick", "--device", "bogus", "--out", str(tmp_path / "r"))
    assert code == 2
    assert list(tmp_path.iterdir()) == []


def test_negative_seed_is_a_flag_error_and_leaves_nothing(capsys, tmp_path: Path, tiny_data_dir: Path) -> None:
    code, _, err = run_cli(capsys, "train", "mlp", "--seed", "-1", "--data-dir", str(tiny_data_dir),
                           "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "--seed")
    assert not (tmp_path / "r").exists()


def test_output_path_that_is_a_folder(capsys, tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    code, _, err = run_cli(capsys, "data", "show", "--out", str(tmp_path / "folder"))
    assert_one_line_error(code, err, "is a folder")
    code, _, err = run_cli(capsys, "data", "show", "--out", "")
    assert_one_line_error(code, err)


def test_invalid_precision_and_schedule_flags(capsys) -> None:
    assert main(["train", "fast", "--precision", "fp8"]) == 2
    assert "--precision 'fp8'" in capsys.readouterr().err
    assert main(["train", "fast", "--schedule", "linear"]) == 2
    assert "--schedule 'linear'" in capsys.readouterr().err
    with pytest.raises(MnistlabError, match="`label_smoothing`"):
        TrainConfig.for_model("fast", label_smoothing=1.0)


def test_fraction_flags_reach_the_run_and_bad_ones_are_one_line(capsys, tmp_path: Path, tiny_data_dir: Path) -> None:
    code, _, err = run_cli(capsys, "train", "fast", "--backprop-fraction", "1.5", "--out", str(tmp_path / "bad"))
    assert_one_line_error(code, err, "--backprop-fraction must be a share in (0, 1], got 1.5")
    assert not (tmp_path / "bad").exists()
    code, _, err = run_cli(capsys, "train", "sgd", "--epoch-fraction", "0.5", "--out", str(tmp_path / "bad"))
    assert_one_line_error(code, err, "--epoch-fraction does not apply to sgd")
    code, _, err = run_cli(capsys, "train", "mlp", "--epochs", "1", "--epoch-fraction", "0.5", "--backprop-fraction",
                         "0.25", "--device", "cpu", "--threads", "1", "--data-dir", str(tiny_data_dir),
                         "--out", str(tmp_path / "run"))
    assert code == 0, err
    config = json.loads((tmp_path / "run" / runs.CONFIG_FILE).read_text())
    assert (config["epoch_fraction"], config["backprop_fraction"]) == (0.5, 0.25)


def test_data_show_writes_the_format_its_extension_names(capsys, tmp_path: Path) -> None:
    from PIL import Image

    for name, kind in (("grid.jpg", "JPEG"), ("grid.png", "PNG"), ("grid.webp", "WEBP")):
        code, _, err = run_cli(capsys, "data", "show", "--count", "4", "--out", str(tmp_path / name))
        assert code == 0, err
        with Image.open(tmp_path / name) as img:
            assert img.format == kind
    code, _, err = run_cli(capsys, "data", "show", "--out", str(tmp_path / "grid.txt"))
    assert_one_line_error(code, err, "grid.txt", "name an image file ending in")


def test_summary_shows_the_effective_recipe(capsys) -> None:
    code, out, _ = run_cli(capsys, "summary", "fast")
    assert code == 0 and "recipe: 1 epochs, batch 256, adam lr 0.024, schedule onecycle" in out
    assert "augment none, epoch fraction 0.8, backprop fraction 0.5, precision auto" in out.replace("\n", " ")
    code, out, _ = run_cli(capsys, "summary", "softmax")
    assert "rmsprop lr 0.001" in out and "precision fp32, threads 1" in out and "fraction" not in out
