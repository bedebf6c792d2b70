"""benchmarks/fused_stem.py's fused block against its oracle, the stock conv2d -> max_pool2d(2) -> relu.

The benchmark times it against the stock layers; these tests make sure both sides compute the same thing.

Outputs and parameter gradients must agree to fp32 rounding in fp32, and within bf16 rounding under bf16
autocast (measured against an fp64 reference, next to the stock layers' own bf16 error). Ties inside a pooling
window must send the gradient where max_pool2d sends it (the first position in scan order). A training epoch
through the fused block must end at the stock epoch's weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab import training
from mnistlab.callbacks import CallbackList
from mnistlab.config import TrainConfig
from mnistlab.data import Dataset, load_dataset
from mnistlab.models import build_cnn, build_model
from tests.benchtools import load_benchmark
from tests.conftest import write_dataset_dir

fused = load_benchmark("fused_stem")


def _stock(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.relu(F.max_pool2d(F.conv2d(x, weight, bias), 2))


def _digits_like(batch: int, channels: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Mostly-zero images (like MNIST's background) with ink in [0, 1]: many exact ties in the windows."""
    g = torch.Generator().manual_seed(seed)
    ink = torch.rand(batch, channels, *size, generator=g)
    x = ink * (torch.rand(batch, channels, *size, generator=g) > 0.7)
    return x.contiguous(memory_format=torch.channels_last)


def _grads(fn, x, weight, bias, upstream, *, bf16: bool = False):  # type: ignore[no-untyped-def]
    weight = weight.detach().clone().requires_grad_()
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = fn(x, weight, bias)
    out.backward(upstream.to(out.dtype))
    return out.detach(), weight.grad, None if bias is None else bias.grad


SHAPES = [  # (batch, in channels, image size, out channels, kernel, bias)
    (16, 1, (28, 28), 32, 3, True),    # the seed CNN's first block
    (5, 1, (27, 27), 8, 3, True),      # an odd size: max_pool2d drops the last row and column
    (4, 3, (20, 17), 6, 5, False),     # several input channels, a 5x5 kernel, no bias, a non-square image
]


