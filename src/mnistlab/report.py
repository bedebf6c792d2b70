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


class _Figures:
    """The two pyplot calls the plots use, made on bare ``Figure`` objects (rendered by Agg on save).

    pyplot is never imported: switching its global backend to Agg would stop a notebook user's own
    ``plt.show()`` from displaying anything after mnistlab drew a training curve, and the figures here
    are only ever written to files.
    """

    @staticmethod
    def subplots(*args: Any, figsize: tuple[float, float] | None = None, **kwargs: Any) -> tuple[Any, Any]:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)

    @staticmethod
    def close(fig: Any) -> None:
        """Nothing to do: a bare Figure is not registered anywhere, so it is freed like any object."""

    @property
    def rcParams(self) -> Any:
        import matplotlib

        return matplotlib.rcParams


def _pyplot() -> Any:
    return _Figures()


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110, image_format: str = "png") -> Path:
    """Render ``fig`` and write it atomically as ``image_format`` (PNG, or any format Pillow writes);
    closes the figure."""
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    data = buffer.getvalue()
    if image_format != "png":
        from PIL import Image

        converted = io.BytesIO()
        with Image.open(io.BytesIO(data)) as img:
            # JPEG and BMP have no alpha channel: flatten onto white, as the figure's background is.
            flat = img.convert("RGB") if image_format in ("jpeg", "bmp", "gif") else img
            flat.save(converted, format=image_format.upper())
        data = converted.getvalue()
    return write_bytes_atomic(path, data)


def _integer_ticks() -> Any:
    """Whole-number epoch ticks, even for a single epoch (MaxNLocator wants 2 integers in view by default)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True, min_n_ticks=1)


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Loss and accuracy per epoch (train, and validation when present) side by side, as a PNG."""
    return save_figure(curves_figure(history, title=title), path)


