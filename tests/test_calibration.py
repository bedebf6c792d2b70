"""Honest confidence: temperature scaling, the "not sure" threshold and input-gradient saliency.

Oracles independent of the code under test: synthetic logits whose true temperature is known (labels drawn from
softmax(z), shown as z * k: the fitted T must come back as k), a brute-force grid over T for the NLL minimum,
a hand-worked threshold example, and the analytic input gradient of a linear softmax model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mnistlab import api, metrics
from mnistlab.analysis import calibrate_run
from mnistlab.calibration import (
    CALIBRATION_JSON,
    CalibrationRecord,
    StaleCalibration,
    fit_calibration,
    fit_temperature,
    load_calibration,
    not_sure_threshold,
    scaled_nll,
)
from mnistlab.errors import MnistlabError
from mnistlab.predict import Predictor
from mnistlab.runs import file_sha256
from mnistlab.saliency import input_gradient_saliency
from tests.clitools import assert_one_line_error, run_cli


def sampled(n: int, k: int = 10, *, seed: int, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """True logits z and labels drawn from softmax(z): a perfectly calibrated model's logits."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, size=(n, k))
    p = metrics.softmax(z)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, labels


# ----------------------------------------------------------------------------------------- temperature
@pytest.mark.parametrize("k", [0.5, 2.5, 4.0])
def test_fit_recovers_a_known_temperature(k: float) -> None:
    z, labels = sampled(40_000, seed=1)
    assert fit_temperature(z * k, labels) == pytest.approx(k, rel=0.04)


def test_temperature_is_one_when_already_calibrated() -> None:
    z, labels = sampled(40_000, seed=2)
    assert fit_temperature(z, labels) == pytest.approx(1.0, abs=0.03)


def test_scaling_lowers_nll_and_ece_on_an_over_confident_case() -> None:
    # Over-confident: labels follow softmax(z), the model says softmax(5 z).
    z, labels = sampled(20_000, seed=3)
    record = fit_calibration(5.0 * z, labels, target_accuracy=0.9)
    assert record.temperature > 3.5
    assert record.nll_after < record.nll_before - 0.5
    assert record.ece_after < record.ece_before / 3
    # The fitted T is the NLL minimum: no T on a fine grid does better (brute force, not the optimiser).
    grid = np.exp(np.linspace(np.log(0.5), np.log(20), 400))
    best_on_grid = min(scaled_nll(5.0 * z, labels, t) for t in grid)
    assert record.nll_after <= best_on_grid + 1e-6
    # Scaling never changes the predicted class.
    assert (metrics.softmax(5.0 * z / record.temperature).argmax(1) == z.argmax(1)).all()


def test_threshold_rule_on_a_hand_worked_case() -> None:
    confidence = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5]
    correct = [True, True, False, True, True, False]
    # Answering the top n: accuracies 1, 1, 2/3, 3/4, 4/5, 4/6.
    assert not_sure_threshold(confidence, correct, target_accuracy=1.0) == 0.9
    assert not_sure_threshold(confidence, correct, target_accuracy=0.8) == 0.6
    assert not_sure_threshold(confidence, correct, target_accuracy=0.75) == 0.6
    assert not_sure_threshold(confidence, correct, target_accuracy=0.6) == 0.5
    with pytest.raises(MnistlabError, match="target_accuracy"):
        not_sure_threshold([0.9, 0.8], [False, True], target_accuracy=0.99)
    # Ties: a threshold never splits images of equal confidence.
    # (answering at 0.8 takes both 0.8s: accuracy 2/3, under the target, though the first 0.8 alone would pass)
    assert not_sure_threshold([0.9, 0.8, 0.8], [True, True, False], target_accuracy=0.9) == 0.9


# ------------------------------------------------------------------------------------------- on a run
@pytest.fixture()
def calibrated_run(trained_mlp_run: Path, tmp_path: Path, mnist) -> Path:
    """A copy of the 2-epoch MLP (val_split 0.1), calibrated (the shared fixture stays uncalibrated)."""
    run = Path(shutil.copytree(trained_mlp_run, tmp_path / "mlp"))
    calibrate_run(run, device="cpu", target_accuracy=0.99, dataset=mnist)
    return run


def test_calibrate_run_fits_on_val_and_round_trips(calibrated_run: Path, mnist) -> None:
    from mnistlab.analysis import run_scores

    data = json.loads((calibrated_run / CALIBRATION_JSON).read_text())
    record = CalibrationRecord.from_dict(data)
    assert record.split == "val" and record.count == 6000
    assert record.weights_sha256 == file_sha256(calibrated_run / "model.safetensors")
    assert record.nll_after <= record.nll_before
    # Recomputed here from the val logits: the same T minimises the NLL, the threshold meets its target.
    scored = run_scores(calibrated_run, split="val", device="cpu", dataset=mnist)
    assert scaled_nll(scored.scores, scored.labels, record.temperature) == pytest.approx(record.nll_after)
    for t in (record.temperature * 0.9, record.temperature * 1.1):
        assert scaled_nll(scored.scores, scored.labels, t) > record.nll_after
    p = metrics.softmax(scored.scores / record.temperature)
    answered = p.max(1) >= record.threshold
    assert (p.argmax(1) == scored.labels)[answered].mean() >= 0.99
    assert load_calibration(calibrated_run, weights_sha256=record.weights_sha256) == record


