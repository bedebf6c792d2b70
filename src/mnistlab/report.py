"""Plots and reports made from run files and arrays. No training happens here.

matplotlib is imported lazily with the non-interactive Agg backend, so importing this module is cheap and
works on machines without a display.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnistlab.runs import write_bytes_atomic


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG bytes and write them atomically; closes the figure."""
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Loss and accuracy per epoch (train, and validation when present) side by side, as a PNG."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(epochs, [row[key] for row in history], marker="o", ms=3, label=f"train {label}")
        val = [row.get(f"val_{key}") for row in history]
        if any(v is not None for v in val):
            ax.plot(epochs, [np.nan if v is None else v for v in val], marker="s", ms=3, label=f"val {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_digit_grid(
    images: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str],
    indices: Sequence[int] | None = None,
    title: str = "",
) -> Path:
    """A labelled grid of uint8 images (white ink on black, as stored) saved as a PNG."""
    plt = _pyplot()
    count = len(images)
    cols = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + (0.4 if title else 0)),
                             squeeze=False)
    for slot, ax in enumerate(axes.flat):
        ax.axis("off")
        if slot >= count:
            continue
        ax.imshow(images[slot], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        name = class_names[int(labels[slot])]
        caption = f"#{indices[slot]}: {name}" if indices is not None else name
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_reproduce_comparison(rows: Sequence[Any], path: str | os.PathLike[str]) -> Path:
    """Left: training loss per epoch of each network run. Right: our test accuracy beside the seed's."""
    from mnistlab.runs import HISTORY_JSON, read_json

    plt = _pyplot()
    fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        history_file = Path(row.run_dir) / HISTORY_JSON
        if history_file.is_file():
            history = read_json(history_file)
            ax_curve.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o", ms=2,
                          label=row.name)
    ax_curve.set_yscale("log")
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel("training loss (running mean, log scale)")
    ax_curve.grid(alpha=0.3)
    ax_curve.legend()
    names = [row.name for row in rows]
    positions = np.arange(len(rows))
    ax_bar.bar(positions - 0.2, [100 * row.test_accuracy for row in rows], width=0.4, label="mnistlab")
    ax_bar.bar(positions + 0.2, [100 * row.seed_accuracy for row in rows], width=0.4, label="seed (Keras)")
    ax_bar.set_xticks(positions, names)
    low = min([100 * r.test_accuracy for r in rows] + [100 * r.seed_accuracy for r in rows], default=90)
    ax_bar.set_ylim(max(0.0, low - 2), 100)
    ax_bar.set_ylabel("test accuracy (%)")
    ax_bar.legend(loc="lower right")
    ax_bar.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def write_reproduce_report(*, out_dir: Path, rows: Sequence[Any], quick: bool, total_seconds: float) -> Path:
    """Write ``report.md`` (the seed's table, reproduced) and ``comparison.png`` into ``out_dir``."""
    from mnistlab.runs import write_text_atomic

    plot_reproduce_comparison(rows, out_dir / "comparison.png")
    lines = [
        "# The seed's table, reproduced" + (" (--quick: shortened, not comparable)" if quick else ""),
        "",
        "| experiment | params | epochs | batch | test accuracy | seed's figure | difference | train time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        batch = str(row.batch_size) if row.batch_size else "-"
        lines.append(
            f"| {row.name} | {row.params:,} | {row.epochs} | {batch} | {row.test_accuracy:.4f} | "
            f"{row.seed_accuracy:.4f} | {row.difference_points:+.2f} pt | {row.train_seconds:.1f} s |"
        )
    lines += ["", f"Total wall time: {total_seconds:.1f} s. Training time excludes data loading and the test pass.",
              "", "![comparison](comparison.png)", ""]
    notes = [f"- **{row.name}**: {row.note}" for row in rows if row.note]
    if notes:
        lines += ["Notes:", *notes, ""]
    curves = [f"![{row.name}]({Path(row.run_dir).name}/curves.png)" for row in rows
              if (Path(row.run_dir) / "curves.png").is_file()]
    if curves:
        lines += ["## Training curves", "", *curves, ""]
    return write_text_atomic(out_dir / "report.md", "\n".join(lines))
