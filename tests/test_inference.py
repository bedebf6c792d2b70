"""mnistlab.inference: the one scoring path. predict/serve (Predictor) and evaluate agree exactly on every
test image, in the run's own precision, batched or one image at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mnistlab.analysis import run_scores
from mnistlab.inference import evaluate_model, load_network, predict_logits
from mnistlab.models import build_model
from mnistlab.predict import Predictor


@pytest.mark.integration
def test_predict_agrees_with_evaluate_on_every_test_image(trained_cnn_run: Path, mnist) -> None:
    """The conftest CNN ran in bf16 where the CPU has it (AVX512-BF16/AMX), else fp32; either way the
    predictor must give evaluate's answer for all 10,000 images: same argmax, probabilities within 1e-6."""
    scored = run_scores(trained_cnn_run, device="cpu", dataset=mnist)
    predictor = Predictor(trained_cnn_run)
    assert predictor.precision == scored.run.model["precision"]   # the run's precision is honoured
    probabilities = predictor.probabilities(mnist.test.images)
    assert probabilities.shape == (10_000, 10)
    assert np.array_equal(probabilities.argmax(1), scored.scores.argmax(1))
    assert np.abs(probabilities - scored.probabilities).max() <= 1e-6
    # One image at a time (what the server does) gives the same answers as the batches.
    single = np.concatenate([predictor.probabilities(mnist.test.images[i:i + 1]) for i in range(0, 10_000, 97)])
    assert np.array_equal(single.argmax(1), probabilities[::97].argmax(1))
    assert np.abs(single - probabilities[::97]).max() <= 1e-6


def test_precision_changes_the_arithmetic_not_the_answer_shape() -> None:
    torch.manual_seed(0)
    model = build_model("cnn").eval()
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    fp32 = predict_logits(model, images, precision="fp32", batch_size=3)
    bf16 = predict_logits(model, images, precision="bf16", batch_size=3)
    assert fp32.dtype == bf16.dtype == torch.float32 and fp32.shape == (7, 10)
    # Plain torch forward as the oracle for fp32: batching in 3s changes nothing.
    with torch.no_grad():
        oracle = model(torch.tensor(images, dtype=torch.float32)[:, None] / 255.0)
    torch.testing.assert_close(fp32, oracle, rtol=1e-5, atol=1e-5)
    assert not torch.equal(fp32, bf16)          # bf16 autocast really ran (its rounding differs)
    assert not model.training                    # eval mode left as it was


def test_empty_input_gives_an_empty_result_of_the_right_width() -> None:
    model = build_model("mlp")
    logits = predict_logits(model, np.zeros((0, 28, 28), np.uint8))
    assert logits.shape == (0, 10) and model.training   # a model in training mode is put back in it
    score = evaluate_model(model, np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8))
    assert score.count == 0 and np.isnan(score.accuracy)


def test_load_network_uses_the_runs_precision(trained_mlp_run: Path) -> None:
    network = load_network(trained_mlp_run, device="cpu")
    assert network.precision in ("fp32", "bf16") and network.device == torch.device("cpu")
    assert not network.model.training