def test_calibration_is_refused_for_other_weights(calibrated_run: Path) -> None:
    weights = calibrated_run / "model.safetensors"
    with pytest.raises(StaleCalibration, match="mnistlab calibrate"):
        load_calibration(calibrated_run, weights_sha256="0" * 64)
    # The run's weights change (a retrain or resume writes new ones): predictions answer uncalibrated and say why.
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 0.01
    save_file(tensors, weights)
    predictor = Predictor(calibrated_run)
    assert predictor.calibration is None
    assert "other weights" in predictor.info()["calibration"]["note"]


def test_run_without_val_split_is_refused(trained_mlp_run: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = Path(shutil.copytree(trained_mlp_run, tmp_path / "no-val"))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "val_split": 0.0}))
    code, _, err = run_cli(capsys, "calibrate", str(run), "--device", "cpu")
    assert_one_line_error(code, err, "without a validation split", "--val-split", "test split")
    assert not (run / CALIBRATION_JSON).exists()


def test_calibrated_predictor_scales_the_logits(calibrated_run: Path, mnist) -> None:
    from mnistlab.inference import load_network

    record = CalibrationRecord.from_dict(json.loads((calibrated_run / CALIBRATION_JSON).read_text()))
    images = mnist.split("test").images[:64]
    logits = load_network(calibrated_run, device="cpu").logits(images).numpy().astype(np.float64)
    predictions = Predictor(calibrated_run).predict(images)
    expected = metrics.softmax(logits / record.temperature)
    np.testing.assert_allclose([p.probabilities for p in predictions], expected, atol=1e-12)
    assert [p.not_sure for p in predictions] == list(expected.max(1) < record.threshold)
    assert all(p.threshold == record.threshold and p.temperature == record.temperature for p in predictions)


def test_not_sure_path_in_the_api(calibrated_run: Path, mnist) -> None:
    run = api.load(calibrated_run, registry=False)
    digit = mnist.split("test").images[0]          # a clear 7
    [clear] = run.predict(digit)
    assert not clear.not_sure and clear.answer == clear.name == "7"
    # A flat-probability input: the same run with a huge temperature makes every class about equally likely.
    data = json.loads((calibrated_run / CALIBRATION_JSON).read_text())
    (calibrated_run / CALIBRATION_JSON).write_text(json.dumps({**data, "temperature": 100.0}))
    [flat] = api.load(calibrated_run, registry=False).predict(digit)
    assert max(flat.probabilities) < 0.2 < data["threshold"]
    assert flat.not_sure and flat.answer == "not sure"
    answer = flat.to_dict(top=3)
    assert answer["not_sure"] is True and answer["answer"] == "not sure" and len(answer["top"]) == 3
    assert answer["threshold"] == pytest.approx(data["threshold"], abs=1e-6)


def test_uncalibrated_runs_behave_as_before(trained_mlp_run: Path, mnist) -> None:
    [prediction] = api.load(trained_mlp_run, registry=False).predict(mnist.split("test").images[0])
    assert prediction.not_sure is False and prediction.threshold is None and prediction.temperature is None
    assert prediction.to_dict()["answer"] == prediction.name


def test_server_json_says_not_sure(calibrated_run: Path, mnist) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from mnistlab.serve import create_app

    data = json.loads((calibrated_run / CALIBRATION_JSON).read_text())
    (calibrated_run / CALIBRATION_JSON).write_text(json.dumps({**data, "temperature": 100.0}))
    digit = mnist.split("test").images[0]
    with TestClient(create_app(run_dir=calibrated_run)) as client:
        answer = client.post("/api/predict", json={"pixels": digit.tolist()}).json()
        info = client.get("/api/model").json()
    assert answer["not_sure"] is True and answer["answer"] == "not sure"
    probabilities = answer["probabilities"]
    assert max(probabilities) < 0.2 < data["threshold"]
    assert [t["class"] for t in answer["top"]] == sorted(range(10), key=lambda i: (-probabilities[i], i))[:3]
    saliency = np.array(answer["saliency"])
    assert saliency.shape == (28, 28) and saliency.min() >= 0 and saliency.max() == pytest.approx(1.0)
    assert info.get("calibration", {}).get("calibrated") is True


