"""The seed's models: parameter counts, Keras initialisation, shapes, summaries, the optimizers' updates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mnistlab.errors import MnistlabError
from mnistlab.models import build_model, count_parameters, prepare_batch, summarize
from mnistlab.training import build_optimizer

SEED_PARAMS = {"softmax": 7_850, "mlp": 89_610, "cnn": 61_514}


@pytest.mark.parametrize(("name", "params"), SEED_PARAMS.items())
def test_parameter_counts_match_the_seed(name: str, params: int) -> None:
    assert count_parameters(build_model(name)) == params


@pytest.mark.parametrize("name", SEED_PARAMS)
def test_logits_shape(name: str) -> None:
    model = build_model(name)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


def test_unknown_model() -> None:
    with pytest.raises(MnistlabError, match="unknown model 'resnet'"):
        build_model("resnet")


@pytest.mark.parametrize("name", SEED_PARAMS)
def test_keras_glorot_uniform_init(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            weight = module.weight.detach()
            receptive = weight[0, 0].numel() if weight.dim() == 4 else 1
            fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            assert weight.abs().max() <= limit
            # Uniform(-l, l) has standard deviation l/sqrt(3); PyTorch's default (kaiming) would not.
            assert weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.15)
            assert torch.count_nonzero(module.bias) == 0


def test_the_cnn_computes_the_tutorials_function(tmp_path) -> None:
    """mnistlab's CNN (pool before ReLU, channels-last batches) gives the tutorial's conv -> ReLU -> pool logits.

    Oracle: the same weights, saved and read back by hand from the safetensors file, through a functional
    forward written out in Keras' layer order (tests/reference.py).
    """
    from mnistlab.models import weights_bytes
    from tests.reference import cnn_logits, read_safetensors

    torch.manual_seed(1)
    model = build_model("cnn").eval()
    for param in model.parameters():   # non-zero biases, so a wrong layer order would show
        param.data.add_(torch.randn_like(param) * 0.05)
    (tmp_path / "w.safetensors").write_bytes(weights_bytes(model))
    images = np.random.default_rng(0).integers(0, 256, size=(16, 28, 28)).astype(np.uint8)
    with torch.no_grad():
        ours = model(prepare_batch(torch.from_numpy(images), channels_last=True))
    expected = cnn_logits(read_safetensors(tmp_path / "w.safetensors"), images)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_prepare_batch_scales_uint8_to_unit_interval() -> None:
    images = torch.tensor(np.array([[[0, 255], [51, 128]]], dtype=np.uint8))
    out = prepare_batch(images)
    assert out.shape == (1, 1, 2, 2) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy().ravel(), np.array([0, 255, 51, 128], dtype=np.float32) / 255)


def test_summary_shapes_and_totals_cnn() -> None:
    summary = summarize(build_model("cnn"), name="cnn")
    shapes = [(row.kind, row.output_shape, row.params) for row in summary.layers if row.params or row.kind != "ReLU"]
    assert shapes == [
        ("Conv2d", (None, 32, 26, 26), 320),
        ("MaxPool2d", (None, 32, 13, 13), 0),
        ("Conv2d", (None, 64, 11, 11), 18_496),
        ("MaxPool2d", (None, 64, 5, 5), 0),
        ("Conv2d", (None, 64, 3, 3), 36_928),
        ("Flatten", (None, 576), 0),
        ("Linear", (None, 10), 5_770),
    ]
    assert summary.total_params == summary.trainable_params == 61_514
    assert summary.non_trainable_params == 0
    assert summary.input_shape == (None, 1, 28, 28) and summary.output_shape == (None, 10)


def test_summary_mlp_rows() -> None:
    summary = summarize(build_model("mlp"), name="mlp")
    dense = [(row.output_shape, row.params) for row in summary.layers if row.kind == "Linear"]
    assert dense == [((None, 100), 78_500), ((None, 100), 10_100), ((None, 10), 1_010)]


# ----------------------------------------------------------------------------------------- optimizers
def _quadratic_grads(steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(6) for _ in range(steps)]


def test_rmsprop_matches_the_keras_formula() -> None:
    """v = rho v + (1 - rho) g^2 ; w -= lr g / (sqrt(v) + eps), with Keras' rho 0.9, eps 1e-7, lr 1e-3."""
    lr, rho, eps = 1e-3, 0.9, 1e-7
    w0 = np.linspace(-1, 1, 6)
    param = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = build_optimizer("rmsprop", [param], lr=lr)
    w, v = w0.copy(), np.zeros(6)
    for g in _quadratic_grads(5):
        param.grad = torch.tensor(g)
        optimizer.step()
        v = rho * v + (1 - rho) * g * g
        w = w - lr * g / (np.sqrt(v) + eps)
        np.testing.assert_allclose(param.detach().numpy(), w, rtol=1e-12, atol=1e-14)


