"""Everything the CLI prints: tables and lines, from the library's typed results.

Every user-supplied string (paths, names, class names) goes through :func:`esc` before rich sees it, so a
folder called ``x[/y]`` prints as itself instead of being read as markup. On a terminal, tables are rich
tables; when stdout is a pipe or a file, they are plain columns with full values (nothing cut to 80
columns), so ``mnistlab runs list | grep softmax`` finds what it should.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from mnistlab.analysis import Evaluation
    from mnistlab.api import Run
    from mnistlab.calibration import CalibrationRecord
    from mnistlab.compare import Comparison
    from mnistlab.config import ModelInfo, TrainConfig
    from mnistlab.corruptions import RobustnessReport
    from mnistlab.export import ExportResult
    from mnistlab.models import ModelSummary
    from mnistlab.registry import RunRecord
    from mnistlab.reproduce import ExperimentResult, ReproduceResult, SeedsResult, SeedsRow
    from mnistlab.sweep import SweepPlan, SweepResult


class _Console(Console):
    """rich's Console, but a closed pipe raises BrokenPipeError (rich exits with status 1 itself), so the CLI
    can end quietly with status 0 as Unix tools do."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def console() -> Console:
    """The console every command prints to: no syntax highlighting of numbers and paths, and, when stdout is
    not a terminal, no wrapping (a pipe gets each line whole)."""
    out = _Console(highlight=False)
    out.soft_wrap = not out.is_terminal
    return out


def esc(value: Any) -> str:
    """``value`` as text that rich prints literally (square brackets are not markup)."""
    return escape(str(value))


def fmt(value: Any, spec: str = ".4f") -> str:
    """A figure formatted by ``spec``, or empty for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec)


def table(out: Console, headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str = "",
          caption: str = "") -> None:
    """A table: rich on a terminal; plain, untruncated columns otherwise. Cells are plain text (escaped here)."""
    if out.is_terminal:
        from rich.table import Table

        grid = Table(*(esc(h) for h in headers), title=esc(title) if title else None,
                     caption=esc(caption) if caption else None)
        for row in rows:
            grid.add_row(*(esc(cell) for cell in row))
        out.print(grid)
        return
    widths = [max([len(str(h)), *(len(str(row[i])) for row in rows)]) for i, h in enumerate(headers)]
    lines = [title] if title else []
    lines.append("  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if caption:
        lines.append(caption)
    out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------------- data
def data_info(out: Console, info: Mapping[str, Any]) -> None:
    """``data info``: title, checksums, per-split shapes and label counts, file paths."""
    out.print(f"[bold]{esc(info['title'])}[/bold] ({esc(info['dataset'])}) - checksums: {esc(info['checksums'])}")
    splits = info["splits"]
    table(out, ["split", "images", "labels", "pixel range", "mean pixel"],
          [[name, f"{tuple(s['images_shape'])} {s['images_dtype']}", f"{tuple(s['labels_shape'])} {s['labels_dtype']}",
            f"{s['min']}..{s['max']}", f"{s['mean']:.2f}"] for name, s in splits.items()])
    rows = []
    for label, class_name in enumerate(info["class_names"]):
        name = f"{label} {class_name}" if class_name != str(label) else class_name
        rows.append([name, *(f"{s['label_counts'][str(label)]:,}" for s in splits.values())])
    table(out, ["class", *splits.keys()], rows, title="label counts")
    for role, path in info["files"].items():
        out.print(f"  {role:<13} {esc(path)}")


def _shape(dims: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ")"


def recipe_line(info: ModelInfo) -> str:
    """A model's effective training defaults, as ``train MODEL`` with no flags would run them."""
    from mnistlab.config import DEFAULT_LR

    r = info.recipe
    lr = r.lr if r.lr is not None else DEFAULT_LR[r.optimizer]
    threads = "all cores" if r.threads is None else str(r.threads)
    shares = "".join(f", {name} {value:g}" for name, value in (("epoch fraction", r.epoch_fraction),
                                                                 ("backprop fraction", r.backprop_fraction))
                     if value != 1.0)  # shown only where a recipe uses them
    return (f"recipe: {r.epochs} epochs, batch {r.batch_size}, {r.optimizer} lr {lr:g}, schedule {r.schedule}, "
            f"label smoothing {r.label_smoothing:g}, augment {r.augment}{shares}, precision {r.precision}, "
            f"threads {threads}")