def curves_figure(history: Sequence[dict[str, Any]], *, title: str = "") -> Any:
    """The figure :func:`plot_curves` saves: only what exists is drawn, and a single epoch is labelled."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    single = len(epochs) == 1  # one epoch (fast, --quick, a classical fit): marked, labelled points
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        series = [(f"train {label}", "o", [row.get(key) for row in history]),
                  (f"val {label}", "s", [row.get(f"val_{key}") for row in history])]
        drawn = 0
        for name, marker, values in series:
            numbers = [np.nan if v is None or not math.isfinite(float(v)) else float(v) for v in values]
            if all(math.isnan(v) for v in numbers):
                continue  # never an empty line: a model without a loss (sgd, svm) has no loss curve
            ax.plot(epochs, numbers, marker=marker, ms=8 if single else 3, label=name)
            if single:
                ax.annotate(f"{numbers[0]:.4f}", (epochs[0], numbers[0]), textcoords="offset points",
                            xytext=(8, 4 - 12 * drawn), fontsize=9)
            drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, f"no {label} recorded\n(this model gives decision values, not probabilities)",
                    ha="center", va="center", transform=ax.transAxes, fontsize=10, color="#555")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label)
            continue
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def plot_digit_grid(
    images: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str],
    indices: Sequence[int] | None = None,
    title: str = "",
    image_format: str = "png",
) -> Path:
    """A labelled grid of uint8 images (white ink on black, as stored), saved as ``image_format``."""
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
    return save_figure(fig, path, image_format=image_format)


def plot_reproduce_comparison(rows: Sequence[Any], path: str | os.PathLike[str]) -> Path:
    """Left: training loss per epoch of each network run. Right: our test accuracy beside the seed's."""
    from mnistlab.runs import HISTORY_JSON, read_json

    plt = _pyplot()
    fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        history_file = Path(row.run_dir) / HISTORY_JSON
        if history_file.is_file():
            history = read_json(history_file)
            if any(h.get("loss") is None for h in history):
                continue  # a model without a loss (the SGD baseline's hinge SVM) has no curve to draw
            ax_curve.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o", ms=2,
                          label=row.name)
    ax_curve.set_yscale("log")
    ax_curve.set_xlabel("epoch")
    ax_curve.xaxis.set_major_locator(_integer_ticks())
    ax_curve.set_ylabel("training loss (running mean, log scale)")
    ax_curve.grid(alpha=0.3)
    if ax_curve.lines:
        ax_curve.legend()
    names = [row.name for row in rows]
    positions = np.arange(len(rows))
    ax_bar.bar(positions - 0.2, [100 * row.accuracy for row in rows], width=0.4, label="mnistlab")
    ax_bar.bar(positions + 0.2, [100 * row.seed_accuracy for row in rows], width=0.4, label="Keras tutorial")
    ax_bar.set_xticks(positions, names)
    low = min([100 * r.accuracy for r in rows] + [100 * r.seed_accuracy for r in rows], default=90)
    ax_bar.set_ylim(max(0.0, low - 2), 100)
    ax_bar.set_ylabel("accuracy (%), as the tutorial measured it")
    # Above the bars: inside the axes it would hide the lowest bar.
    ax_bar.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax_bar.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def write_reproduce_report(*, out_dir: Path, rows: Sequence[Any], quick: bool, total_seconds: float,
                           evaluations: Sequence[Any] | None = None, timing: dict[str, float] | None = None) -> Path:
    """Write ``report.md`` (the seed's table, reproduced) and ``comparison.png`` into ``out_dir``.

    With ``evaluations`` (one :class:`mnistlab.analysis.Evaluation` per row, on the test set) the report also
    shows the experiments' confusion matrices side by side (``confusions.png``) and their most confused pairs.
    """
    from mnistlab.runs import read_json, write_text_atomic

    plot_reproduce_comparison(rows, out_dir / "comparison.png")
    lines = [
        "# The Keras tutorial's table, reproduced" + (" (--quick: shortened, not comparable)" if quick else ""),
        "",
        "| experiment | params | epochs | batch | accuracy | measured on | tutorial's figure | difference "
        "| train time |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        batch = str(row.batch_size) if row.batch_size else "-"
        lines.append(
            f"| {row.name} | {row.params:,} | {row.epochs} | {batch} | {row.accuracy:.4f} | {row.evaluated_on} | "
            f"{row.seed_accuracy:.4f} | {row.difference_points:+.2f} pt | {row.train_seconds:.1f} s |"
        )
    parts = "; ".join(f"{name} {seconds:.1f} s" for name, seconds in (timing or {}).items() if name != "total")
    lines += ["", f"Total wall time: {total_seconds:.1f} s, the whole command" + (f" ({parts})" if parts else "")
              + ". The table's training time excludes data loading and the test pass.",
              "", "![comparison](comparison.png)", ""]
    notes = [f"- **{row.name}**: {row.note}" for row in rows if row.note]
    if notes:
        lines += ["Notes:", *notes, ""]
    if evaluations:
        class_names = evaluations[0].class_names
        plot_confusion_grid([(f"{row.name}: {100 * (1 - e.accuracy):.2f}% error", e.confusion)
                             for row, e in zip(rows, evaluations, strict=True)], class_names,
                            out_dir / "confusions.png", title="test-set confusion matrices")
        lines += ["## Where each experiment fails (test set)", "", "![confusion matrices](confusions.png)", "",
                  "| experiment | test error | most confused pairs (true → predicted: images) | full report |",
                  "|---|---:|---|---|"]
        for row, e in zip(rows, evaluations, strict=True):
            pairs = ", ".join(f"{class_names[p.true]} → {class_names[p.predicted]}: {p.count}" for p in e.pairs[:3])
            lines.append(f"| {row.name} | {100 * (1 - e.accuracy):.2f}% | {pairs or 'none'} | "
                         f"[{Path(row.run_dir).name}/eval/test/report.html]"
                         f"({Path(row.run_dir).name}/eval/test/report.html) |")
        lines.append("")
    # One fit has no curve worth a picture: show the networks' curves only.
    curves = [f"![{row.name}]({Path(row.run_dir).name}/curves.png)" for row in rows
              if (Path(row.run_dir) / "curves.png").is_file()
              and read_json(Path(row.run_dir) / "model.json").get("family", "network") == "network"]
    if curves:
        lines += ["## Training curves", "", *curves, ""]
    return write_text_atomic(out_dir / "report.md", "\n".join(lines))


# ------------------------------------------------------------------------------ evaluation and comparison
def _tick_names(class_names: Sequence[str]) -> list[str]:
    return [name if len(name) <= 8 else name[:7] + "…" for name in class_names]


def _draw_matrix(ax: Any, values: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str], *,
                 title: str, vmax: float | None = None, fmt: str = "{:d}") -> Any:
    """One heat map with the cell values written in (white text on dark cells)."""
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax if vmax is not None else max(float(values.max()), 1e-9))
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, _tick_names(class_names), rotation=45 if max(map(len, class_names)) > 2 else 0,
                  ha="right" if max(map(len, class_names)) > 2 else "center", fontsize=8)
    ax.set_yticks(ticks, _tick_names(class_names), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if labels is not None:
        threshold = 0.6 * (vmax if vmax is not None else float(values.max()))
        for (i, j), value in np.ndenumerate(labels):
            text = fmt.format(value)
            if text:
                ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                        color="white" if values[i, j] > threshold else "black")
    return image


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str], *,
                   title: str = "") -> Path:
    """Counts (left) and row-normalised rates in percent (right) of a confusion matrix, as one PNG.

    The colour of the counts panel ignores the diagonal, so the off-diagonal mistakes stand out.
    """
    from mnistlab.metrics import row_normalized

    plt = _pyplot()
    counts = np.asarray(confusion)
    rates = row_normalized(counts)
    fig, (ax_counts, ax_rates) = plt.subplots(1, 2, figsize=(12.5, 5.6))
    off_diagonal = counts * (1 - np.eye(len(counts), dtype=counts.dtype))
    _draw_matrix(ax_counts, off_diagonal, counts, class_names, title="counts (colour: mistakes only)",
                 vmax=max(float(off_diagonal.max()), 1.0))
    percent = np.round(100 * rates, 1)
    labels = np.vectorize(lambda v: "" if v == 0 else (f"{v:.0f}" if v >= 10 else f"{v:.1f}"))(percent)
    _draw_matrix(ax_rates, rates, labels, class_names, title="row-normalised (% of each true class)", vmax=1.0,
                 fmt="{}")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion_grid(panels: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str],
                        path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Row-normalised confusion matrices of several runs side by side (counts written in the cells)."""
    from mnistlab.metrics import row_normalized

    plt = _pyplot()
    cols = min(len(panels), 4) or 1
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, confusion) in zip(axes.flat, panels, strict=False):
        counts = np.asarray(confusion)
        off = np.where(np.eye(len(counts), dtype=bool), 0.0, row_normalized(counts))
        labels = np.where(np.eye(len(counts), dtype=bool), 0, counts)
        _draw_matrix(ax, off, labels, class_names, title=name, vmax=max(float(off.max()), 1e-9),
                     fmt="{}")
        for text in ax.texts:  # blank zero cells keep the mistakes readable
            if text.get_text() == "0":
                text.set_text("")
    if title:
        fig.suptitle(title + " (colour: share of the true class; numbers: mistakes)")
    return save_figure(fig, path)


def plot_mistakes(images: np.ndarray, captions: Sequence[str], path: str | os.PathLike[str], *,
                  title: str = "", maps: np.ndarray | None = None) -> Path:
    """A grid of misclassified digits, each captioned with index, true→predicted and confidence; with ``maps``
    (one saliency map in [0, 1] per digit) drawn over each digit in hot colours."""
    plt = _pyplot()
    count = len(images)
    cols = max(1, min(9, count))
    rows = max(1, math.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols + 0.4, 1.65 * rows + 0.5), squeeze=False)
    for slot, ax in enumerate(axes.flat):
        ax.axis("off")
        if slot < count:
            ax.imshow(images[slot], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if maps is not None:
                # Transparent where the map is zero, so the strokes it points at stay visible.
                ax.imshow(maps[slot], cmap="hot", vmin=0, vmax=1, alpha=np.clip(maps[slot], 0, 1) * 0.85,
                          interpolation="nearest")
            ax.set_title(captions[slot], fontsize=7, color="#b00020")
    if count == 0:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_saliency(images: np.ndarray, maps: np.ndarray, captions: Sequence[str], path: str | os.PathLike[str], *,
                  title: str = "") -> Path:
    """The mistakes gallery with each digit's input-gradient saliency (hot colours) over it."""
    return plot_mistakes(images, captions, path, title=title, maps=maps)


