"""How the ``best`` recipe was chosen: candidates compared on a validation split, never the test set.

    python benchmarks/best_selection.py [--seeds 1] [--epochs 20] [--candidates A,B,...]

As for ``fast`` (benchmarks/fast_selection.py): training uses ``train[:50000]`` and scoring ``train[50000:]``;
every candidate runs through mnistlab's own training loop (``mnistlab.training.fit``, bf16 where native, all
cores). A candidate swaps the ``best`` network for its own while the script runs and sets its own recipe
values (augmentation, learning rate, batch). The handwriting set and the corruptions play no part here: they
stay out of every selection decision.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from typing import Any

from torch import nn

from _common import RESULTS_DIR, isolate_registry, machine, print_table, score_candidates, write_json


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU()]


def two_at_14(widths: tuple[int, int, int]) -> Callable[..., nn.Module]:
    """The stem, then two convolutions at 14x14 and two at 7x7 (one more than ``best``'s layout)."""
    a, b, c = widths

    def build(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, a, 4, stride=2, padding=1, bias=False), *_bn_relu(a),
            nn.Conv2d(a, b, 3, padding=1, bias=False), *_bn_relu(b),
            nn.Conv2d(b, b, 3, padding=1, bias=False), nn.MaxPool2d(2), *_bn_relu(b),
            nn.Conv2d(b, c, 3, padding=1, bias=False), *_bn_relu(c),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.MaxPool2d(2), *_bn_relu(c),
            nn.Flatten(), nn.Linear(c * 9, num_classes))
    return build


def candidates() -> dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]]:
    from mnistlab.models import build_best, build_fast

    def best(*w: int) -> Callable[..., nn.Module]:
        return lambda num_classes=10: build_best(num_classes, widths=w)  # type: ignore[arg-type]

    recipe = {"batch_size": 128, "lr": 5e-3, "label_smoothing": 0.1, "augment": "light"}
    return {
        "best 32-64-128 light (chosen)": (best(32, 64, 128), recipe),
        "best 32-64-128 no augmentation": (best(32, 64, 128), {**recipe, "augment": "none"}),
        "best 32-64-128 strong": (best(32, 64, 128), {**recipe, "augment": "strong"}),
        "best 32-64-128 robust": (best(32, 64, 128), {**recipe, "augment": "robust"}),
        "best 32-64-128 lr 1e-2": (best(32, 64, 128), {**recipe, "lr": 1e-2}),
        "two convs at 14x14, 32-64-128": (two_at_14((32, 64, 128)), recipe),
        "best 48-96-192 light": (best(48, 96, 192), recipe),
        "best 32-64-128 light 40 epochs": (best(32, 64, 128), {**recipe, "epochs": 40}),
        "fast 16-32-64 light": (lambda num_classes=10: build_fast(num_classes), recipe),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--candidates", help="comma-separated names or unique prefixes (default: all)")
    args = parser.parse_args()
    isolate_registry()

    table = candidates()
    chosen = list(table)
    if args.candidates:
        chosen = []
        for prefix in args.candidates.split(","):
            matches = [name for name in table if name.startswith(prefix)]
            if len(matches) != 1:
                parser.error(f"--candidates {prefix!r} matches {len(matches)} candidates; the names: "
                             + "; ".join(table))
            chosen.append(matches[0])
    scores = score_candidates("best", table, chosen, seeds=args.seeds, defaults={"epochs": args.epochs})
    # Runs of some candidates add to (or replace) those candidates' entries in the results file.
    previous = RESULTS_DIR / "best_selection.json"
    results = json.loads(previous.read_text()) if previous.exists() else {"candidates": {}}
    this_machine = machine()
    results.setdefault("machines", []).append(this_machine)
    rows = []
    for name in chosen:
        seconds = [s for s, _ in scores[name]]
        accuracy = [a for _, a in scores[name]]
        replaced = results["candidates"].get(name)
        if replaced is not None and replaced.get("machine", {}).get("cpu") != this_machine["cpu"]:
            # Another machine's figures (RESULTS.md cites them) are kept under their own key, not lost.
            results["candidates"][f"{name} [{replaced.get('machine', {}).get('cpu', 'earlier run')}]"] = replaced
        results["candidates"][name] = {"train_seconds": seconds, "val_accuracy": accuracy, "machine": this_machine,
                                       **{"epochs": args.epochs, **table[name][1]}}
        rows.append([name, f"{statistics.fmean(accuracy):.4f}", f"{min(accuracy):.4f}",
                     f"{statistics.median(seconds):.0f}", str({"epochs": args.epochs, **table[name][1]}["epochs"])])
    print(f"\nbest-recipe candidates on validation (50k train -> 10k val), {args.seeds} seed(s)")
    print_table(["candidate", "val mean", "val min", "median train s (50k)", "epochs"], rows)
    print(f"\nwrote {write_json('best_selection', results)}")


if __name__ == "__main__":
    main()