def model_summary(out: Console, summary: ModelSummary, info: ModelInfo) -> None:
    """``summary MODEL``: the Keras-style layer table, totals and the recipe's effective defaults."""
    out.print(f"[bold]Model: {esc(summary.model)}[/bold] - {esc(info.description)}")
    table(out, ["Layer (type)", "Output Shape", "Param #"],
          [[f"{row.name} ({row.kind})", _shape(row.output_shape), f"{row.params:,}"] for row in summary.layers])
    out.print(f"Total params: {summary.total_params:,}")
    out.print(f"Trainable params: {summary.trainable_params:,}")
    out.print(f"Non-trainable params: {summary.non_trainable_params:,}")
    out.print(f"Input shape: {_shape(summary.input_shape)}   Output shape: {_shape(summary.output_shape)}")
    out.print(recipe_line(info))


# --------------------------------------------------------------------------------------------- training
def train_result(out: Console, run: Run) -> None:
    """The lines after ``train``: test figures, where the run is, its registry id."""
    m = run.metrics
    loss = m.get("test_loss")
    loss_text = "n/a" if loss is None or (isinstance(loss, float) and math.isnan(loss)) else f"{loss:.4f}"
    where = f" on {m.get('device')} in {m.get('precision')}" if m.get("precision") else ""
    out.print(f"test loss {loss_text}  test accuracy {m['test_accuracy']:.4f}  "
              f"({m['test_count']:,} images; trained {m['train_seconds']:.1f} s{where})")
    if m.get("status") == "stopped":
        out.print(f"stopped early after epoch {m.get('stopped_after_epoch')} of {m.get('epochs')}")
    out.print(f"run directory: {esc(run.path)}")
    if run.id is not None:
        out.print(f"registry: run {run.id}")


def ensemble_result(out: Console, run: Run) -> None:
    """The lines after ``ensemble``: each member's test figures, the ensemble's, where it is."""
    m = run.metrics
    rows = [[str(i), esc(member.get("model")), esc(member.get("weights")), fmt(member.get("test_accuracy")),
             fmt(member.get("test_loss")), esc(member.get("path"))] for i, member in enumerate(m.get("members", []))]
    table(out, ["member", "model", "weights", "test accuracy", "test loss", "run"], rows,
          title="members (scored in fp32 on the same images)")
    out.print(f"members: test accuracy {m['member_test_accuracy_mean']:.4f} ± {m['member_test_accuracy_std']:.4f} "
              "(mean ± std)")
    out.print(f"[bold]ensemble[/bold] (mean of {len(rows)} softmax probabilities): test accuracy "
              f"{m['test_accuracy']:.4f}  test loss {fmt(m.get('test_loss'))}  ({m['test_count']:,} images)")
    out.print(f"ensemble directory: {esc(run.path)} (a self-contained copy of the members' weights)")
    if run.id is not None:
        out.print(f"registry: run {run.id}")


def config_line(config: TrainConfig) -> str:
    """Every setting of a run as ``key=value`` pairs."""
    return ", ".join(f"{k}={v}" for k, v in config.to_dict().items() if v is not None and v != {})


# ------------------------------------------------------------------------------------------- evaluation
def confusion_text(confusion: Any, class_names: Sequence[str]) -> str:
    """The confusion matrix as aligned text (rows: true class, columns: predicted)."""
    from mnistlab.analysis import confusion_text as text

    return text(confusion, tuple(class_names))


def weights_line(used: str, best: dict[str, Any] | None, *, epochs: int) -> str:
    """Which of a run's weights a command uses, e.g. ``weights: best (epoch 4 of 10, val_loss 0.0312)``."""
    if used == "best":
        if best:
            return (f"weights: best (epoch {best.get('epoch')} of {epochs}, {esc(str(best.get('monitor')))} "
                    f"{float(best.get('value', float('nan'))):.4f}); --weights last for the last epoch's")
        return "weights: best; --weights last for the last epoch's"
    return f"weights: last (epoch {epochs})" if epochs else "weights: last"