@pytest.mark.parametrize(("batch", "cin", "size", "cout", "k", "with_bias"), SHAPES)
def test_fp32_matches_the_stock_layers(batch: int, cin: int, size: tuple[int, int], cout: int, k: int,
                                       with_bias: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x = _digits_like(batch, cin, size, seed=2)
    weight = torch.randn(cout, cin, k, k, generator=g) * 0.3
    bias = torch.randn(cout, generator=g) * 0.1 if with_bias else None
    want = _stock(x, weight, bias)
    upstream = torch.randn(want.shape, generator=g)
    stock = _grads(_stock, x, weight, bias, upstream)
    mine = _grads(fused.conv_pool_relu, x, weight, bias, upstream)
    assert mine[0].shape == want.shape and mine[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(mine[0], stock[0], rtol=1e-6, atol=1e-6)
    # Weight gradients sum batch x positions products in another order: fp32 rounding of the largest value.
    torch.testing.assert_close(mine[1], stock[1], rtol=1e-4, atol=1e-5 * stock[1].abs().max().item())
    if with_bias:
        torch.testing.assert_close(mine[2], stock[2], rtol=1e-4, atol=1e-5 * stock[2].abs().max().item())
    else:
        assert mine[2] is None


def test_bf16_error_is_the_stock_layers_bf16_error() -> None:
    g = torch.Generator().manual_seed(4)
    x = _digits_like(64, 1, (28, 28), seed=5)
    weight, bias = torch.randn(32, 1, 3, 3, generator=g) * 0.3, torch.randn(32, generator=g) * 0.1
    upstream = torch.randn(64, 32, 13, 13, generator=g)
    exact = _grads(_stock, x.double(), weight.double(), bias.double(), upstream.double())
    stock = _grads(_stock, x, weight, bias, upstream, bf16=True)
    mine = _grads(fused.conv_pool_relu, x, weight, bias, upstream, bf16=True)
    assert mine[0].dtype == stock[0].dtype == torch.bfloat16
    assert mine[1].dtype == mine[2].dtype == torch.float32  # gradients arrive in the parameters' dtype
    for got, ref, want in zip(mine, stock, exact, strict=True):
        scale = want.abs().max().item()
        mine_err = (got.double() - want).abs().max().item() / scale
        stock_err = (ref.double() - want).abs().max().item() / scale
        # The stock bf16 weight gradient is itself 5% off (the upstream gradient rounds to bf16): the fused
        # one must be no worse than that, and close to it (measured: 0.25% of the largest value).
        assert mine_err <= 1.1 * stock_err + 1e-3
        assert (got.double() - ref.double()).abs().max().item() / scale < 1e-2


def test_ties_send_the_gradient_where_max_pool2d_does() -> None:
    # A constant image: all four positions of every window tie exactly, with non-zero patches, so the weight
    # gradient depends on which position receives the gradient. max_pool2d picks the first in scan order.
    # A third filter reads only its centre pixel, and the border rows differ: windows along the top and left
    # edges tie in that filter's output while their input patches differ.
    x = torch.full((2, 1, 8, 8), 0.5)
    x[:, :, 0, :], x[:, :, :, 0] = 0.9, 0.1
    x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.ones(3, 1, 3, 3)
    weight[1, 0, 0, 0] = -1.0
    weight[2] = 0.0
    weight[2, 0, 1, 1] = 1.0
    bias = torch.tensor([0.1, 0.2, 0.3])
    upstream = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3, 3)
    stock = _grads(_stock, x, weight, bias, upstream)
    mine = _grads(fused.conv_pool_relu, x, weight, bias, upstream)
    for got, want in zip(mine, stock, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # a misrouted tie moves it by ~10%
    # The case really has ties between different patches: windows whose four outputs are equal while their
    # input patches are not, so sending the gradient elsewhere would change the weight gradient.
    windows = F.conv2d(x, weight, bias)[:, :, :6, :6].unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    patches = F.unfold(x, 3).view(2, 9, 6, 6).unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)   # (2, 9, 3, 3, 4)
    tied = (windows == windows[..., :1]).all(-1)                                          # (2, 3, 3, 3)
    differ = (patches != patches[..., :1]).any(-1).any(1)                                 # (2, 3, 3)
    assert (tied & differ.unsqueeze(1)).sum() >= 4


def test_an_input_that_needs_a_gradient_is_refused_and_the_wrapper_falls_back() -> None:
    model = build_cnn()
    x = _digits_like(3, 1, (28, 28), seed=6).requires_grad_()
    with pytest.raises(ValueError, match="gradient"):
        fused.conv_pool_relu(x, model[0].weight, model[0].bias)
    wrapped = fused.FusedStart(model)
    out = wrapped(x)                                    # saliency needs the input's gradient: stock layers
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.testing.assert_close(out, model(x))


def test_which_models_take_the_fused_block() -> None:
    assert fused.opens_with_block(build_cnn())
    assert isinstance(fused.for_training(build_cnn()), fused.FusedStart)
    for name in ("softmax", "mlp", "fast", "best"):
        model = build_model(name)
        assert not fused.opens_with_block(model) and fused.for_training(model) is model
    ceil = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, ceil_mode=True), nn.ReLU(), nn.Flatten())
    padded = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten())
    relu_first = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    for model in (ceil, padded, relu_first):
        assert not fused.opens_with_block(model)
    with pytest.raises(ValueError):
        fused.FusedStart(relu_first)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return load_dataset(data_dir=write_dataset_dir(tmp_path_factory.mktemp("fused"), n_train=300, n_test=32))


def _epoch(config: TrainConfig, dataset: Dataset, *, fuse: bool) -> tuple[training._Loop, dict[str, torch.Tensor]]:
    train_idx, val_idx = training._split(config, dataset)
    loop = training._setup(config, dataset, torch.device("cpu"), train_idx, val_idx, CallbackList([]))
    if fuse:
        loop.net = fused.for_training(loop.model)
        assert isinstance(loop.net, fused.FusedStart)   # the epoch really takes the fused block
    start = {name: value.clone() for name, value in loop.model.state_dict().items()}
    training._train_epoch(loop, CallbackList([]))
    return loop, start


def test_a_training_epoch_ends_at_the_stock_epochs_weights(digits: Dataset) -> None:
    # In fp32. Under bf16 the per-step gradients are compared above; over an epoch, RMSprop's division by
    # sqrt(v) turns their bf16 rounding differences into step differences of up to lr for small gradients
    # (measured: weights 1e-3 to 6e-3 apart after 6 steps that moved them 1.7e-2), as for the fast path.
    config = TrainConfig.for_model("cnn", batch_size=50, device="cpu", seed=7, precision="fp32")
    (oracle, start), (mine, mine_start) = _epoch(config, digits, fuse=False), _epoch(config, digits, fuse=True)
    assert oracle.optimizer.steps == mine.optimizer.steps == 6
    for name, value in start.items():
        torch.testing.assert_close(mine_start[name], value, rtol=0, atol=0)
    tol = {"rtol": 1e-5, "atol": 1e-6}  # measured: 1.6e-7 at most, with every tensor moved by 6e-3 or more
    for name, want in oracle.model.state_dict().items():
        torch.testing.assert_close(mine.model.state_dict()[name], want, msg=name, **tol)
        # Each tensor moved by several times the tolerance: the comparison is not between unchanged weights.
        assert (want - start[name]).abs().max().item() > 1000 * tol["atol"], name
