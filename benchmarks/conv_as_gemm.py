"""An experiment for #15 item 3, kept because it was measured: the seed CNN's convolutions as matrix products.

    python benchmarks/conv_as_gemm.py [--threads 1,2] [--repeats 30]

The tutorial's CNN is fixed, so item 3's lever is how its layers are computed. A 3x3 convolution is one matrix
product over the image's patches (im2col): forward ``y = P W^T``, weight gradient ``dW = dY^T P``, and the input
gradient ``dP = dY W`` folded back onto the image (col2im: nine shifted sums). On this CPU ``torch.mm`` in bf16
runs at 160+ GFLOP/s a core at the MLP's shapes, so if oneDNN's convolution kernels ran well below that, the
products would win. This script times, per convolution of the seed CNN at its recipe's batch (200, bf16,
channels-last as ``fit`` runs it), autocast's ``conv2d`` forward and backward against the same three products
and the fold, in the same process, and checks first that both compute the same output and gradients (to bf16
rounding), so it compares like with like.

    python benchmarks/conv_as_gemm.py --end-to-end 3

then trains the seed CNN's recipe through mnistlab's own loop (``training._train_epoch_autograd``, what ``fit``
runs for it) from the same seed, epochs interleaved, once stock and once with the convolutions that were faster
alone (the first and the third) computed by ``PatchConv``. Result in benchmarks/RESULTS.md (stop 26): faster
alone, not measurably faster in the network, so ``fit`` keeps ``conv2d``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mnistlab.device import tune_cpu_allocator

# (name, in channels, out channels, kernel, stride, padding, input side, input needs a gradient, batch): the
# seed CNN's three convolutions at its recipe's batch (its first one's input is the image, which needs none),
# and the `fast` network's three at the batch its step back-propagates (128 of 256).
LAYERS = [("cnn conv1 1->32 3x3 at 28", 1, 32, 3, 1, 0, 28, False, 200),
          ("cnn conv2 32->64 3x3 at 13", 32, 64, 3, 1, 0, 13, True, 200),
          ("cnn conv3 64->64 3x3 at 5", 64, 64, 3, 1, 0, 5, True, 200),
          ("fast stem 1->16 4x4/2 at 28", 1, 16, 4, 2, 1, 28, False, 128),
          ("fast conv 16->32 3x3 at 14", 16, 32, 3, 1, 1, 14, True, 128),
          ("fast conv 32->64 3x3 at 7", 32, 64, 3, 1, 1, 7, True, 128)]


def _median_ms(step: Callable[[], Any], repeats: int) -> float:
    for _ in range(5):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def _patches(x_nhwc: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * o * o, k k C), each row one k x k patch in (kh, kw, C) order."""
    batch, channels = x_nhwc.shape[0], x_nhwc.shape[3]
    if padding:
        x_nhwc = F.pad(x_nhwc, (0, 0, padding, padding, padding, padding))
    windows = x_nhwc.unfold(1, kernel, stride).unfold(2, kernel, stride)    # (B, o, o, C, k, k)
    out_side = windows.shape[1]
    return windows.permute(0, 1, 2, 4, 5, 3).reshape(batch * out_side * out_side, kernel * kernel * channels)