def evaluation(out: Console, ev: Evaluation) -> None:
    """``evaluate``: headline figures, per-class report, confusion matrix, confused pairs, files."""
    data = ev.to_dict()
    loss = "n/a (no probabilities)" if ev.loss is None else f"{ev.loss:.4f}"
    out.print(f"[bold]{esc(ev.model)}[/bold] on {esc(ev.dataset)} {ev.split}"
              + (" with test-time augmentation" if ev.tta else "")
              + f": accuracy {ev.accuracy:.4f}  error {100 * ev.error:.2f}%  loss {loss}  ({ev.count:,} images)")
    if ev.tta:
        out.print(f"test-time augmentation: the mean probability over {len(ev.tta)} copies of each image "
                  f"({esc(', '.join(ev.tta))})")
    if ev.same_data is False:
        out.print(f"[yellow]other data:[/yellow] these {ev.split} images are not the ones this run was trained and "
                  "tested on (SHA-256 differs): this is not the run's own score")
    out.print(weights_line(ev.weights_used, ev.best, epochs=len(ev.training.get("history") or [])))
    recorded = data["recorded_test_accuracy"]
    if (ev.split == "test" and recorded is not None and ev.same_data is not False and ev.weights_used == "last"
            and not ev.tta):
        same = abs(float(recorded) - ev.accuracy) < 1e-9
        out.print(f"recorded at training: accuracy {recorded:.4f}"
                  + ("  (matches)" if same else "  (differs: the weights, the data or the arithmetic "
                                                "precision changed since training)"))
    out.print("top-k accuracy: " + "  ".join(f"top-{k} {v:.4f}" for k, v in ev.top_k.items()))
    if ev.calibration is not None:
        out.print(f"calibration: ECE {100 * ev.calibration.ece:.2f}%  MCE {100 * ev.calibration.mce:.2f}% "
                  f"({len(ev.calibration.count)} bins)")
    scaled = ev.temperature_scaling
    if scaled and "stale" in scaled:
        out.print(f"[yellow]temperature scaling not applied:[/yellow] {esc(scaled['stale'])}")
    elif scaled:
        out.print(f"temperature scaling (T {scaled['temperature']:.3f}, fitted on {scaled['fitted_on']}): "
                  f"ECE {100 * scaled['ece_before']:.2f}% -> {100 * scaled['ece_after']:.2f}%  "
                  f"loss {scaled['nll_before']:.4f} -> {scaled['nll_after']:.4f}  "
                  f"not sure (< {scaled['threshold']:.4f}) {100 * scaled['not_sure_fraction']:.2f}%, the rest "
                  f"{100 * scaled['answered_accuracy']:.2f}% accurate")
    elif ev.calibration is not None and ev.family != "classical":
        out.print("not calibrated: `mnistlab calibrate RUN` fits temperature scaling on the validation split")
    if data["published"] and ev.split == "test":
        out.print(f"published ({esc(data['published']['method'])}): "
                  f"{100 * data['published']['test_error']:.2f}% error; this run: {100 * ev.error:.2f}%")
    out.print()
    out.print(esc(ev.report.as_text(digits=4)), end="")
    out.print()
    out.print("confusion matrix (rows: true, columns: predicted)")
    out.print(esc(confusion_text(ev.confusion, ev.class_names)), end="")
    if ev.pairs:
        names = ev.class_names
        table(out, ["true", "predicted as", "images", "share of true class"],
              [[names[p.true], names[p.predicted], str(p.count), f"{100 * p.fraction_of_true:.2f}%"]
               for p in ev.pairs], title="most confused pairs")
    if ev.files:
        folder = ev.files["json"].parent
        out.print(f"files: {esc(folder)}/ ({esc(', '.join(sorted(p.name for p in ev.files.values())))})")
    if ev.html_path is not None:
        out.print(f"report: {esc(ev.html_path)}")
    if ev.registry_ids is not None:
        out.print(f"registry: run {ev.registry_ids[0]}, evaluation {ev.registry_ids[1]}")


