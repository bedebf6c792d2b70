"""The dense models' hand-written epoch (mnistlab.fastpath) against the autograd epoch, its oracle.

Both train from the same seed on the same shuffled batches; after an epoch the weights, the optimizer's
buffers and the reported (loss, accuracy) must agree to fp32 rounding (bf16 rounding under bf16). The oracle is
training._train_epoch_autograd, the loop every other model uses, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mnistlab import fastpath, training
from mnistlab.callbacks import Callback, CallbackList
from mnistlab.config import TrainConfig
from mnistlab.data import Dataset, load_dataset
from mnistlab.models import build_model, weights_bytes
from tests.conftest import write_dataset_dir


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    # 700 images: 10 full batches of 64 and a last one of 60, so the short last batch is covered.
    return load_dataset(data_dir=write_dataset_dir(tmp_path_factory.mktemp("fastpath"), n_train=700, n_test=64))


class StepLog(Callback):
    """Records every on_step call and the running figures it can read."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.running: list[tuple[float, float]] = []

    def on_step(self, *, step: int, steps: int, running) -> None:  # type: ignore[no-untyped-def]
        self.steps.append((step, steps))
        self.running.append(running())


def _loop(config: TrainConfig, dataset: Dataset) -> training._Loop:
    train_idx, val_idx = training._split(config, dataset)
    return training._setup(config, dataset, torch.device("cpu"), train_idx, val_idx, CallbackList([]))


def _both(config: TrainConfig, dataset: Dataset, epochs: int = 2) -> tuple[training._Loop, training._Loop,
                                                                           list[tuple[float, float]],
                                                                           list[tuple[float, float]]]:
    oracle, fast = _loop(config, dataset), _loop(config, dataset)
    assert fastpath.dense_layers(fast.model, fast.optimizer) is not None  # the fast path is really taken
    oracle_rows, fast_rows = [], []
    for _ in range(epochs):
        oracle_rows.append(training._train_epoch_autograd(oracle, CallbackList([])))
        fast_rows.append(training._train_epoch(fast, CallbackList([])))
        if oracle.schedule is not None:
            oracle.schedule.epoch_end(0.0)
            assert fast.schedule is not None
            fast.schedule.epoch_end(0.0)
    return oracle, fast, oracle_rows, fast_rows


CASES = [
    ("softmax", {}),
    ("mlp", {"precision": "fp32"}),
    ("mlp", {"precision": "fp32", "optimizer": "adam", "schedule": "onecycle", "label_smoothing": 0.1}),
    ("mlp", {"precision": "fp32", "optimizer": "sgd", "lr": 0.05, "weight_decay": None}),
    ("mlp", {"precision": "fp32", "optimizer": "adam", "weight_decay": 0.01, "val_split": 0.1}),
    ("mlp", {"precision": "fp32", "epoch_fraction": 0.5}),  # 350 of the 700 images an epoch: 6 steps, not 11
]


@pytest.mark.parametrize(("model", "overrides"), CASES, ids=lambda v: str(v))
def test_weights_and_state_match_the_autograd_epoch(digits: Dataset, model: str, overrides: dict) -> None:
    config = TrainConfig.for_model(model, batch_size=64, device="cpu", seed=3, **overrides)
    oracle, fast, oracle_rows, fast_rows = _both(config, digits)
    assert oracle.optimizer.steps == fast.optimizer.steps == 2 * oracle.steps
    for (name, want), got in zip(oracle.model.state_dict().items(), fast.model.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    for name in oracle.optimizer.BUFFERS:
        for want, got in zip(getattr(oracle.optimizer, name), getattr(fast.optimizer, name), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.array(fast_rows), np.array(oracle_rows), rtol=1e-5)
    assert float(fast.optimizer.lr) == float(oracle.optimizer.lr)  # the schedule stepped as often
    # The epoch's flat buffers are gone: each weight owns its storage again (safetensors refuses shared ones)
    # and the next epoch's shuffle draws from the same generator state.
    params = list(fast.model.parameters())
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)
    weights_bytes(fast.model)
    assert torch.equal(fast.shuffle.get_state(), oracle.shuffle.get_state())


def test_bf16_matches_autocast_within_bf16_rounding(digits: Dataset) -> None:
    config = TrainConfig.for_model("mlp", batch_size=64, device="cpu", seed=1, precision="bf16")
    oracle, fast, oracle_rows, fast_rows = _both(config, digits, epochs=1)
    if oracle.precision != "bf16":
        pytest.skip("this CPU has no native bf16: both paths ran fp32 (covered above)")
    for want, got in zip(oracle.model.parameters(), fast.model.parameters(), strict=True):
        # 11 RMSprop steps of bf16 products: the paths sum in different orders, so bf16-level differences.
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(np.array(fast_rows), np.array(oracle_rows), rtol=2e-2)


