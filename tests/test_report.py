"""mnistlab.report: the figures draw what exists — never an empty axis — and label a single epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnistlab.report import curves_figure, plot_curves


def rows(n: int, *, loss: bool = True, val: bool = True) -> list[dict]:
    return [{"epoch": e, "loss": 1.0 / e if loss else None, "accuracy": 0.8 + 0.01 * e,
             "val_loss": 1.1 / e if val else None, "val_accuracy": 0.79 + 0.01 * e if val else None}
            for e in range(1, n + 1)]


def test_a_model_without_a_loss_gets_a_note_not_an_empty_axis() -> None:
    """The sgd baseline has decision values, no loss: the loss panel says so and draws no line."""
    fig = curves_figure(rows(1, loss=False, val=False))
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 0 and any("no loss recorded" in text.get_text() for text in loss_ax.texts)
    assert len(acc_ax.lines) == 1 and acc_ax.get_legend() is not None


def test_a_single_epoch_is_a_labelled_point() -> None:
    fig = curves_figure(rows(1))
    loss_ax, acc_ax = fig.axes
    assert [len(line.get_xdata()) for line in loss_ax.lines] == [1, 1]
    assert sorted(t.get_text() for t in loss_ax.texts) == ["1.0000", "1.1000"]   # train and val values
    assert sorted(t.get_text() for t in acc_ax.texts) == ["0.8000", "0.8100"]


def test_many_epochs_are_lines_without_labels(tmp_path: Path) -> None:
    fig = curves_figure(rows(5))
    assert all(len(ax.texts) == 0 and len(ax.lines) == 2 for ax in fig.axes)
    assert fig.axes[0].lines[0].get_ydata() == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    out = plot_curves(rows(5), tmp_path / "curves.png")
    assert out.read_bytes().startswith(b"\x89PNG")


def test_plots_never_import_pyplot(tmp_path: Path) -> None:
    """pyplot would switch a notebook's backend; the figures are drawn on bare Figure objects."""
    import subprocess
    import sys

    code = ("import sys\nfrom mnistlab.report import plot_curves\n"
            "plot_curves([{'epoch': 1, 'loss': 1.0, 'accuracy': 0.5}], sys.argv[1])\n"
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.png")], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