def calibration_result(out: Console, record: CalibrationRecord, *, run_dir: Any) -> None:
    """``calibrate``: T, the threshold, and what they do on the validation split."""
    out.print(f"temperature T = {record.temperature:.4f} (fitted on {record.count:,} {record.split} images, "
              f"{record.weights_used} weights)")
    out.print(f"val loss {record.nll_before:.4f} -> {record.nll_after:.4f}   "
              f"val ECE {100 * record.ece_before:.2f}% -> {100 * record.ece_after:.2f}%")
    out.print(f"not sure below top probability {record.threshold:.4f}: {100 * record.not_sure_fraction:.2f}% of val; "
              f"the answered are {100 * record.answered_accuracy:.2f}% accurate (target "
              f"{100 * record.target_accuracy:.2f}%)")
    out.print(f"wrote {esc(run_dir)}/calibration.json; predict, serve and evaluate use it for these weights")


def robustness(out: Console, report: RobustnessReport) -> None:
    """``evaluate --corruptions``: corruption / accuracy / error / x clean error, the mean last, the files."""
    from mnistlab.corruptions import error_ratio_text

    rows = [["clean", f"{report.clean_accuracy:.4f}", f"{100 * report.clean_error:.2f}%", "1.0x"]]
    rows += [[s.name, f"{s.accuracy:.4f}", f"{100 * s.error:.2f}%", error_ratio_text(s.error_ratio)]
             for s in report.scores]
    rows.append(["mean (corrupted)", f"{report.mean_accuracy:.4f}", f"{100 * report.mean_error:.2f}%",
                 error_ratio_text(report.mean_error_ratio)])
    table(out, ["corruption", "accuracy", "error", "x clean error"], rows,
          title=f"{report.model} on {report.dataset} test ({report.count:,} images, seed {report.seed})")
    if report.same_data is False:
        out.print("[yellow]other data:[/yellow] these test images are not the ones this run was tested on")
    if report.files:
        folder = report.files["json"].parent
        out.print(f"files: {esc(folder)}/ ({esc(', '.join(sorted(p.name for p in report.files.values())))})")


# -------------------------------------------------------------------------------------------- reproduce
def reproduce_row(out: Console, row: ExperimentResult) -> None:
    """One experiment's line as it completes."""
    out.print(f"[bold]{esc(row.name)}[/bold]: accuracy {row.accuracy:.4f} on the {row.evaluated_on} "
              f"(tutorial {row.seed_accuracy:.4f}, {row.difference_points:+.2f} pt) in {row.train_seconds:.1f} s")