class FlushLog(Callback):
    """Records, at every step, whether the training thread flushes denormals; can fail a step on purpose."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.flushing: list[bool] = []
        self.fail_at = fail_at

    def on_step(self, *, step: int, steps: int, running) -> None:  # type: ignore[no-untyped-def]
        self.flushing.append(fastpath._flushing_denormals())
        if step == self.fail_at:
            raise RuntimeError("a callback failing mid-epoch")


@pytest.fixture
def flush_mode() -> Iterator[None]:
    """Skips where the CPU has no flush mode; leaves the mode as the test found it."""
    was = fastpath._flushing_denormals()
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode")
    torch.set_flush_denormal(was)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the dense recipes' setting; with more the epoch does not flush
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(was)


@pytest.mark.usefixtures("flush_mode")
def test_the_epoch_flushes_denormals_and_restores_the_mode_even_when_it_fails(digits: Dataset) -> None:
    config = TrainConfig.for_model("softmax", batch_size=64, device="cpu", seed=2)
    for before in (False, True):
        torch.set_flush_denormal(before)
        log = FlushLog()
        training._train_epoch(_loop(config, digits), CallbackList([log]))
        assert log.flushing == [True] * 11  # every step of the real epoch ran flushed
        assert fastpath._flushing_denormals() is before
        failing = FlushLog(fail_at=3)
        with pytest.raises(RuntimeError, match="mid-epoch"):
            training._train_epoch(_loop(config, digits), CallbackList([failing]))
        assert failing.flushing == [True] * 3 and fastpath._flushing_denormals() is before
    torch.set_num_threads(2)  # OpenMP workers keep their own mode: then the epoch leaves it alone
    log = FlushLog()
    training._train_epoch(_loop(config, digits), CallbackList([log]))
    assert log.flushing == [True] * 11  # the mode as it was (True, from the loop above)
    torch.set_flush_denormal(False)
    log = FlushLog()
    training._train_epoch(_loop(config, digits), CallbackList([log]))
    assert log.flushing == [False] * 11


@pytest.mark.usefixtures("flush_mode")
@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_flushing_denormal_state_changes_no_update_even_when_a_gradient_meets_it(digits: Dataset,
                                                                                  optimizer: str) -> None:
    """Weights of never-lit pixels get exactly zero gradient, so their optimizer state only decays: seeded with
    denormals, it stays denormal without flushing (the oracle) and is 0 in the fast path, which proves the
    flush ran. Pixels lit in one image only meet that denormal state with a real gradient once: their updates,
    like every other weight's, still end where the oracle's do."""
    torch.set_flush_denormal(False)
    config = TrainConfig.for_model("mlp", batch_size=64, device="cpu", seed=4, precision="fp32",
                                   optimizer=optimizer)
    tiny = torch.finfo(torch.float32).tiny
    oracle, fast = _loop(config, digits), _loop(config, digits)
    for loop in (oracle, fast):
        dark = loop.x_train.clone()
        pixels = dark.view(dark.shape[0], -1)
        pixels[:, :300] = 0  # the first 300 pixels never lit
        lit_once = pixels[5, 300:350].clone()
        pixels[:, 300:350] = 0
        pixels[5, 300:350] = lit_once  # the next 50 lit in one image of the 700
        assert bool((lit_once > 0).all())
        loop.x_train = dark
        for name in loop.optimizer.BUFFERS:
            buffers = getattr(loop.optimizer, name)
            buffers[0] = torch.zeros_like(loop.model[1].weight) if buffers[0] is None else buffers[0]
            buffers[0][:, :350] = tiny / 3
    training._train_epoch_autograd(oracle, CallbackList([]))
    training._train_epoch(fast, CallbackList([]))
    for name in oracle.optimizer.BUFFERS:
        kept = getattr(oracle.optimizer, name)[0][:, :300]
        flushed = getattr(fast.optimizer, name)[0][:, :300]
        assert bool(((kept > 0) & (kept < tiny)).all()), name  # still denormal where not flushed
        assert bool((flushed == 0).all()), name
    for want, got in zip(oracle.model.parameters(), fast.model.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert fastpath._flushing_denormals() is False


def test_progress_sees_every_step_and_running_means(digits: Dataset) -> None:
    config = TrainConfig.for_model("softmax", batch_size=64, device="cpu", seed=0)
    oracle, fast = _loop(config, digits), _loop(config, digits)
    oracle_log, fast_log = StepLog(), StepLog()
    training._train_epoch_autograd(oracle, CallbackList([oracle_log]))
    training._train_epoch(fast, CallbackList([fast_log]))
    assert fast_log.steps == oracle_log.steps == [(s, 11) for s in range(1, 12)]
    np.testing.assert_allclose(np.array(fast_log.running), np.array(oracle_log.running), rtol=1e-5)


def test_other_models_and_frozen_layers_fall_back_to_autograd() -> None:
    from mnistlab.training import build_optimizer

    def plan(model: nn.Module) -> fastpath.DenseNet | None:
        return fastpath.dense_layers(model, build_optimizer("rmsprop", model.parameters(), lr=1e-3))

    assert plan(build_model("softmax")) is not None
    mlp = plan(build_model("mlp"))
    assert mlp is not None and len(mlp.layers) == 3
    assert plan(build_model("cnn")) is None
    assert plan(build_model("fast")) is None
    frozen = build_model("mlp")
    frozen[1].weight.requires_grad_(False)
    assert plan(frozen) is None
    assert plan(nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Tanh(), nn.Linear(10, 10))) is None
    assert plan(nn.Sequential(nn.Flatten(), nn.Linear(784, 10, bias=False))) is None
    # An optimizer over other parameters than the model's own, in its order: not flattened.
    model = build_model("mlp")
    other = build_optimizer("rmsprop", list(model.parameters())[::-1], lr=1e-3)
    assert fastpath.dense_layers(model, other) is None


def test_a_whole_run_through_fit_is_the_same_as_before(digits: Dataset, tmp_path: Path) -> None:
    """fit() takes the fast path and still writes a complete, resumable run with the oracle's figures."""
    config = TrainConfig.for_model("mlp", epochs=2, batch_size=64, device="cpu", precision="fp32", seed=5)
    result = training.fit(config, run_dir=tmp_path / "run", dataset=digits)
    oracle = _loop(config, digits)
    rows = [training._train_epoch_autograd(oracle, CallbackList([])) for _ in range(2)]
    np.testing.assert_allclose([(r.loss, r.accuracy) for r in result.history], rows, rtol=1e-5)
    for want, got in zip(oracle.model.state_dict().values(), result.model.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
