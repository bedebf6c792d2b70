"""Speed levers that must not change what is computed: precision choice, schedules, the fast recipe."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mnistlab import runs, train
from mnistlab.cli import main
from mnistlab.config import TrainConfig
from mnistlab.data import Split, load_dataset
from mnistlab.errors import MnistlabError
from mnistlab.models import build_model, count_parameters, summarize
from mnistlab.train import build_schedule, fit, resolve_precision

CPU = torch.device("cpu")


def test_precision_fp32_is_always_honoured() -> None:
    assert resolve_precision("fp32", CPU) == ("fp32", None)


def test_precision_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == ("bf16", None)
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == ("fp32", None)


def test_bf16_without_hardware_support_falls_back_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    precision, note = resolve_precision("bf16", CPU)
    assert precision == "fp32"
    assert note is not None and "no native bf16" in note and "fp32" in note


def test_cli_prints_the_fallback_note_and_records_fp32(monkeypatch, capsys, tmp_path: Path,
                                                        tiny_data_dir: Path) -> None:
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    code = main(["train", "softmax", "--epochs", "1", "--precision", "bf16", "--device", "cpu",
                 "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "no native bf16" in out
    assert json.loads((tmp_path / "r" / runs.METRICS_FILE).read_text())["precision"] == "fp32"
    assert json.loads((tmp_path / "r" / runs.MODEL_FILE).read_text())["precision"] == "fp32"


def test_invalid_precision_and_schedule_flags(capsys) -> None:
    assert main(["train", "fast", "--precision", "fp8"]) == 2
    assert "--precision 'fp8'" in capsys.readouterr().err
    assert main(["train", "fast", "--schedule", "cosine"]) == 2
    assert "--schedule 'cosine'" in capsys.readouterr().err
    with pytest.raises(MnistlabError, match="label-smoothing"):
        TrainConfig.for_model("fast", label_smoothing=1.0)


def test_onecycle_schedule_shape() -> None:
    """Warm-up over the first 25% of steps to the peak lr, then annealing to (almost) zero."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=5e-3)
    schedule = build_schedule("onecycle", optimizer, lr=5e-3, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    peak = max(range(100), key=lrs.__getitem__)
    assert abs(peak - 25) <= 1
    assert lrs[peak] == pytest.approx(5e-3)
    assert lrs[0] == pytest.approx(5e-3 / 25)       # OneCycle's default div_factor
    assert lrs[-1] < 1e-5
    assert all(a <= b for a, b in itertools.pairwise(lrs[:peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[peak:]))


def test_constant_schedule_is_none() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    assert build_schedule("constant", optimizer, lr=0.1, total_steps=10) is None


def test_fast_recipe_is_fixed_in_code() -> None:
    config = TrainConfig.for_model("fast")
    assert (config.epochs, config.batch_size, config.optimizer, config.schedule) == (1, 256, "adam", "onecycle")
    assert config.lr == 5e-3


def test_fast_model_shapes_and_size() -> None:
    model = build_model("fast")
    summary = summarize(model, name="fast")
    convs = [row.output_shape for row in summary.layers if row.kind == "Conv2d"]
    assert convs == [(None, 32, 14, 14), (None, 64, 14, 14), (None, 128, 7, 7)]
    # convs without bias (BatchNorm follows), BatchNorm scale+shift, the classifier.
    expected = (32 * 16) + (64 * 32 * 9) + (128 * 64 * 9) + 2 * (32 + 64 + 128) + (1152 * 10 + 10)
    assert count_parameters(model) == expected
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3


def test_fast_on_a_fraction_of_an_epoch_of_real_mnist(tmp_path: Path, mnist) -> None:
    """A fifth of the training set in one one-cycle pass (batch 64, so that the schedule still has ~190 steps):
    the recipe is already far past what a linear model reaches."""
    subset = mnist.train.subset(slice(0, 12_000))
    small = dataclasses.replace(mnist, splits={"train": Split(subset.images, subset.labels), "test": mnist.test})
    result = fit(TrainConfig.for_model("fast", batch_size=64, device="cpu"), run_dir=tmp_path / "fast",
                 dataset=small)
    assert result.history[0].epoch == 1
    assert result.test.accuracy >= 0.96


def test_channels_last_and_bf16_eval_agree_with_plain_fp32(tmp_path: Path, tiny_data_dir: Path) -> None:
    """The fast layout/precision path computes the same predictions as a plain fp32 pass (up to bf16 noise)."""
    from mnistlab.evaluate import predict_logits

    dataset = load_dataset(data_dir=tiny_data_dir)
    run = fit(TrainConfig.for_model("cnn", epochs=1, batch_size=32, device="cpu"), run_dir=tmp_path / "r",
              dataset=dataset).run_dir
    from mnistlab.models import load_trained_model

    model, _ = load_trained_model(run)
    fast = predict_logits(model, dataset.test.images, precision="bf16")
    plain_model = build_model("cnn")
    plain_model.load_state_dict(model.state_dict())
    plain = predict_logits(plain_model.to(memory_format=torch.contiguous_format), dataset.test.images)
    assert (fast.argmax(1) == plain.argmax(1)).float().mean() >= 0.98
    torch.testing.assert_close(fast, plain, atol=0.1, rtol=0.05)


def test_bad_schedule_name_in_library() -> None:
    with pytest.raises(MnistlabError, match="--schedule"):
        build_schedule("cosine", torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), lr=0.1, total_steps=5)
