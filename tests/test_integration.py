"""Real MNIST, real training: the accuracy floors a correct implementation must clear in one epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnistlab import runs
from mnistlab.analysis import evaluate_run
from mnistlab.config import TrainConfig
from mnistlab.training import fit

pytestmark = pytest.mark.integration


def test_softmax_one_epoch_reaches_90_percent(tmp_path: Path, mnist) -> None:
    result = fit(TrainConfig.for_model("softmax", epochs=1, device="cpu"), run_dir=tmp_path / "s", dataset=mnist)
    assert result.test.count == 10_000
    assert result.test.accuracy >= 0.90
    # Keras-like running means: the first epoch's training accuracy trails the end-of-epoch test figure.
    assert 0.80 <= result.history[0].accuracy <= result.test.accuracy


def test_cnn_one_epoch_reaches_97_percent(trained_cnn_run: Path) -> None:
    metrics = json.loads((trained_cnn_run / runs.METRICS_FILE).read_text())
    assert metrics["params"] == 61_514
    assert metrics["test_accuracy"] >= 0.97
    reloaded, _ = evaluate_run(trained_cnn_run, device="cpu")
    assert reloaded.accuracy == metrics["test_accuracy"]


def test_mlp_two_epochs_with_validation(trained_mlp_run: Path) -> None:
    history = json.loads((trained_mlp_run / runs.HISTORY_JSON).read_text())
    assert len(history) == 2
    assert history[1]["loss"] < history[0]["loss"]
    assert history[1]["val_accuracy"] >= 0.95
    metrics = json.loads((trained_mlp_run / runs.METRICS_FILE).read_text())
    assert metrics["test_accuracy"] >= 0.95