def plot_reliability(calibration: Any, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Reliability diagram: accuracy against confidence per bin (with the gap to the diagonal), and counts."""
    plt = _pyplot()
    edges = np.asarray(calibration.edges)
    centres = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    filled = np.asarray(calibration.count) > 0
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.2), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centres[filled], np.asarray(calibration.accuracy)[filled], width=width[filled], edgecolor="black",
           color="#4c72b0", label="accuracy")
    gap_bottom = np.minimum(calibration.accuracy, calibration.confidence)[filled]
    gap = np.abs(np.asarray(calibration.accuracy) - np.asarray(calibration.confidence))[filled]
    ax.bar(centres[filled], gap, bottom=gap_bottom, width=width[filled], facecolor="none", hatch="///",
           edgecolor="#c44e52", linewidth=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    scores = f"ECE {100 * calibration.ece:.2f}%  MCE {100 * calibration.mce:.2f}%"
    ax.set_title((title + "\n" if title else "") + scores, fontsize=10)
    ax_count.bar(centres, np.asarray(calibration.count), width=width, color="#8c8c8c", edgecolor="black")
    ax_count.set_yscale("log")
    ax_count.set_xlabel("confidence (top-1 probability)")
    ax_count.set_ylabel("images")
    ax_count.set_xlim(0, 1)
    return save_figure(fig, path)


def plot_runs_curves(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: str | os.PathLike[str], *,
                     title: str = "") -> Path:
    """Loss and accuracy per epoch of several runs overlaid: train solid, validation dashed.

    A classical model (one fit, one history row) appears as a single marker at epoch 1.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11.5, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, (label, history) in enumerate(runs):
        colour = colours[number % len(colours)]
        epochs = [row["epoch"] for row in history]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            train = [np.nan if row.get(key) is None else row[key] for row in history]
            val = [np.nan if row.get(f"val_{key}") is None else row[f"val_{key}"] for row in history]
            if not np.all(np.isnan(train)):
                ax.plot(epochs, train, "-", marker="o", ms=3, color=colour, label=f"{label} train")
            if not np.all(np.isnan(val)):
                ax.plot(epochs, val, "--", marker="s", ms=3, color=colour, label=f"{label} val")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (log scale)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