def _gemm_conv(x_nhwc: torch.Tensor, w_rows: torch.Tensor, bias: torch.Tensor, grad_rows: torch.Tensor,
               kernel: int, stride: int, padding: int, needs_dx: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Forward output rows (bias added), weight and bias gradients and, if asked, the input gradient (NHWC,
    fp32)."""
    batch, side, _, channels = x_nhwc.shape
    patches = _patches(x_nhwc, kernel, stride, padding)
    out = torch.addmm(bias, patches, w_rows.t())                        # (B o o, out)
    grad_w = torch.mm(grad_rows.t(), patches)                           # (out, k k C)
    grad_b = grad_rows.sum(0)
    if not needs_dx:
        return out, grad_w, grad_b, None
    return out, grad_w, grad_b, _fold(torch.mm(grad_rows, w_rows), batch, side, channels, kernel, stride, padding)


def _fold(grad_patch_rows: torch.Tensor, batch: int, side: int, channels: int, kernel: int, stride: int,
          padding: int) -> torch.Tensor:
    """col2im: the patches' gradient rows (B o o, k k C) summed back onto the image, (B, side, side, C) fp32
    (as the gradient autocast hands back): one shifted, strided sum per kernel position."""
    out_side = (side + 2 * padding - kernel) // stride + 1
    grad_patches = grad_patch_rows.view(batch, out_side, out_side, kernel, kernel, channels)
    padded = side + 2 * padding
    grad_x = torch.zeros(batch, padded, padded, channels)
    span = stride * (out_side - 1) + 1
    for i in range(kernel):
        for j in range(kernel):
            grad_x[:, i:i + span:stride, j:j + span:stride, :] += grad_patches[:, :, :, i, j, :]
    return grad_x[:, padding:padding + side, padding:padding + side, :]


class PatchConv(torch.autograd.Function):
    """A stride-1, unpadded convolution as the products above, for a channels-last input; bf16 under autocast."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        cout, cin, kernel, _ = weight.shape
        patches = _patches(x.permute(0, 2, 3, 1), kernel, 1, 0)
        out_side = x.shape[2] - kernel + 1
        w_rows = weight.permute(0, 2, 3, 1).reshape(cout, kernel * kernel * cin)
        out = torch.addmm(bias, patches, w_rows.t())
        ctx.save_for_backward(patches, w_rows)
        ctx.geometry = (x.shape[0], x.shape[2], cin, kernel, cout)
        return out.view(x.shape[0], out_side, out_side, cout).permute(0, 3, 1, 2)  # channels-last NCHW

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        patches, w_rows = ctx.saved_tensors
        batch, side, cin, kernel, cout = ctx.geometry
        grad_rows = grad.permute(0, 2, 3, 1).reshape(-1, cout)
        grad_w = torch.mm(grad_rows.t(), patches).view(cout, kernel, kernel, cin).permute(0, 3, 1, 2)
        grad_x = None
        if ctx.needs_input_grad[0]:
            folded = _fold(torch.mm(grad_rows, w_rows), batch, side, cin, kernel, 1, 0)
            grad_x = folded.permute(0, 3, 1, 2).to(grad.dtype)
        return grad_x, grad_w, grad_rows.sum(0)


class _Patched(torch.nn.Module):
    """A Conv2d's parameters, computed by PatchConv."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.conv.bias is not None
        return PatchConv.apply(x, self.conv.weight, self.conv.bias)


def end_to_end(epochs: int) -> dict[str, Any]:
    """Seconds per epoch of the seed CNN's recipe, stock against its first and third convolution patched."""
    from mnistlab import training
    from mnistlab.callbacks import CallbackList
    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset

    dataset = load_dataset("mnist")
    config = TrainConfig.for_model("cnn", device="cpu")
    torch.set_num_threads(config.threads or training.DEFAULT_THREADS)
    train_idx, val_idx = training._split(config, dataset)
    loops = {side: training._setup(config, dataset, torch.device("cpu"), train_idx, val_idx, CallbackList([]))
             for side in ("stock", "patched")}
    model = loops["patched"].model
    for index in (0, 6):  # Conv2d(1, 32) and Conv2d(64, 64) in models.build_cnn
        model[index] = _Patched(model[index])
    times: dict[str, list[float]] = {"stock": [], "patched": []}
    figures: dict[str, list[tuple[float, float]]] = {"stock": [], "patched": []}
    for _ in range(epochs):
        for side, loop in loops.items():
            started = time.perf_counter()
            figures[side].append(training._train_epoch_autograd(loop, CallbackList([])))
            times[side].append(time.perf_counter() - started)
    median = {side: statistics.median(values[1:] or values) for side, values in times.items()}
    return {"epochs": epochs, "epoch_seconds": times, "loss_accuracy": figures, "median_after_first": median,
            "speedup": median["stock"] / median["patched"]}


def measure(threads: int, repeats: int) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return [_measure_layer(layer, threads, repeats) for layer in LAYERS]


def _measure_layer(layer: tuple[str, int, int, int, int, int, int, bool, int], threads: int, repeats: int
                   ) -> dict[str, Any]:
    """One convolution: check that both ways compute the same, then time each."""
    name, cin, cout, kernel, stride, padding, side, needs_dx, batch = layer
    out_side = (side + 2 * padding - kernel) // stride + 1
    x = torch.rand(batch, cin, side, side).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, kernel, kernel) * (2.0 / (kernel * kernel * cin)) ** 0.5
    b = torch.randn(cout) * 0.1
    grad_y = torch.randn(batch, cout, out_side, out_side).contiguous(memory_format=torch.channels_last)

    def stock() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        xx = x.detach().requires_grad_(needs_dx)
        ww, bb = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = F.conv2d(xx, ww, bb, stride=stride, padding=padding)
        y.backward(grad_y.to(y.dtype))
        assert ww.grad is not None and bb.grad is not None
        return y, ww.grad, bb.grad, xx.grad

    # The products' operands in bf16, as autocast casts them; the NHWC views are what channels-last holds.
    x_nhwc = x.permute(0, 2, 3, 1).to(torch.bfloat16)
    w_rows = w.permute(0, 2, 3, 1).reshape(cout, kernel * kernel * cin).to(torch.bfloat16)
    b_low = b.to(torch.bfloat16)
    grad_rows = grad_y.permute(0, 2, 3, 1).reshape(-1, cout).to(torch.bfloat16)

    def products() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return _gemm_conv(x_nhwc, w_rows, b_low, grad_rows, kernel, stride, padding, needs_dx)

    y, grad_w, grad_b, grad_x = stock()
    out, gemm_grad_w, gemm_grad_b, gemm_grad_x = products()
    # Same function: output, weight gradient and input gradient within bf16 rounding of the stock ones.
    pairs = [(out.float().view(batch, out_side, out_side, cout), y.detach().float().permute(0, 2, 3, 1)),
             (gemm_grad_w.float().view(cout, kernel, kernel, cin).permute(0, 3, 1, 2), grad_w.float()),
             (gemm_grad_b.float(), grad_b.float())]
    if needs_dx:
        assert gemm_grad_x is not None and grad_x is not None
        pairs.append((gemm_grad_x.float().permute(0, 3, 1, 2), grad_x.float()))
    for got, want in pairs:
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=0.0, atol=2e-2 * scale)  # bf16 rounding of the scale
    stock_ms, gemm_ms = _median_ms(stock, repeats), _median_ms(products, repeats)
    return {"layer": name, "threads": threads, "batch": batch, "input_gradient": needs_dx,
            "stock_ms": stock_ms, "products_ms": gemm_ms, "speedup": stock_ms / gemm_ms}


