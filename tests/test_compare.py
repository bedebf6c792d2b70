"""The evaluate / runs / train-classical commands end to end in temporary folders, and their errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mnistlab import runs
from tests.clitools import assert_one_line_error, run_cli


class Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag not in ("script", "link", "iframe")
        self.sources += [value or "" for name, value in attrs if name in ("src", "href")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture()
def registry(tmp_path: Path) -> Path:
    return tmp_path / "registry.sqlite"


def train_tiny(capsys, data_dir: Path, out: Path, registry: Path, model: str, *extra: str) -> None:
    code, stdout, err = run_cli(capsys, "train", model, "--data-dir", str(data_dir), "--out", str(out),
                                "--registry", str(registry), "--threads", "1", *extra)
    assert code == 0, err
    assert "registry: run" in stdout


def test_train_two_models_compare_and_open_one_html(capsys, tmp_path: Path, tiny_data_dir_shared: Path,
                                                    registry: Path) -> None:
    """The issue's "done when": two models, `runs compare`, one HTML page showing where each fails."""
    mlp, knn = tmp_path / "mlp", tmp_path / "knn"
    train_tiny(capsys, tiny_data_dir_shared, mlp, registry, "mlp", "--epochs", "2", "--batch-size", "32",
               "--device", "cpu", "--val-split", "0.2")
    train_tiny(capsys, tiny_data_dir_shared, knn, registry, "knn", "--option", "k=3", "--option", "max_train=200")
    config = json.loads((knn / runs.CONFIG_FILE).read_text())
    assert config["options"] == {"k": 3, "max_train": 200} and config["family"] == "classical"

    code, out, err = run_cli(capsys, "runs", "list", "--registry", str(registry), "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [(r["id"], r["model"], r["state"]) for r in listed] == [(1, "mlp", "ok"), (2, "knn", "ok")]

    compare_dir = tmp_path / "cmp"
    code, out, err = run_cli(capsys, "runs", "compare", "1", "2", "--registry", str(registry), "--out",
                             str(compare_dir), "--html", str(tmp_path / "share.html"), "--device", "cpu")
    assert code == 0, err
    assert "#1 mlp" in out and "#2 knn" in out
    saved = json.loads((compare_dir / "comparison.json").read_text())
    table = {row[0]: row[1:] for row in saved["table"]}
    for column, run in enumerate((mlp, knn)):
        metrics = json.loads((run / runs.METRICS_FILE).read_text())
        evaluation = json.loads((run / "eval" / "test" / "evaluation.json").read_text())
        assert evaluation["accuracy"] == metrics["test_accuracy"]
        assert table["test accuracy"][column] == f"{100 * metrics['test_accuracy']:.2f}%"
        assert table["test error"][column] == f"{100 * (1 - metrics['test_accuracy']):.2f}%"
    # The synthetic data is custom data, not MNIST: MNIST's published k-NN error does not apply to it.
    assert table["published error (same method)"] == ["", ""]
    page = (compare_dir / "report.html").read_text()
    assert (tmp_path / "share.html").read_text() == page
    parser = Sources()
    parser.feed(page)
    assert parser.sources and all(src.startswith("data:image/png;base64,") for src in parser.sources)
    # Curves + for each run its confusion matrix and mistakes gallery.
    assert len(parser.sources) == 1 + 2 * 2
    text = " ".join(parser.text)
    assert "Where each run fails" in text and "#1 mlp" in text and "#2 knn" in text
    assert (compare_dir / "curves.png").is_file()

    code, out, err = run_cli(capsys, "runs", "rm", "2", "--registry", str(registry))
    assert code == 0 and "forgot run 2" in out and knn.is_dir()
    code, out, _ = run_cli(capsys, "runs", "list", "--registry", str(registry), "--json")
    assert [r["id"] for r in json.loads(out)] == [1]


def test_evaluate_records_and_show(capsys, tmp_path: Path, tiny_data_dir_shared: Path, registry: Path) -> None:
    run = tmp_path / "run"
    train_tiny(capsys, tiny_data_dir_shared, run, registry, "softmax", "--epochs", "2", "--device", "cpu",
               "--val-split", "0.25")
    html = tmp_path / "out.html"
    code, out, err = run_cli(capsys, "evaluate", str(run), "--split", "val", "--json", "--html", str(html),
                             "--registry", str(registry), "--device", "cpu")
    assert code == 0, err
    data = json.loads(out)
    history = json.loads((run / runs.HISTORY_JSON).read_text())
    assert data["split"] == "val" and data["accuracy"] == history[-1]["val_accuracy"] and data["count"] == 64
    assert html.read_text() == (run / "eval" / "val" / "report.html").read_text()
    assert data["registry"] == {"run": 1, "evaluation": 1}
    code, out, err = run_cli(capsys, "evaluate", str(run), "--registry", str(registry), "--device", "cpu")
    assert code == 0, err
    assert "(matches)" in out and "precision" in out and "confusion matrix" in out and "registry: run 1" in out
    code, out, err = run_cli(capsys, "runs", "show", "1", "--registry", str(registry), "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert [e["split"] for e in shown["evaluations"]] == ["val", "test"]
    assert shown["evaluations"][0]["accuracy"] == data["accuracy"]
    assert shown["config"]["val_split"] == 0.25 and len(shown["history"]) == 2
    code, out, err = run_cli(capsys, "runs", "show", str(run), "--registry", str(registry))
    assert code == 0 and "evaluations" in out and "history" in out
    ran = json.loads((run / "metrics.json").read_text())
    assert f"ran on     {ran['device']} in {ran['precision']}" in out   # what ran, not just "precision=auto"
    code, out, err = run_cli(capsys, "runs", "list", "--registry", str(registry), "--sort", "test_ece", "--json")
    assert code == 0, err
    [listed] = json.loads(out)
    assert listed["figures"]["test_ece"] == pytest.approx(json.loads(
        (run / "eval" / "test" / "evaluation.json").read_text())["calibration"]["ece"])


def test_deleted_run_directory_is_marked_missing(capsys, tmp_path: Path, tiny_data_dir_shared: Path,
                                                 registry: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    train_tiny(capsys, tiny_data_dir_shared, a, registry, "logreg", "--option", "max_iter=20")
    train_tiny(capsys, tiny_data_dir_shared, b, registry, "forest", "--option", "n_estimators=5")
    shutil.rmtree(b)
    code, out, err = run_cli(capsys, "runs", "list", "--registry", str(registry))
    assert code == 0, err
    assert "missing" in out
    code, out, err = run_cli(capsys, "runs", "compare", "1", "2", "--registry", str(registry), "--out",
                             str(tmp_path / "cmp"))
    assert code == 0, err
    assert "is missing" in out
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert "is missing: only the registry" in page
    code, out, err = run_cli(capsys, "runs", "show", "2", "--registry", str(registry))
    assert code == 0 and "missing" in out


def test_two_trainings_at_once_are_both_recorded(tmp_path: Path, tiny_data_dir_shared: Path, registry: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "mnistlab", "train", "knn", "--option", f"k={k}", "--data-dir",
                               str(tiny_data_dir_shared), "--out", str(tmp_path / f"knn{k}"), "--registry",
                               str(registry), "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for k in (1, 3)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    done = subprocess.run([sys.executable, "-m", "mnistlab", "runs", "list", "--json", "--registry", str(registry)],
                          capture_output=True, text=True, check=True)
    listed = json.loads(done.stdout)
    assert sorted(Path(r["path"]).name for r in listed) == ["knn1", "knn3"]
    assert sorted(r["id"] for r in listed) == [1, 2]


def test_classical_run_through_the_cli(capsys, tmp_path: Path, tiny_data_dir_shared: Path, registry: Path) -> None:
    run = tmp_path / "svm"
    train_tiny(capsys, tiny_data_dir_shared, run, registry, "svm", "--option", "max_train=200", "--val-split", "0.1")
    history = json.loads((run / runs.HISTORY_JSON).read_text())
    assert len(history) == 1 and history[0]["loss"] is None and history[0]["val_accuracy"] is not None
    code, out, err = run_cli(capsys, "evaluate", str(run), "--json", "--registry", str(registry))
    assert code == 0, err
    data = json.loads(out)
    assert data["score_kind"] == "decision" and data["loss"] is None and data["calibration"] is None
    assert data["accuracy"] == json.loads((run / runs.METRICS_FILE).read_text())["test_accuracy"]


@pytest.mark.parametrize(("argv", "fragments"), [
    (["train", "knn", "--epochs", "3"], ["--epochs does not apply to knn", "--option"]),
    (["train", "knn", "--option", "z=1"], ["--option 'z=1'", "k, max_train"]),
    (["train", "knn", "--option", "k=two"], ["k must be a whole number"]),
    (["train", "svm", "--option", "gamma=-1"], ["gamma=-1.0: must be > 0"]),
    (["train", "mlp", "--option", "k=1"], ["--option k: not for the constant schedule", "--schedule options"]),
    (["summary", "forest"], ["forest is a classical baseline"]),
    (["evaluate", "nowhere", "--split", "dev"], ["--split", "invalid choice"]),
    (["runs", "compare", "1"], ["at least two run ids"]),
])
def test_flag_errors(capsys, argv: list[str], fragments: list[str]) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)


def test_registry_errors(capsys, tmp_path: Path, tiny_data_dir_shared: Path, registry: Path) -> None:
    # An empty registry is not an error for listing: "no runs yet", exit 0, in text and JSON alike.
    code, out, err = run_cli(capsys, "runs", "list", "--registry", str(registry))
    assert (code, err) == (0, "") and "no runs yet" in out
    code, out, err = run_cli(capsys, "runs", "list", "--json", "--registry", str(registry))
    assert (code, err, json.loads(out)) == (0, "", [])
    for argv in (["runs", "show", "1"], ["runs", "compare", "1", "2"], ["runs", "rm", "1"]):
        code, _, err = run_cli(capsys, *argv, "--registry", str(registry))
        assert_one_line_error(code, err, "holds no runs yet")
    assert not registry.exists()
    run = tmp_path / "run"
    train_tiny(capsys, tiny_data_dir_shared, run, registry, "softmax", "--epochs", "1", "--device", "cpu")
    code, _, err = run_cli(capsys, "runs", "show", "7", "--registry", str(registry))
    assert_one_line_error(code, err, "no run with id 7")
    code, _, err = run_cli(capsys, "runs", "rm", "1", "7", "--registry", str(registry))
    assert_one_line_error(code, err, "no run with id 7")
    code, out, _ = run_cli(capsys, "runs", "list", "--registry", str(registry), "--json")
    assert len(json.loads(out)) == 1   # the failed rm removed nothing
    code, _, err = run_cli(capsys, "runs", "compare", "1", "1", "--registry", str(registry))
    assert_one_line_error(code, err, "same run is listed twice")
    code, _, err = run_cli(capsys, "evaluate", str(run), "--split", "val", "--registry", str(registry))
    assert_one_line_error(code, err, "trained without a validation split")
    code, _, err = run_cli(capsys, "evaluate", str(run), "--html", str(tmp_path / "no" / "r.html"))
    assert_one_line_error(code, err, "--html", "does not exist")
    code, _, err = run_cli(capsys, "evaluate", str(run), "--html", str(tmp_path))
    assert_one_line_error(code, err, "--html", "is a folder")

    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(os.urandom(5000))
    before = corrupt.read_bytes()
    code, _, err = run_cli(capsys, "runs", "list", "--registry", str(corrupt))
    assert_one_line_error(code, err, "not a usable mnistlab registry", "left untouched")
    code, _, err = run_cli(capsys, "train", "softmax", "--data-dir", str(tiny_data_dir_shared), "--out",
                           str(tmp_path / "never"), "--registry", str(corrupt))
    assert_one_line_error(code, err, "not a usable mnistlab registry")
    assert not (tmp_path / "never").exists()   # refused before training
    assert corrupt.read_bytes() == before


def test_reproduce_records_its_runs_and_shows_confusions(capsys, tmp_path: Path, registry: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mnistlab import reproduce

    # Only the SGD row, one epoch (seconds): the other three rows are the same code path as train.
    monkeypatch.setattr(reproduce, "SEED_EXPERIMENTS", tuple(dataclasses.replace(e, quick_epochs=1)
                                                            for e in reproduce.SEED_EXPERIMENTS if e.name == "sgd"))
    out_dir = tmp_path / "repro"
    code, _, err = run_cli(capsys, "reproduce", "--quick", "--out", str(out_dir), "--registry", str(registry))
    assert code == 0, err
    report = (out_dir / "report.md").read_text()
    assert "![confusion matrices](confusions.png)" in report and (out_dir / "confusions.png").is_file()
    results = json.loads((out_dir / "results.json").read_text())
    [row] = results["rows"]
    evaluation = json.loads((out_dir / "sgd" / "eval" / "test" / "evaluation.json").read_text())
    assert f"official test set: {evaluation['accuracy']:.4f}" in row["note"]
    assert f"{100 * (1 - evaluation['accuracy']):.2f}%" in report
    confusion = np.asarray(evaluation["confusion"])
    pair = evaluation["most_confused"][0]
    assert confusion[pair["true"], pair["predicted"]] == pair["count"]
    assert f"{pair['true']} → {pair['predicted']}: {pair['count']}" in report
    code, listed, _ = run_cli(capsys, "runs", "list", "--json", "--registry", str(registry))
    [record] = json.loads(listed)
    assert record["source"] == "reproduce" and record["model"] == "sgd"
    assert record["metrics"]["val_accuracy"] == row["accuracy"]   # the tutorial's like-for-like figure


def test_a_run_the_registry_cannot_take_is_kept_and_says_how_to_record_it(capsys, tmp_path: Path,
                                                                          tiny_data_dir_shared: Path,
                                                                          registry: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry is checked before training; if it breaks during training (another program overwrote it),
    the run is still complete on disk and the one-line error says so and how to record it later."""
    from mnistlab import training as train

    real_fit = train.fit

    def fit_then_registry_damaged(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        registry.write_bytes(b"someone else's notes, not a database\n" * 50)
        for leftover in registry.parent.glob(registry.name + "-*"):   # its -wal / -shm files
            leftover.unlink()
        return result

    monkeypatch.setattr(train, "fit", fit_then_registry_damaged)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "softmax", "--epochs", "1", "--device", "cpu", "--threads", "1",
                           "--data-dir", str(tiny_data_dir_shared), "--out", str(run), "--registry", str(registry))
    assert_one_line_error(code, err, f"{run} saved, but not recorded in the registry: registry {registry}: "
                                     "not a usable mnistlab registry",
                          "(evaluating it records it later: `mnistlab evaluate RUN`")
    assert json.loads((run / runs.METRICS_FILE).read_text())["status"] == "completed"
    # What the message promises: evaluate records it in a working registry.
    elsewhere = tmp_path / "other.sqlite"
    code, _, err = run_cli(capsys, "evaluate", str(run), "--device", "cpu", "--registry", str(elsewhere))
    assert code == 0, err
    code, out, err = run_cli(capsys, "runs", "list", "--json", "--registry", str(elsewhere))
    assert code == 0, err
    assert [row["path"] for row in json.loads(out)] == [str(run.resolve())]
