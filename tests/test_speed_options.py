"""Speed levers that must not change what is computed: precision choice, schedules, the fast recipe."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mnistlab import device, runs
from mnistlab.cli import main
from mnistlab.config import TrainConfig
from mnistlab.data import Split, load_dataset
from mnistlab.device import resolve_precision
from mnistlab.errors import MnistlabError
from mnistlab.models import build_model, count_parameters, summarize
from mnistlab.training import build_optimizer, build_schedule, fit

CPU = torch.device("cpu")


def test_precision_fp32_is_always_honoured() -> None:
    assert resolve_precision("fp32", CPU) == ("fp32", None)


def test_precision_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == ("bf16", None)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == ("fp32", None)


def test_bf16_without_hardware_support_falls_back_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    precision, note = resolve_precision("bf16", CPU)
    assert precision == "fp32"
    assert note is not None and "no native bf16" in note and "fp32" in note


def test_cli_prints_the_fallback_note_and_records_fp32(monkeypatch, capsys, tmp_path: Path,
                                                        tiny_data_dir: Path) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
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
    with pytest.raises(MnistlabError, match="`label_smoothing`"):
        TrainConfig.for_model("fast", label_smoothing=1.0)


def test_onecycle_schedule_shape() -> None:
    """Warm-up over the first 25% of steps to the peak lr, then annealing to (almost) zero."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer("adam", [param], lr=5e-3)
    schedule = build_schedule("onecycle", optimizer, lr=5e-3, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.lr)
        param.grad = torch.ones(1)
        optimizer.step()
        schedule.step()
    peak = max(range(100), key=lrs.__getitem__)
    assert abs(peak - 25) <= 1
    assert lrs[peak] == pytest.approx(5e-3)
    assert lrs[0] == pytest.approx(5e-3 / 25)       # OneCycle's default div_factor
    assert lrs[-1] < 1e-5
    assert all(a <= b for a, b in itertools.pairwise(lrs[:peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[peak:]))


@pytest.mark.parametrize("total", [7, 40, 235])
def test_onecycle_matches_torch_onecycle_lr(total: int) -> None:
    """Same learning rates and Adam beta1 as torch.optim.lr_scheduler.OneCycleLR at every step."""
    ours_param, torch_param = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    ours = build_optimizer("adam", [ours_param], lr=0.016)
    schedule = build_schedule("onecycle", ours, lr=0.016, total_steps=total)
    reference = torch.optim.Adam([torch_param], lr=0.016)
    torch_schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=0.016, total_steps=total,
                                                         pct_start=0.25)
    for _ in range(total):
        assert ours.lr == pytest.approx(reference.param_groups[0]["lr"], rel=1e-12)
        assert ours.beta1 == pytest.approx(reference.param_groups[0]["betas"][0], rel=1e-12)
        for param in (ours_param, torch_param):
            param.grad = torch.ones(3)
        ours.step()
        reference.step()
        schedule.step()
        if torch_schedule.last_epoch < total - 1:
            torch_schedule.step()


@pytest.mark.parametrize(("name", "make_reference"), [
    ("rmsprop", lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-7)),
    ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.999), eps=1e-7)),
    ("sgd", lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9)),
])
def test_optimizers_match_torch_optim(name: str, make_reference) -> None:
    """Our fused optimizers against torch.optim configured the same way, on a real model's gradients."""
    torch.manual_seed(0)
    model = build_model("cnn")
    twin = build_model("cnn")
    twin.load_state_dict(model.state_dict())
    ours = build_optimizer(name, model.parameters(), lr={"sgd": 1e-2}.get(name, 1e-3))
    reference = make_reference(twin.parameters())
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(5):
        for net, optimizer in ((model, ours), (twin, reference)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    for (key, mine), theirs in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=key)


def test_optimizer_skips_parameters_without_gradients() -> None:
    used, unused = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimizer = build_optimizer("adam", [used, unused], lr=0.1)
    used.grad = torch.ones(2)
    optimizer.step()
    assert torch.all(used < 1) and torch.equal(unused.detach(), torch.ones(2))


def test_training_never_imports_torch_dynamo(tiny_data_dir: Path, tmp_path: Path) -> None:
    """torch.optim's first optimizer imports torch._dynamo (1.5 s); mnistlab's training must not."""
    import subprocess
    import sys

    code = ("import sys; from mnistlab.cli import main\n"
            f"assert main(['train', 'fast', '--epochs', '1', '--batch-size', '64',"
            f" '--data-dir', {str(tiny_data_dir)!r}, '--out', {str(tmp_path / 'r')!r}]) == 0\n"
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_constant_schedule_is_none() -> None:
    optimizer = build_optimizer("sgd", [nn.Parameter(torch.zeros(1))], lr=0.1)
    assert build_schedule("constant", optimizer, lr=0.1, total_steps=10) is None


def test_fast_recipe_is_fixed_in_code() -> None:
    config = TrainConfig.for_model("fast")
    assert (config.epochs, config.batch_size, config.optimizer, config.schedule) == (1, 256, "adam", "onecycle")
    assert config.lr == 1.6e-2 and config.label_smoothing == 0.1


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
    """The fast layout/precision path computes the same predictions as a plain fp32 pass (up to bf16 noise).

    The plain pass shares nothing with the fast one: weights read by hand from weights.safetensors, contiguous
    NCHW input, a functional fp32 forward (tests/reference.py), no autocast, no prepare_batch.
    """
    from mnistlab.inference import predict_logits
    from mnistlab.models import load_trained_model
    from tests.reference import cnn_logits, read_safetensors

    dataset = load_dataset(data_dir=tiny_data_dir)
    run = fit(TrainConfig.for_model("cnn", epochs=1, batch_size=32, device="cpu"), run_dir=tmp_path / "r",
              dataset=dataset).run_dir
    model, _ = load_trained_model(run)
    plain = cnn_logits(read_safetensors(run / runs.WEIGHTS_FILE), dataset.test.images)
    fast = predict_logits(model, dataset.test.images, precision="bf16")
    assert (fast.argmax(1) == plain.argmax(1)).float().mean() >= 0.98
    torch.testing.assert_close(fast, plain, atol=0.1, rtol=0.05)
    # And the channels-last fp32 path matches it to float rounding.
    torch.testing.assert_close(predict_logits(model, dataset.test.images, precision="fp32"), plain,
                               atol=1e-4, rtol=1e-4)


def test_bad_schedule_name_in_library() -> None:
    with pytest.raises(MnistlabError, match="`schedule`"):
        build_schedule("cosine", build_optimizer("sgd", [nn.Parameter(torch.zeros(1))], lr=0.1), lr=0.1,
                       total_steps=5)