def main() -> None:
    from _common import machine, print_table, write_json  # here: the tests load this module without benchmarks/

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--end-to-end", type=int, default=0, metavar="EPOCHS",
                        help="also time the seed CNN's epochs with its first and third convolution patched")
    args = parser.parse_args()
    tune_cpu_allocator()  # as fit does
    results: dict[str, Any] = {"machine": machine(), "rows": []}
    for threads in (int(t) for t in args.threads.split(",")):
        results["rows"].extend(measure(threads, args.repeats))
    print_table(["layer", "threads", "conv2d fwd+bwd ms", "products + fold ms", "speed-up"],
                [[r["layer"], r["threads"], f"{r['stock_ms']:.2f}", f"{r['products_ms']:.2f}", f"{r['speedup']:.2f}x"]
                 for r in results["rows"]])
    if args.end_to_end:
        whole = results["end_to_end"] = end_to_end(args.end_to_end)
        print(f"\nseed CNN, s/epoch (median after the first): stock {whole['median_after_first']['stock']:.2f}, "
              f"conv1 and conv3 as products {whole['median_after_first']['patched']:.2f} "
              f"({whole['speedup']:.2f}x); per epoch: {whole['epoch_seconds']}")
    print(f"\nwrote {write_json('conv_as_gemm', results)}")


if __name__ == "__main__":
    main()
