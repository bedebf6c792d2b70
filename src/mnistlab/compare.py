"""Compare registered runs: a side-by-side table, overlaid training curves, and where each one fails.

Numbers come from the registry (what training recorded) and from each run's test-set evaluation
(``RUN/eval/test/evaluation.json``: reused when it belongs to the run's current weights, computed otherwise).
A run whose directory was deleted keeps its registry figures and curves; its failure analysis is marked
missing instead of failing the whole comparison.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistlab.errors import MnistlabError
from mnistlab.registry import RunRecord

if TYPE_CHECKING:
    from mnistlab.analysis import Evaluation
from mnistlab.runs import write_json_atomic, write_text_atomic

PNG_FILES = {"confusion_png": "confusion.png", "mistakes_png": "mistakes.png"}


@dataclass(frozen=True)
class RunColumn:
    """One compared run: its registry record, its test evaluation (or why there is none) and its images."""

    record: RunRecord
    label: str
    evaluation: Evaluation | None
    images: dict[str, bytes]
    note: str


@dataclass(frozen=True)
class Comparison:
    """The comparison's table (first cell of each row is the figure's name) and the files written."""

    columns: tuple[RunColumn, ...]
    rows: tuple[tuple[str, ...], ...]
    per_class: tuple[tuple[str, ...], ...]
    out_dir: Path
    files: dict[str, Path]
    html: Path


def evaluation_on_test(record: RunRecord, *, device: str = "auto"
                       ) -> tuple[Evaluation | None, dict[str, bytes], str]:
    """(evaluation, PNG bytes, note) of a run on its test split; computes and saves it if not cached."""
    from mnistlab.analysis import Evaluation, cached_evaluation, evaluate_report, evaluation_dir

    if not record.exists:
        return None, {}, f"run directory {record.path} is missing: only the registry's figures are shown"
    try:
        cached = cached_evaluation(record.path, "test")
        data = Evaluation.from_dict(cached) if cached is not None else evaluate_report(
            record.path, split="test", device=device).evaluation
    except MnistlabError as exc:
        return None, {}, f"could not evaluate: {exc}"
    folder = evaluation_dir(record.path, "test")
    images = {key: (folder / name).read_bytes() for key, name in PNG_FILES.items() if (folder / name).is_file()}
    return data, images, ""


def _pct(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{100 * value:.{digits}f}%"


def _table_rows(columns: list[RunColumn]) -> list[tuple[str, ...]]:
    from mnistlab.config import published_figure

    def row(name: str, cells: list[str]) -> tuple[str, ...]:
        return (name, *cells)

    def metric(column: RunColumn, key: str) -> Any:
        return column.record.metrics.get(key)

    def accuracy(column: RunColumn) -> float | None:
        if column.evaluation is not None:
            return column.evaluation.accuracy
        value = metric(column, "test_accuracy")
        return None if value is None else float(value)

    rows = [
        row("model", [f"{c.record.model} ({c.record.family})" for c in columns]),
        row("dataset", [c.record.dataset for c in columns]),
        row("state", [c.record.state for c in columns]),
        row("recorded", [c.record.created.replace("T", " ").rstrip("Z") for c in columns]),
        row("parameters", [f"{metric(c, 'params'):,}" if metric(c, "params") is not None else "" for c in columns]),
        row("epochs", [str(metric(c, "epochs_completed") or "") for c in columns]),
        row("training time", [f"{metric(c, 'train_seconds'):.1f} s" if metric(c, "train_seconds") is not None else ""
                              for c in columns]),
        row("test accuracy", [_pct(accuracy(c)) for c in columns]),
        row("test error", [_pct(_error(accuracy(c))) for c in columns]),
    ]
    published = [published_figure(c.record.model, c.record.dataset) for c in columns]
    rows.append(row("published error (same method)",
                    [f"{_pct(p.test_error)} ({p.method})" if p else "" for p in published]))
    losses = []
    for c in columns:
        loss = c.evaluation.loss if c.evaluation else metric(c, "test_loss")
        losses.append("n/a" if loss is None else f"{loss:.4f}")
    rows.append(row("test loss", losses))
    rows.append(row("top-3 accuracy", [_pct(c.evaluation.top_k.get(3)) if c.evaluation else "" for c in columns]))
    rows.append(row("calibration error (ECE)",
                    [(_pct(c.evaluation.calibration.ece) if c.evaluation.calibration else "n/a")
                     if c.evaluation else "" for c in columns]))
    rows.append(row("macro F1", [f"{c.evaluation.report.macro[2]:.4f}" if c.evaluation else "" for c in columns]))
    weakest, confused = [], []
    for c in columns:
        if c.evaluation is None:
            weakest.append("")
            confused.append("")
            continue
        names, f1 = c.evaluation.class_names, c.evaluation.report.f1
        worst = int(f1.argmin())
        weakest.append(f"{names[worst]} (F1 {f1[worst]:.4f})")
        pairs = c.evaluation.pairs
        confused.append(f"{names[pairs[0].true]} → {names[pairs[0].predicted]} ({pairs[0].count})"
                        if pairs else "none")
    rows.append(row("weakest class", weakest))
    rows.append(row("most confused (true → predicted)", confused))
    rows.append(row("path", [c.record.path for c in columns]))
    return rows


def _per_class_rows(columns: list[RunColumn]) -> list[tuple[str, ...]]:
    evaluated = [c.evaluation for c in columns if c.evaluation is not None]
    if not evaluated:
        return []
    names = evaluated[0].class_names
    rows = []
    for k, name in enumerate(names):
        cells = [f"{c.evaluation.report.f1[k]:.4f}" if c.evaluation and k < len(c.evaluation.class_names) else ""
                 for c in columns]
        rows.append((str(name), *cells))
    return rows


def _error(accuracy: float | None) -> float | None:
    return None if accuracy is None else 1.0 - accuracy


def compare_runs(records: list[RunRecord], *, out_dir: str | os.PathLike[str] | None = None,
                 html: str | os.PathLike[str] | None = None, device: str = "auto") -> Comparison:
    """Compare ``records`` (at least two): write comparison.json, curves.png and report.html into ``out_dir``
    (default ``runs/compare-<time>``). A comparison that fails leaves no folder behind."""
    from mnistlab.analysis import check_html_path
    from mnistlab.runs import default_run_dir, discard_folder, prepare_run_dir

    if len(records) < 2:
        raise MnistlabError("runs compare needs at least two run ids (`mnistlab runs list` shows them)")
    if len({r.id for r in records}) != len(records):
        raise MnistlabError("runs compare: the same run is listed twice; give distinct ids")
    if html is not None:
        check_html_path(html)
    from mnistlab.device import resolve_device

    resolve_device(device)  # a bad device is one error now, not a note in every column
    out = prepare_run_dir(out_dir) if out_dir is not None else default_run_dir("compare")
    try:
        return _compare_into(records, out=out, html=html, device=device)
    except BaseException:
        discard_folder(out, names=COMPARISON_FILES)
        raise


COMPARISON_FILES = ("comparison.json", "curves.png", "report.html", ".owner")


def _compare_into(records: list[RunRecord], *, out: Path, html: str | os.PathLike[str] | None,
                  device: str) -> Comparison:
    from mnistlab.analysis import check_html_path
    from mnistlab.htmlreport import compare_html
    from mnistlab.report import plot_runs_curves

    columns = []
    for record in records:
        evaluation, images, note = evaluation_on_test(record, device=device)
        columns.append(RunColumn(record=record, label=f"#{record.id} {record.model}", evaluation=evaluation,
                                 images=images, note=note))
    rows = _table_rows(columns)
    per_class = _per_class_rows(columns)
    files: dict[str, Path] = {}
    histories = [(c.label, c.record.history) for c in columns if c.record.history]
    curves_png = None
    if histories:
        files["curves_png"] = plot_runs_curves(histories, out / "curves.png", title="training curves")
        curves_png = files["curves_png"].read_bytes()
    files["json"] = write_json_atomic(out / "comparison.json", {
        "runs": [{"id": c.record.id, "path": c.record.path, "model": c.record.model, "label": c.label,
                  "state": c.record.state, "evaluation_note": c.note or None} for c in columns],
        "table": [list(r) for r in rows], "f1_per_class": [list(r) for r in per_class],
    })
    sections = [(f"{c.label} - {c.record.path}", c.evaluation.to_dict() if c.evaluation else None, c.images,
                 c.note) for c in columns]
    page = compare_html(columns=[{"label": c.label} for c in columns], table_rows=rows, curves_png=curves_png,
                        per_class=per_class, sections=sections)
    files["html"] = write_text_atomic(out / "report.html", page)
    target = write_text_atomic(check_html_path(html), page) if html is not None else files["html"]
    return Comparison(columns=tuple(columns), rows=tuple(rows), per_class=tuple(per_class), out_dir=out,
                      files=files, html=target)
