"""benchmarks/conv_as_gemm.py's convolutions as matrix products against their oracle, torch's conv2d.

The benchmark times the products against conv2d; these tests make sure both compute the same function: the
output, the weight gradient and the input gradient to fp32 rounding in fp32, for every stride and padding the
benchmark uses, and ``PatchConv`` (the autograd function it puts into the seed CNN) through autograd, also
under bf16 autocast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.benchtools import load_benchmark

bench = load_benchmark("conv_as_gemm")


@pytest.mark.parametrize(("cin", "cout", "kernel", "stride", "padding", "side"),
                         [(1, 32, 3, 1, 0, 28), (32, 64, 3, 1, 0, 13), (1, 16, 4, 2, 1, 28), (16, 32, 3, 1, 1, 14)])
def test_products_are_the_convolution_and_its_gradients(cin: int, cout: int, kernel: int, stride: int,
                                                        padding: int, side: int) -> None:
    g = torch.Generator().manual_seed(cin + cout + kernel)
    x = torch.rand(3, cin, side, side, generator=g, dtype=torch.float64)
    w = torch.randn(cout, cin, kernel, kernel, generator=g, dtype=torch.float64)
    b = torch.randn(cout, generator=g, dtype=torch.float64)
    xx, ww, bb = (t.clone().requires_grad_(True) for t in (x, w, b))
    y = F.conv2d(xx, ww, bb, stride=stride, padding=padding)
    grad_y = torch.randn(y.shape, generator=g, dtype=torch.float64)
    y.backward(grad_y)
    out_side = y.shape[2]
    out, grad_w, grad_b, grad_x = bench._gemm_conv(
        x.permute(0, 2, 3, 1), w.permute(0, 2, 3, 1).reshape(cout, -1), b,
        grad_y.permute(0, 2, 3, 1).reshape(-1, cout), kernel, stride, padding, True)
    torch.testing.assert_close(out.view(3, out_side, out_side, cout).permute(0, 3, 1, 2), y.detach())
    torch.testing.assert_close(grad_w.view(cout, kernel, kernel, cin).permute(0, 3, 1, 2), ww.grad)
    torch.testing.assert_close(grad_b, bb.grad)
    assert grad_x is not None
    # The fold accumulates in fp32 (as autocast hands the gradient back): compare at fp32 rounding.
    torch.testing.assert_close(grad_x.permute(0, 3, 1, 2).double(), xx.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("needs_input_grad", [False, True])
def test_patch_conv_through_autograd_matches_conv2d(needs_input_grad: bool) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(4, 8, 9, 9, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3, generator=g) * 0.2
    b = torch.randn(16, generator=g)
    grads = []
    for compute in ("stock", "products"):
        xx = x.clone().requires_grad_(needs_input_grad)
        ww, bb = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        y = F.conv2d(xx, ww, bb) if compute == "stock" else bench.PatchConv.apply(xx, ww, bb)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append((y.detach(), ww.grad, bb.grad, xx.grad))
    for want, got in zip(*grads, strict=True):
        if want is None:
            assert got is None and not needs_input_grad
            continue
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_patch_conv_under_bf16_autocast_stays_within_bf16_rounding() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 8, 9, 9, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(16, 8, 3, 3, generator=g) * 0.2, torch.randn(16, generator=g)
    weight = torch.linspace(-1, 1, 4 * 16 * 7 * 7).view(4, 16, 7, 7)
    xx, ww, bb = (t.double().requires_grad_(True) for t in (x, w, b))
    exact = F.conv2d(xx, ww, bb)
    (exact * weight.double()).sum().backward()
    got = [t.clone().requires_grad_(True) for t in (x, w, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bench.PatchConv.apply(*got)
    assert y.dtype == torch.bfloat16
    (y.float() * weight).sum().backward()
    for value, reference in zip([y, *(t.grad for t in got)], [exact, xx.grad, ww.grad, bb.grad], strict=True):
        assert value is not None and reference is not None
        if value is not y:
            assert value.dtype == torch.float32  # the fp32 master tensors' gradients
        scale = float(reference.detach().abs().max())
        assert float((value.detach().double() - reference.detach()).abs().max()) < 2e-2 * scale