def test_adam_matches_the_formula_with_keras_epsilon() -> None:
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    w0 = np.linspace(-1, 1, 6)
    param = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = build_optimizer("adam", [param], lr=lr)
    w, m, v = w0.copy(), np.zeros(6), np.zeros(6)
    for t, g in enumerate(_quadratic_grads(4, seed=1), start=1):
        param.grad = torch.tensor(g)
        optimizer.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(param.detach().numpy(), w, rtol=1e-10, atol=1e-13)


def test_sgd_momentum_matches_the_formula() -> None:
    lr, momentum = 0.01, 0.9
    w0 = np.linspace(-1, 1, 6)
    param = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = build_optimizer("sgd", [param], lr=lr)
    w, buf = w0.copy(), None
    for g in _quadratic_grads(4, seed=2):
        param.grad = torch.tensor(g)
        optimizer.step()
        buf = g if buf is None else momentum * buf + g
        w = w - lr * buf
        np.testing.assert_allclose(param.detach().numpy(), w, rtol=1e-12)


def test_unknown_optimizer() -> None:
    with pytest.raises(MnistlabError, match="`optimizer` 'lion'"):
        build_optimizer("lion", [nn.Parameter(torch.zeros(1))], lr=0.1)


def test_fast_model_shapes_and_size() -> None:
    model = build_model("fast")
    summary = summarize(model, name="fast")
    convs = [row.output_shape for row in summary.layers if row.kind == "Conv2d"]
    assert convs == [(None, 16, 14, 14), (None, 32, 14, 14), (None, 64, 7, 7)]
    assert summary.layers[-1].output_shape == (None, 10)
    # convs without bias (BatchNorm follows), BatchNorm scale+shift, the classifier.
    expected = (16 * 16) + (32 * 16 * 9) + (64 * 32 * 9) + 2 * (16 + 32 + 64) + (576 * 10 + 10)
    assert count_parameters(model) == expected
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3


def test_best_model_shapes_and_size() -> None:
    """``best``: fast's strided stem and layout at twice the width, with a second convolution at 7x7."""
    model = build_model("best")
    summary = summarize(model, name="best")
    convs = [row.output_shape for row in summary.layers if row.kind == "Conv2d"]
    assert convs == [(None, 32, 14, 14), (None, 64, 14, 14), (None, 128, 7, 7), (None, 128, 7, 7)]
    assert summary.layers[-1].output_shape == (None, 10)
    expected = (32 * 16) + (64 * 32 * 9) + (128 * 64 * 9) + (128 * 128 * 9) + 2 * (32 + 64 + 128 + 128) \
        + (1152 * 10 + 10)
    assert count_parameters(model) == expected
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_a_custom_run_named_like_a_later_built_in_network_is_one_clear_line(tmp_path) -> None:
    """A user's network registered as ``best`` before mnistlab had a built-in ``best``: rebuilding it (a run's
    loader and an ensemble's call the same check) must say so, not build the built-in network and fail on its
    weights; the built-in record itself still builds."""
    from mnistlab.models import ensemble_from_record

    record = {"name": "best", "custom": True, "family": "network", "num_classes": 10}
    with pytest.raises(MnistlabError, match="custom network named 'best', now the name of a built-in"):
        ensemble_from_record({"members": [{"model": record}]}, where=tmp_path)
    built = ensemble_from_record({"members": [{"model": {**record, "custom": False}}]}, where=tmp_path)
    assert count_parameters(built) == count_parameters(build_model("best"))
