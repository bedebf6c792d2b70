"""An experiment for #15 item 3, kept because it was measured: the seed CNN's first block fused, same function.

    python benchmarks/fused_stem.py [--epochs 5] [--threads N]

times a training epoch of the seed CNN (its recipe: bf16, batch 200, Keras RMSprop) through mnistlab's own loop
twice, interleaved, from the same seed: once through the stock layers (what `fit` runs) and once with the first
convolution -> 2x2 max-pool -> ReLU computed by ``conv_pool_relu`` below. **It is not faster end to end**
(benchmarks/RESULTS.md, stop 24), so `fit` does not use it; ``tests/test_fused_stem.py`` checks that it computes
the stock function and gradients, so the measurement compares like with like.

The idea. With stock eager kernels, the first block's time looks like it goes outside the convolution: to
``max_pool2d_with_indices`` over the (B, 32, 26, 26) activation, the zero-filled (B, 32, 26, 26) gradient its
backward scatters into, and the weight gradient over all 26x26 positions, although only the pooled quarter of
them receives a gradient. Here the 2x2 pool is written as four stride-2 convolutions, one per position in the
pooling window (``QUADRANTS``), each producing a (B, C, 13, 13) map directly; the pool is the elementwise
maximum of the four, and the full-resolution activation never exists. Backward routes the pooled gradient to
the winning map with ``threshold_backward`` on saved differences (kept as numbers, not booleans or int64
indices: this CPU's kernels for boolean tensors are several times slower than arithmetic ones), then takes each
map's weight gradient with a stride-2 ``convolution_backward``. Ties go to the earliest position in the
window's scan order, as ``max_pool2d`` does. The block's input must not need a gradient (the network's input).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The positions of a 2x2 pooling window in max_pool2d's scan order (rows first): ties go to the first.
QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run this convolution in (bf16 under CPU autocast), else the input's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class _ConvPoolReLU(torch.autograd.Function):
    """relu(max_pool2d(conv2d(x, weight, bias), 2)) for an input that needs no gradient; see the module."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        dtype = _compute_dtype(x)
        kh, kw = int(weight.shape[2]), int(weight.shape[3])
        out_h, out_w = (int(x.shape[2]) - kh + 1) // 2, (int(x.shape[3]) - kw + 1) // 2
        rows, cols = 2 * (out_h - 1) + kh, 2 * (out_w - 1) + kw   # the input a stride-2 map of that size reads
        with torch.autocast(x.device.type, enabled=False):
            x, w = x.to(dtype), weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            # The pooling window's position (dy, dx) of every pooled output: a stride-2 convolution of the input
            # shifted by (dy, dx). Channels-last copies, so the maps come out in the layout the next layer reads.
            crops = [x[:, :, dy:dy + rows, dx:dx + cols].contiguous(memory_format=torch.channels_last)
                     for dy, dx in QUADRANTS]
            y0, y1, y2, y3 = (F.conv2d(crop, w, b, stride=2) for crop in crops)
            top, bottom = torch.maximum(y0, y1), torch.maximum(y2, y3)
            # Who won, as differences: backward passes a gradient where a difference is > 0 (strictly, so a
            # tie goes to the earlier position). bf16 differences of distinct values are never 0 (subnormals).
            right_top, right_bottom, lower = y1 - y0, y3 - y2, bottom - top
            out = torch.relu(torch.maximum(top, bottom))
        ctx.save_for_backward(*crops, w, right_top, right_bottom, lower, out)
        ctx.has_bias = bias is not None
        ctx.param_dtype = weight.dtype
        return out

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor | None]:
        if ctx.needs_input_grad[0]:
            raise RuntimeError("the fused conv + pool + ReLU gives no gradient for its input")
        *crops, w, right_top, right_bottom, lower, out = ctx.saved_tensors
        relu_backward = torch.ops.aten.threshold_backward
        grad = relu_backward(grads[0].to(out.dtype), out, 0)
        bottom = relu_backward(grad, lower, 0)
        top = grad - bottom
        g1, g3 = relu_backward(top, right_top, 0), relu_backward(bottom, right_bottom, 0)
        weight_grad: torch.Tensor | None = None
        for part, crop in zip((top - g1, g1, bottom - g3, g3), crops, strict=True):
            piece = torch.ops.aten.convolution_backward(
                part, crop, w, None, [2, 2], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1]
            weight_grad = piece.float() if weight_grad is None else weight_grad.add_(piece)
        assert weight_grad is not None
        bias_grad = grad.sum((0, 2, 3), dtype=torch.float32).to(ctx.param_dtype) if ctx.has_bias else None
        return None, weight_grad.to(ctx.param_dtype), bias_grad