def test_evaluate_reports_ece_before_and_after(calibrated_run: Path, mnist) -> None:
    evaluation = api.load(calibrated_run, registry=False).evaluate(split="test", device="cpu", registry=False)
    scaled = evaluation.to_dict()["temperature_scaling"]
    record = CalibrationRecord.from_dict(json.loads((calibrated_run / CALIBRATION_JSON).read_text()))
    assert scaled["temperature"] == record.temperature and scaled["fitted_on"] == "val"
    assert scaled["ece_before"] == pytest.approx(evaluation.calibration.ece)
    labels = mnist.split("test").labels.astype(np.int64)
    from mnistlab.inference import load_network

    logits = load_network(calibrated_run, device="cpu").logits(mnist.split("test").images).numpy().astype(float)
    p = metrics.softmax(logits / record.temperature)
    assert scaled["ece_after"] == pytest.approx(metrics.calibration(p.max(1), p.argmax(1) == labels).ece)
    assert scaled["nll_after"] <= scaled["nll_before"] + 1e-3
    assert "ECE after temperature scaling" in evaluation.to_html()
    assert "saliency of the most confident mistakes" in evaluation.to_html()


# --------------------------------------------------------------------------------------------- saliency
def test_saliency_of_a_linear_softmax_model_is_the_analytic_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    maps = input_gradient_saliency(model, images, device="cpu")
    w = model[1].weight.detach().double().numpy()
    b = model[1].bias.detach().double().numpy()
    x = images.reshape(5, -1).astype(np.float64) / 255.0
    p = metrics.softmax(x @ w.T + b)
    for i in range(5):
        c = int(p[i].argmax())
        grad = np.abs(w[c] - p[i] @ w)    # d log p_c / dx = W_c - sum_k p_k W_k (x in [0, 1])
        np.testing.assert_allclose(maps[i].ravel(), grad / grad.max(), atol=1e-5)
    # Another class when asked: the gradient of that class's log-probability.
    maps_for_3 = input_gradient_saliency(model, images, classes=[3] * 5, device="cpu")
    grad3 = np.abs(w[3] - p[0] @ w)
    np.testing.assert_allclose(maps_for_3[0].ravel(), grad3 / grad3.max(), atol=1e-5)


def test_saliency_of_a_cnn_per_image_and_batched(mnist) -> None:
    from mnistlab.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn").eval()
    images = mnist.split("test").images[:6]
    maps = input_gradient_saliency(model, images, device="cpu")
    assert maps.shape == (6, 28, 28) and maps.dtype == np.float64
    assert (maps >= 0).all() and np.allclose(maps.reshape(6, -1).max(1), 1.0)
    # Each image's map is its own: the same alone as in a batch (eval mode, no cross-image terms).
    for i in (0, 5):
        np.testing.assert_allclose(input_gradient_saliency(model, images[i], device="cpu")[0], maps[i], atol=1e-5)
    assert model.training is False and all(p.grad is None for p in model.parameters())


def test_saliency_through_the_api(calibrated_run: Path, mnist) -> None:
    images = mnist.split("test").images[:4]
    run = api.load(calibrated_run, registry=False)
    maps = run.saliency(images)
    assert maps.shape == (4, 28, 28) and (maps >= 0).all() and np.allclose(maps.reshape(4, -1).max(1), 1.0)
    [with_map] = run.predict(images[0], saliency=True)
    np.testing.assert_allclose(with_map.saliency, maps[0], atol=1e-5)
    assert np.array(with_map.to_dict()["saliency"]).shape == (28, 28)
    with pytest.raises(MnistlabError, match="onnx"):
        from mnistlab.predict import OnnxPredictor

        OnnxPredictor.predict(object.__new__(OnnxPredictor), images, saliency=True)


def test_predict_cli_says_not_sure_and_offers_guesses(calibrated_run: Path, mnist, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    image = tmp_path / "seven.png"
    Image.fromarray(mnist.split("test").images[0]).save(image)
    code, out, _ = run_cli(capsys, "predict", str(calibrated_run), str(image))
    assert code == 0 and "  7   (7 " in out and "not sure" not in out
    data = json.loads((calibrated_run / CALIBRATION_JSON).read_text())
    (calibrated_run / CALIBRATION_JSON).write_text(json.dumps({**data, "temperature": 100.0}))
    code, out, _ = run_cli(capsys, "predict", str(calibrated_run), str(image))
    assert code == 0 and "not sure   (maybe: 7 " in out
    code, out, _ = run_cli(capsys, "predict", str(calibrated_run), str(image), "--json")
    assert json.loads(out)["results"][0]["not_sure"] is True
    # Stale: other weights' calibration is not applied, and stderr says so once.
    (calibrated_run / CALIBRATION_JSON).write_text(json.dumps({**data, "weights_sha256": "0" * 64}))
    code, out, err = run_cli(capsys, "predict", str(calibrated_run), str(image))
    assert code == 0 and "not sure" not in out and "other weights" in err and "answering uncalibrated" in err