def reproduce_table(out: Console, result: ReproduceResult, run_ids: Sequence[int]) -> None:
    """The tutorial's table, reproduced, with the report's path and registry ids."""
    rows = []
    for row in result.rows:
        marker = "" if row.evaluated_on == "test set" else "*"
        rows.append([row.name + marker, f"{row.params:,}", str(row.epochs), str(row.batch_size or "-"),
                     f"{row.accuracy:.4f}", f"{row.seed_accuracy:.4f}", f"{row.difference_points:+.2f}",
                     f"{row.train_seconds:.1f}"])
    table(out, ["experiment", "params", "epochs", "batch", "accuracy", "tutorial", "diff", "train s"], rows,
          title="The Keras tutorial's table" + (" (--quick)" if result.quick else ""),
          caption="accuracy on the test set; sgd*: on the held-out 25% of train, as the tutorial measured it")
    timing = getattr(result, "timing", None)
    if timing:
        out.print("time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timing.items()))
    out.print(f"report: {esc(result.report)}")
    if run_ids:
        out.print("registry: runs " + ", ".join(str(i) for i in run_ids))


def _seeds_cells(row: SeedsRow) -> list[str]:
    from mnistlab.sweep import accuracy_cell

    z = "n/a" if row.standard_errors is None else f"{row.standard_errors:+.1f}"
    diff = "-" if row.difference_points is None else f"{row.difference_points:+.2f}"
    return [row.name + ("" if row.evaluated_on == "test set" else "*"), str(len(row.accuracies)),
            accuracy_cell(row.mean, row.std), f"{100 * row.seed_accuracy:.2f}%", diff, z]


def reproduce_seeds_row(out: Console, row: SeedsRow) -> None:
    """One experiment's line as its seeds complete."""
    cells = _seeds_cells(row)
    out.print(f"[bold]{esc(row.name)}[/bold]: {esc(cells[2])} over {cells[1]} seed(s) on the {row.evaluated_on} "
              f"(tutorial {cells[3]}, {cells[4]} pt, {cells[5]} standard errors)")
    for line in row.failed:
        out.print(f"[red]{esc(row.name)} {esc(line)}[/red]")


def reproduce_seeds_table(out: Console, result: SeedsResult) -> None:
    """The tutorial's table over seeds: mean ± std, the tutorial's number, the difference in standard errors."""
    table(out, ["experiment", "seeds", "accuracy (mean ± std)", "tutorial", "diff pt", "diff in SE"],
          [_seeds_cells(row) for row in result.rows],
          title="The Keras tutorial's table over seeds" + (" (--quick)" if result.quick else ""),
          caption="SE: standard error of the mean (std / sqrt(seeds)); sgd*: on the held-out 25% of train")
    out.print(f"time: {result.wall_seconds:.1f} s (Ray start-up {result.ray_start_seconds:.1f} s)")
    out.print(f"results: {esc(result.results)}")


# ------------------------------------------------------------------------------------------------ sweep
def sweep_start(out: Console, plan: SweepPlan, *, address: str | None) -> None:
    """The plan, before Ray starts."""
    configs = len({trial.label for trial in plan.trials})
    res = plan.resources
    out.print(f"sweep of {esc(plan.model)}: {len(plan.trials)} trials ({configs} configuration(s) x "
              f"{len(plan.seeds)} seed(s)) on {esc(address or 'an embedded Ray')}, {res.cpus_per_trial:g} CPU "
              f"({res.threads} thread(s))" + (f" and {res.gpus_per_trial:g} GPU" if res.gpus_per_trial else "")
              + f" per trial; folder {esc(plan.out_dir)}")


def sweep_trial(out: Console, trial: Mapping[str, Any]) -> None:
    """One trial's line as it finishes."""
    from mnistlab.cli import flag_text

    if trial["state"] == "completed":
        what = f"test accuracy {trial['test_accuracy']:.4f} in {trial.get('train_seconds') or 0:.1f} s"
    else:
        what = f"[red]{esc(trial['state'])}[/red]: {esc(flag_text(str(trial.get('error'))))}"
    retried = f" ({trial['attempts']} attempts)" if (trial.get("attempts") or 0) > 1 else ""
    out.print(f"trial {trial['index']} ({esc(trial['label'] or 'recipe')}, seed {trial['seed']}): {what}{retried}")


def sweep_table(out: Console, result: SweepResult) -> None:
    """The sweep's table: mean ± std of test accuracy per configuration over its seeds, best first."""
    from mnistlab.cli import flag_text
    from mnistlab.sweep import accuracy_cell

    rows = [[row.label, f"{row.completed}/{row.trials}", accuracy_cell(row.mean_accuracy, row.std_accuracy),
             fmt(row.mean_train_seconds, ".1f"), "; ".join(row.retried), flag_text("; ".join(row.errors))]
            for row in result.table]
    table(out, ["configuration", "runs", "test accuracy (mean ± std)", "train s", "retried", "failed"], rows,
          title=f"sweep: {len(result.trials)} trials, best first",
          caption="std: sample standard deviation over seeds, in points")
    out.print(f"time: {result.wall_seconds:.1f} s (Ray start-up {result.ray_start_seconds:.1f} s)")
    for note in result.notes:
        out.print(f"[yellow]{esc(note)}[/yellow]")
    out.print(f"sweep: {esc(result.out_dir / 'sweep.json')}")
    if result.html is not None:
        out.print(f"report: {esc(result.html)}")
    if result.comparison_html is not None:
        out.print(f"comparison: {esc(result.comparison_html)}")


# ---------------------------------------------------------------------------------------------- registry
def runs_list(out: Console, records: Sequence[RunRecord], *, registry_path: Any, sort: str | None) -> None:
    """``runs list``: one row per run."""
    if not records:
        out.print(f"no runs match (registry {esc(registry_path)})")
        return
    sort_column = sort if sort and sort not in ("test_accuracy", "params", "train_seconds") else None
    headers = ["id", "recorded (UTC)", "model", "dataset", "test acc", "params", "train s", "precision",
               *([sort_column] if sort_column else []), "state", "path"]
    rows = []
    for r in records:
        figures = r.figures()
        cells = [str(r.id), r.created[:16].replace("T", " "), r.model, r.dataset,
                 fmt(figures.get("test_accuracy")), fmt(r.metrics.get("params"), ","),
                 fmt(r.metrics.get("train_seconds"), ".1f"), str(r.metrics.get("precision") or "")]
        if sort_column:
            cells.append(fmt(figures.get(sort_column), ".4g"))
        rows.append([*cells, r.state, r.path])
    table(out, headers, rows, title=f"runs in {registry_path}")
    for r in records:
        if r.resume_command:
            out.print(f"run {r.id} {r.state}: `{esc(r.resume_command)}` continues it")


def runs_show(out: Console, record: RunRecord) -> None:
    """``runs show ID``: config, versions, figures, history and evaluations of one run."""
    out.print(f"[bold]run {record.id}[/bold]: {esc(record.model)} ({record.family}) on {esc(record.dataset)} - "
              f"{esc(record.state)}")
    out.print(f"  path       {esc(record.path)}" + ("  [red](missing)[/red]" if not record.exists else ""))
    out.print(f"  recorded   {record.created} via {record.source}; updated {record.updated}")
    out.print(f"  status     {esc(record.status)}   git commit {esc(record.git_commit or 'unknown')}")
    device, precision = record.metrics.get("device"), record.metrics.get("precision")
    if precision:
        asked = record.config.get("precision")
        out.print(f"  ran on     {esc(device)} in {esc(precision)} (asked: precision={esc(asked)})")
    out.print("  versions   " + esc(", ".join(f"{k} {v}" for k, v in record.versions.items())))
    # The level (augment=...) is shown; its recorded parameters are for resume's check.
    config = {k: v for k, v in record.config.items() if v is not None and k != "augmentation"}
    out.print("  config     " + esc(", ".join(f"{k}={v}" for k, v in config.items())))
    figures = {k: v for k, v in record.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    out.print("  metrics    " + esc(", ".join(f"{k}={v:.6g}" for k, v in figures.items())))
    if record.history:
        table(out, ["epoch", "loss", "accuracy", "val loss", "val accuracy", "seconds"],
              [[str(row["epoch"]), fmt(row.get("loss")), fmt(row.get("accuracy")), fmt(row.get("val_loss")),
                fmt(row.get("val_accuracy")), fmt(row.get("seconds"), ".2f")] for row in record.history],
              title="history")
    if record.evaluations:
        table(out, ["id", "recorded", "split", "data", "images", "accuracy", "loss", "ECE %", "report"],
              [[str(e.id), e.created, e.split, "OTHER" if e.summary.get("same_data") is False else "own",
                f"{e.count:,}", fmt(e.accuracy), fmt(e.loss), fmt(None if e.ece is None else 100 * e.ece, ".2f"),
                e.report or ""] for e in record.evaluations],
              title="evaluations")


def comparison(out: Console, result: Comparison) -> None:
    """``runs compare``: the side-by-side table, notes, and where the files are."""
    table(out, ["", *(column.label for column in result.columns)], [list(row) for row in result.rows],
          title="runs side by side")
    for column in result.columns:
        if column.note:
            out.print(f"[yellow]{esc(column.label)}[/yellow]: {esc(column.note)}")
    out.print(f"curves: {esc(result.files.get('curves_png', '(no history)'))}")
    out.print(f"report: {esc(result.html)}")


# ------------------------------------------------------------------------------------------------ export
def export_result(out: Console, result: ExportResult) -> None:
    """``export``: the file written, its size and check, the model card."""
    kind = "int8 (dynamic quantization)" if result.quantize == "int8" else "fp32"
    check = (f"differs from fp32 by at most {result.self_check_max_abs_diff:.3g} in logits" if result.quantize == "int8"
             else f"matches the run's scorer to {result.self_check_max_abs_diff:.2g} in logits")
    out.print(f"wrote {esc(result.path)} ({result.size_bytes / 1024:,.1f} KiB, {kind}, ONNX opset {result.opset}; "
              f"onnxruntime {check})")
    out.print(f"input {result.metadata['input_name']} float32 N x 1 x 28 x 28 in [0, 1] -> "
              f"{result.metadata['output_name']} N x {len(result.metadata['class_names'].split(','))}")
    if result.card is not None:
        out.print(f"model card: {esc(result.card)}")
