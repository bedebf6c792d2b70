"""How the ``fast`` recipe was chosen: candidates compared on a validation split, never the test set.

    python benchmarks/fast_selection.py [--seeds 2] [--candidates f4-256,f16-32-64,...]

Training uses ``train[:50000]`` and scoring ``train[50000:]``. Every candidate runs through mnistlab's own
training loop (``mnistlab.training.fit``, bf16 where native, 2 threads), so the times compare like for like.
A candidate swaps the ``fast`` network for its own while the script runs, and sets its own batch size and
max learning rate.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from _common import isolate_registry, machine, print_table, score_candidates, write_json


def strided(widths: tuple[int, int, int]) -> Callable[..., nn.Module]:
    """The stem, then stride-2 3x3 convolutions instead of convolution + max-pool."""
    a, b, c = widths

    def build(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, a, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
            nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
            nn.Conv2d(b, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Flatten(), nn.Linear(c * 16, num_classes))
    return build


def pool_first(widths: tuple[int, int, int]) -> Callable[..., nn.Module]:
    """Stem, max-pool to 7x7 at once, then both 3x3 convolutions at 7x7: no 14x14 convolution at all."""
    a, b, c = widths

    def build(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, a, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
            nn.Conv2d(b, c, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Flatten(), nn.Linear(c * 9, num_classes))
    return build


def one_conv(widths: tuple[int, int]) -> Callable[..., nn.Module]:
    """A wider stem pooled to 7x7, and a single 3x3 convolution."""
    a, b = widths

    def build(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, a, 4, stride=2, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(a), nn.ReLU(),
            nn.Conv2d(a, b, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(b), nn.ReLU(),
            nn.Flatten(), nn.Linear(b * 9, num_classes))
    return build


def strided_middle(widths: tuple[int, int, int]) -> Callable[..., nn.Module]:
    """``fast`` with its 14x14 convolution + max-pool replaced by one stride-2 3x3 convolution (a quarter of
    the multiply-adds, no pool)."""
    a, b, c = widths

    def build(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, a, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
            nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
            nn.Conv2d(b, c, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Flatten(), nn.Linear(c * 9, num_classes))
    return build


class FixedConv(nn.Module):
    """A convolution whose weights are a buffer, not a parameter: no gradient, and not a ``nn.Conv2d``, so
    mnistlab's Keras-style initialisation (which ``build_model`` applies to every built-in model's Conv2d)
    leaves it as it was set."""

    def __init__(self, weight: torch.Tensor, *, stride: int, padding: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), stride=self.stride, padding=self.padding)


def whitened_stem(num_classes: int = 10) -> nn.Module:
    """``fast`` whose stem is a fixed whitening of 4x4 patches, as in the CIFAR-10 speed runs: the 8 leading
    eigenvectors of the patch second moments of 5,000 training images (of ``train[:50k]``), each scaled by
    1/sqrt of its eigenvalue, and their negatives (the ReLU keeps both signs)."""
    import torch
    import torch.nn.functional as F

    from mnistlab.data import load_dataset
    from mnistlab.models import build_fast, prepare_batch

    model = build_fast(num_classes)
    images = torch.from_numpy(load_dataset("mnist", splits=("train",)).train.images[:5000].copy())
    patches = F.unfold(prepare_batch(images), 4, stride=2, padding=1).transpose(1, 2).reshape(-1, 16).double()
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    values, vectors = values.flip(0)[:8], vectors.flip(1)[:, :8]
    filters = (vectors / (values + 5e-4).sqrt()).T.reshape(8, 1, 4, 4).float()
    model[0] = FixedConv(torch.cat([filters, -filters]), stride=2, padding=1)
    return model


def public(num_classes: int = 10) -> nn.Module:
    """The best-known public one-epoch recipe's network (pool after ReLU, as published)."""
    return nn.Sequential(nn.Conv2d(1, 24, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(24, 32, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(800, 256), nn.ReLU(), nn.Linear(256, num_classes))


def candidates() -> dict[str, tuple[Callable[..., nn.Module], dict]]:
    from mnistlab.models import build_fast

    def widths(*w: int) -> Callable[..., nn.Module]:
        return lambda num_classes=10: build_fast(num_classes, widths=w)

    smooth = {"label_smoothing": 0.1}
    return {
        "32-64-128 b128": (widths(32, 64, 128), {"batch_size": 128, "lr": 8e-3, **smooth}),
        "32-64-128 b256": (widths(32, 64, 128), {"batch_size": 256, "lr": 1.2e-2, **smooth}),
        "24-48-96": (widths(24, 48, 96), {"batch_size": 256, "lr": 1.2e-2, **smooth}),
        "16-32-128": (widths(16, 32, 128), {"batch_size": 256, "lr": 1.2e-2, **smooth}),
        "32-32-64": (widths(32, 32, 64), {"batch_size": 256, "lr": 1.2e-2, **smooth}),
        "16-32-64 (chosen)": (widths(16, 32, 64), {"batch_size": 256, "lr": 1.6e-2, **smooth}),
        "16-32-64 no smoothing": (widths(16, 32, 64), {"batch_size": 256, "lr": 1.6e-2, "label_smoothing": 0.0}),
        "strided 32-64-128": (strided((32, 64, 128)), {"batch_size": 256, "lr": 1.2e-2, **smooth}),
        "public recipe": (public, {"batch_size": 256, "lr": 1e-2, "label_smoothing": 0.0}),
        # Issue 15's search for a recipe twice as fast (stop 23): less work per image, fewer images.
        "pool first 16-32-64": (pool_first((16, 32, 64)), {"batch_size": 256, "lr": 1.6e-2, **smooth}),
        "pool first 24-48-96": (pool_first((24, 48, 96)), {"batch_size": 256, "lr": 1.6e-2, **smooth}),
        "one conv 32-64": (one_conv((32, 64)), {"batch_size": 256, "lr": 1.6e-2, **smooth}),
        "stride-2 middle 16-32-64": (strided_middle((16, 32, 64)), {"batch_size": 256, "lr": 1.6e-2, **smooth}),
        "whitened frozen stem": (whitened_stem, {"batch_size": 256, "lr": 1.6e-2, **smooth}),
        "16-32-64 b512": (widths(16, 32, 64), {"batch_size": 512, "lr": 2.4e-2, **smooth}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--candidates", help="comma-separated names (default: all)")
    args = parser.parse_args()
    isolate_registry()

    table = candidates()
    chosen = args.candidates.split(",") if args.candidates else list(table)
    scores = score_candidates("fast", table, chosen, seeds=args.seeds)
    rows, results = [], {"machine": machine(), "candidates": {}}
    for name in chosen:
        seconds = [s for s, _ in scores[name]]
        accuracy = [a for _, a in scores[name]]
        results["candidates"][name] = {"train_seconds": seconds, "val_accuracy": accuracy, **table[name][1]}
        rows.append([name, f"{statistics.fmean(accuracy):.4f}", f"{min(accuracy):.4f}",
                     f"{statistics.median(seconds):.2f}"])
    print(f"\nfast-recipe candidates on validation (50k train -> 10k val), {args.seeds} seeds")
    print_table(["candidate", "val mean", "val min", "median train s (50k)"], rows)
    print(f"\nwrote {write_json('fast_selection', results)}")


if __name__ == "__main__":
    main()