def conv_pool_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(max_pool2d(conv2d(x, weight, bias), 2))`` (stride 1, no padding), faster to train through.

    ``x`` (B, C_in, H, W) must not require a gradient; the result is channels-last, in autocast's dtype when
    autocast is on.
    """
    if x.requires_grad:
        raise ValueError("conv_pool_relu: the input must not require a gradient")
    out = _ConvPoolReLU.apply(x, weight, bias)
    assert isinstance(out, torch.Tensor)
    return out


def opens_with_block(model: nn.Module) -> bool:
    """Whether ``model`` is a Sequential opening with Conv2d (stride 1, no padding) -> MaxPool2d(2) -> ReLU."""
    if not isinstance(model, nn.Sequential) or len(model) < 4:
        return False
    conv, pool, relu = model[0], model[1], model[2]
    return (isinstance(conv, nn.Conv2d) and conv.stride == (1, 1) and conv.padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and type(pool) is nn.MaxPool2d and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1)) and not pool.ceil_mode
            and not pool.return_indices and type(relu) is nn.ReLU)


class FusedStart(nn.Module):
    """``model`` with its opening block computed by :func:`conv_pool_relu`; the parameters are ``model``'s own.

    Falls back to the stock layers for an input that needs a gradient (saliency) and off the CPU, where the
    fusion was not measured.
    """

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        if not opens_with_block(model):
            raise ValueError("the model does not open with conv -> 2x2 max-pool -> ReLU")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x`` (B, C, H, W)."""
        conv = self.model[0]
        assert isinstance(conv, nn.Conv2d)
        if x.requires_grad or x.device.type != "cpu":
            return self.model(x)
        return self.model[3:](conv_pool_relu(x, conv.weight, conv.bias))


def for_training(model: nn.Module) -> nn.Module:
    """The fused side's network: :class:`FusedStart` when ``model`` opens with the block, else ``model``."""
    return FusedStart(model) if isinstance(model, nn.Sequential) and opens_with_block(model) else model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cnn recipe's, as fit runs it)")
    args = parser.parse_args()

    from _common import isolate_registry, machine, print_table, write_json
    from mnistlab import training
    from mnistlab.callbacks import CallbackList
    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset

    isolate_registry()
    dataset = load_dataset("mnist")
    config = TrainConfig.for_model("cnn", device="cpu", seed=0)
    threads = args.threads or config.threads or training.DEFAULT_THREADS
    torch.set_num_threads(threads)
    train_idx, val_idx = training._split(config, dataset)
    loops = {side: training._setup(config, dataset, torch.device("cpu"), train_idx, val_idx, CallbackList([]))
             for side in ("stock", "fused")}
    loops["fused"].net = for_training(loops["fused"].model)
    assert isinstance(loops["fused"].net, FusedStart)
    times: dict[str, list[float]] = {"stock": [], "fused": []}
    figures: dict[str, list[tuple[float, float]]] = {"stock": [], "fused": []}
    for _ in range(args.epochs):
        for side, loop in loops.items():
            started = time.perf_counter()
            figures[side].append(training._train_epoch(loop, CallbackList([])))
            times[side].append(time.perf_counter() - started)
    median = {side: statistics.median(values[1:] or values) for side, values in times.items()}
    results = {"machine": machine(), "epochs": args.epochs, "threads": threads, "precision": loops["fused"].precision,
               "epoch_seconds": times, "loss_accuracy": figures, "speedup": median["stock"] / median["fused"]}
    print(f"seed CNN, seconds per epoch (median of epochs 2-{args.epochs}), {threads} thread(s), machine: "
          f"{results['machine']['cpu']} x{results['machine']['cores']}")
    print_table(["stock layers", "fused first block", "speed-up", "train acc stock / fused"],
                [[f"{median['stock']:.3f}", f"{median['fused']:.3f}", f"{results['speedup']:.2f}x",
                  f"{figures['stock'][-1][1]:.4f} / {figures['fused'][-1][1]:.4f}"]])
    print(f"\nwrote {write_json('fused_stem', results)}")


if __name__ == "__main__":
    main()
