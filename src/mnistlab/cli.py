"""The ``mnistlab`` command line: parse, dispatch to the library, print.

Heavy modules (torch, matplotlib, sklearn) are imported inside each command's handler, so ``mnistlab
--help`` and bad flags answer instantly. A :class:`MnistlabError` becomes one ``mnistlab: error: …`` line and
exit code 2; tracebacks are left for real bugs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from mnistlab import __version__
from mnistlab.config import CLASSICAL_NAMES, DEVICE_NAMES, MODEL_NAMES, OPTIMIZER_NAMES
from mnistlab.errors import MnistlabError, TrainingInterrupted

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``mnistlab train: error: … (see mnistlab train --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def json_text(obj: Any) -> str:
    """Strict JSON for ``--json`` output (NaN and infinities become null)."""
    from mnistlab.runs import json_text as strict

    return strict(obj)


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


# ------------------------------------------------------------------------------------------------- data
def cmd_data_info(args: argparse.Namespace) -> int:
    """``mnistlab data info``: a dataset's shapes, dtypes, value range, label counts and checksum status."""
    from mnistlab.data import dataset_info, load_dataset

    info = dataset_info(load_dataset(args.dataset, data_dir=args.data_dir))
    if args.json:
        print(json_text(info))
        return 0
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{info['title']}[/bold] ({info['dataset']}) - checksums: {info['checksums']}")
    table = Table("split", "images", "labels", "pixel range", "mean pixel")
    for name, split in info["splits"].items():
        table.add_row(name, f"{tuple(split['images_shape'])} {split['images_dtype']}",
                      f"{tuple(split['labels_shape'])} {split['labels_dtype']}",
                      f"{split['min']}..{split['max']}", f"{split['mean']:.2f}")
    console.print(table)
    classes = info["class_names"]
    counts = Table("class", *info["splits"].keys(), title="label counts")
    for label, class_name in enumerate(classes):
        counts.add_row(f"{label} {class_name}" if class_name != str(label) else class_name,
                       *(f"{split['label_counts'][str(label)]:,}" for split in info["splits"].values()))
    console.print(counts)
    for role, path in info["files"].items():
        console.print(f"  {role:<13} {path}")
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    """``mnistlab data show``: a labelled grid of images from one split, as a PNG."""
    import numpy as np

    from mnistlab.data import load_dataset
    from mnistlab.report import plot_digit_grid

    if args.count < 1 or args.count > 400:
        raise MnistlabError(f"--count must be in 1..400, got {args.count}")
    dataset = load_dataset(args.dataset, data_dir=args.data_dir, splits=(args.split,))
    split = dataset.split(args.split)
    if not 0 <= args.start < len(split):
        raise MnistlabError(f"--start must be in 0..{len(split) - 1} for the {args.split} split, got {args.start}")
    indices = np.arange(args.start, min(args.start + args.count, len(split)))
    out = Path(args.out)
    if not out.parent.is_dir():
        raise MnistlabError(f"--out {out}: folder {out.parent} does not exist")
    plot_digit_grid(split.images[indices], split.labels[indices], out, class_names=dataset.class_names,
                    indices=indices.tolist(), title=f"{dataset.name} {args.split} #{indices[0]}-#{indices[-1]}")
    print(f"wrote {out} ({len(indices)} images from {dataset.name} {args.split}, starting at #{args.start})")
    return 0


# ---------------------------------------------------------------------------------------------- models
def cmd_summary(args: argparse.Namespace) -> int:
    """``mnistlab summary MODEL``: the Keras-style table of a network's layers and parameters."""
    from rich.table import Table

    from mnistlab.config import model_info
    from mnistlab.models import build_model, summarize

    info = model_info(args.model)
    summary = summarize(build_model(args.model), name=args.model)
    console = _console()
    console.print(f"[bold]Model: {summary.model}[/bold] - {info.description}")

    def shape(dims: tuple[int | None, ...]) -> str:
        return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ")"

    table = Table("Layer (type)", "Output Shape", "Param #")
    for row in summary.layers:
        table.add_row(f"{row.name} ({row.kind})", shape(row.output_shape), f"{row.params:,}")
    console.print(table)
    console.print(f"Total params: {summary.total_params:,}")
    console.print(f"Trainable params: {summary.trainable_params:,}")
    console.print(f"Non-trainable params: {summary.non_trainable_params:,}")
    console.print(f"Input shape: {shape(summary.input_shape)}   Output shape: {shape(summary.output_shape)}")
    return 0


# -------------------------------------------------------------------------------------------- training
def _check_registry(args: argparse.Namespace) -> None:
    """Open (creating if needed) the registry before any long work, so a bad one fails in milliseconds."""
    from mnistlab.registry import Registry

    Registry.open(args.registry).close()


def _record_runs(args: argparse.Namespace, run_dirs: Sequence[Path | str], *, source: str) -> list[Any]:
    """Record finished runs in the registry; if that fails, say the runs themselves are safe on disk."""
    from mnistlab.registry import Registry

    try:
        with Registry.open(args.registry) as registry:
            return [registry.record_run(run_dir, source=source) for run_dir in run_dirs]  # type: ignore[arg-type]
    except MnistlabError as exc:
        where = ", ".join(str(run_dir) for run_dir in run_dirs)
        raise MnistlabError(f"{where} saved, but not recorded in the registry: {exc} "
                            f"(`mnistlab evaluate RUN` records a run later)") from None


def cmd_train(args: argparse.Namespace) -> int:
    """``mnistlab train MODEL``: train (or fit) a model into a new run directory and record it."""
    from mnistlab.config import TrainConfig, parse_option

    options = dict(parse_option(args.model, text) for text in args.option or [])
    config = TrainConfig.for_model(
        args.model, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        seed=args.seed, val_split=args.val_split, device=args.device, threads=args.threads,
        dataset=args.dataset, data_dir=args.data_dir, precision=args.precision, schedule=args.schedule,
        label_smoothing=args.label_smoothing, **({"options": options} if options else {}),
    )
    _check_registry(args)
    from mnistlab.data import load_dataset_in_background

    pending = load_dataset_in_background(config.dataset, data_dir=config.data_dir)  # overlaps the torch import
    from mnistlab.progress import ConsoleObserver
    from mnistlab.runs import default_run_dir
    from mnistlab.train import fit

    run_dir = Path(args.out) if args.out else default_run_dir(config.model)
    console = _console()
    observer = ConsoleObserver(console)
    try:
        result = fit(config, run_dir=run_dir, dataset=pending.result(), observer=observer)
    except TrainingInterrupted as stop:
        if stop.epochs_completed:  # a partial run is still a run: the registry lists it as interrupted
            _record_runs(args, [stop.run_dir], source="train")
        raise
    finally:
        observer.close()
    loss = "n/a" if result.test.loss != result.test.loss else f"{result.test.loss:.4f}"  # NaN: no probabilities
    console.print(f"test loss {loss}  test accuracy {result.test.accuracy:.4f}  "
                  f"({result.test.count:,} images; trained {result.train_seconds:.1f} s)")
    console.print(f"run directory: {result.run_dir}")
    record = _record_runs(args, [result.run_dir], source="train")[0]
    console.print(f"registry: run {record.id}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``mnistlab evaluate RUN``: the full evaluation of a run on one split, saved and recorded."""
    from mnistlab.analysis import check_html_path, evaluate_report

    if args.html:
        check_html_path(args.html)
    _check_registry(args)
    dataset = None
    if args.data_dir is not None:  # the run's data moved: read the same files from their new folder
        from mnistlab.data import load_run_dataset
        from mnistlab.runs import read_run

        dataset = load_run_dataset(read_run(args.run_dir).config, data_dir=args.data_dir)
    out = evaluate_report(args.run_dir, split=args.split, device=args.device, html=args.html, dataset=dataset)
    evaluation = out.evaluation
    data = evaluation.to_dict()
    from mnistlab.registry import Registry

    with Registry.open(args.registry) as registry:
        record, recorded = registry.record_evaluation(args.run_dir, data, report=out.html)
    if args.json:
        print(json_text({**data, "files": {key: str(path) for key, path in out.files.items()},
                         "html": str(out.html), "registry": {"run": record.id, "evaluation": recorded.id}}))
        return 0
    from rich.table import Table

    console = _console()
    loss = "n/a (no probabilities)" if evaluation.loss is None else f"{evaluation.loss:.4f}"
    console.print(f"[bold]{evaluation.model}[/bold] on {evaluation.dataset} {args.split}: "
                  f"accuracy {evaluation.accuracy:.4f}  error {100 * (1 - evaluation.accuracy):.2f}%  loss {loss}  "
                  f"({evaluation.count:,} images)")
    recorded_accuracy = data["recorded_test_accuracy"]
    if args.split == "test" and recorded_accuracy is not None:
        same = abs(float(recorded_accuracy) - evaluation.accuracy) < 1e-9
        console.print(f"recorded at training: accuracy {recorded_accuracy:.4f}"
                      + ("  (matches)" if same else "  (differs: the weights, the data or the arithmetic "
                                                    "precision changed since training)"))
    console.print("top-k accuracy: " + "  ".join(f"top-{k} {v:.4f}" for k, v in evaluation.top_k.items()))
    if evaluation.calibration is not None:
        console.print(f"calibration: ECE {100 * evaluation.calibration.ece:.2f}%  "
                      f"MCE {100 * evaluation.calibration.mce:.2f}% ({len(evaluation.calibration.count)} bins)")
    if data["published"] and args.split == "test":
        console.print(f"published ({data['published']['method']}): {100 * data['published']['test_error']:.2f}% "
                      f"error; this run: {100 * (1 - evaluation.accuracy):.2f}%")
    console.print()
    console.print(evaluation.report.as_text(digits=4), end="")
    console.print()
    from mnistlab.analysis import confusion_text

    console.print("confusion matrix (rows: true, columns: predicted)")
    console.print(confusion_text(evaluation.confusion, evaluation.class_names), end="")
    if evaluation.pairs:
        names = evaluation.class_names
        table = Table("true", "predicted as", "images", "share of true class", title="most confused pairs")
        for pair in evaluation.pairs:
            table.add_row(names[pair.true], names[pair.predicted], str(pair.count),
                          f"{100 * pair.fraction_of_true:.2f}%")
        console.print(table)
    console.print(f"files: {out.out_dir}/ ({', '.join(sorted(p.name for p in out.files.values()))})")
    console.print(f"report: {out.html}")
    console.print(f"registry: run {record.id}, evaluation {recorded.id}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``mnistlab reproduce``: the Keras tutorial's four experiments and their report."""
    from mnistlab.progress import ConsoleObserver
    from mnistlab.reproduce import SEED_EXPERIMENTS, ExperimentResult, reproduce
    from mnistlab.runs import default_run_dir

    only = None
    if args.only is not None:  # "" is an error, not "all four"
        only = tuple(name.strip() for name in args.only.split(",") if name.strip())
        known = [exp.name for exp in SEED_EXPERIMENTS]
        unknown = [name for name in only if name not in known]
        if unknown or not only:
            raise MnistlabError(f"--only {args.only!r}: choose from {', '.join(known)}")
    _check_registry(args)
    console = _console()
    out = Path(args.out) if args.out else default_run_dir("reproduce-quick" if args.quick else "reproduce")
    observers: list[ConsoleObserver] = []

    def observer_for(name: str) -> ConsoleObserver:
        observers.append(ConsoleObserver(console, label=name))
        return observers[-1]

    def on_result(row: ExperimentResult) -> None:
        console.print(f"[bold]{row.name}[/bold]: accuracy {row.accuracy:.4f} on the {row.evaluated_on} "
                      f"(tutorial {row.seed_accuracy:.4f}, {row.difference_points:+.2f} pt) "
                      f"in {row.train_seconds:.1f} s")

    try:
        result = reproduce(out_dir=out, quick=args.quick, seed=args.seed, device=args.device,
                           observer_for=observer_for, on_result=on_result, only=only)
    finally:
        for observer in observers:
            observer.close()
    from rich.table import Table

    table = Table("experiment", "params", "epochs", "batch", "accuracy", "tutorial", "diff", "train s",
                  title="The Keras tutorial's table" + (" (--quick)" if args.quick else ""),
                  caption="accuracy on the test set; sgd*: on the held-out 25% of train, as the tutorial measured it")
    for row in result.rows:
        marker = "" if row.evaluated_on == "test set" else "*"
        table.add_row(row.name + marker, f"{row.params:,}", str(row.epochs), str(row.batch_size or "-"),
                      f"{row.accuracy:.4f}", f"{row.seed_accuracy:.4f}", f"{row.difference_points:+.2f}",
                      f"{row.train_seconds:.1f}")
    console.print(table)
    console.print(f"report: {result.report}")
    records = _record_runs(args, [row.run_dir for row in result.rows], source="reproduce")
    console.print("registry: runs " + ", ".join(str(record.id) for record in records))
    return 0


# ---------------------------------------------------------------------------------------------- registry
def _registry(args: argparse.Namespace) -> Any:
    from mnistlab.registry import Registry

    return Registry.open(args.registry, create=False)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "" if value is None else format(value, spec)


def cmd_runs_list(args: argparse.Namespace) -> int:
    """``mnistlab runs list``: the registry's runs, filtered and sorted."""
    if args.limit is not None and args.limit < 1:
        raise MnistlabError(f"--limit must be >= 1, got {args.limit}")
    if args.json:
        from mnistlab.registry import default_registry_path

        path = default_registry_path(args.registry)
        if not path.is_file() or path.stat().st_size == 0:
            print("[]")  # for scripts, "no runs yet" is an empty list, not an error
            return 0
    with _registry(args) as registry:
        if args.json and registry.count() == 0:
            print("[]")
            return 0
        records = registry.list_runs(model=args.model, dataset=args.dataset, sort=args.sort, reverse=args.reverse,
                                     limit=args.limit)
        path = registry.path
    if args.json:
        print(json_text([{"id": r.id, "created": r.created, "source": r.source, "model": r.model,
                          "family": r.family, "dataset": r.dataset, "state": r.state, "path": r.path,
                          "metrics": r.metrics, "figures": r.figures()} for r in records]))
        return 0
    from rich.table import Table

    console = _console()
    if not records:
        console.print(f"no runs match (registry {path})")
        return 0
    sort_column = args.sort if args.sort and args.sort not in ("test_accuracy", "params", "train_seconds") else None
    headers = ["id", "recorded (UTC)", "model", "dataset", "test acc", "params", "train s"]
    table = Table(*headers, *([sort_column] if sort_column else []), "state", title=f"runs in {path}")
    table.add_column("path", overflow="fold")
    for r in records:
        figures = r.figures()
        cells = [str(r.id), r.created[:16].replace("T", " "), r.model, r.dataset,
                 _fmt(r.metrics.get("test_accuracy")), _fmt(r.metrics.get("params"), ","),
                 _fmt(r.metrics.get("train_seconds"), ".1f")]
        if sort_column:
            cells.append(_fmt(figures.get(sort_column), ".4g"))
        state = r.state if r.state == "ok" else f"[red]{r.state}[/red]"
        table.add_row(*cells, state, r.path)
    console.print(table)
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    """``mnistlab runs show ID``: one run's config, versions, history and evaluations."""
    with _registry(args) as registry:
        record = registry.resolve(args.run)
    if args.json:
        from dataclasses import asdict

        print(json_text({**asdict(record), "state": record.state}))
        return 0
    from rich.table import Table

    console = _console()
    console.print(f"[bold]run {record.id}[/bold]: {record.model} ({record.family}) on {record.dataset} - "
                  f"{record.state}")
    console.print(f"  path       {record.path}" + ("  [red](missing)[/red]" if not record.exists else ""))
    console.print(f"  recorded   {record.created} via {record.source}; updated {record.updated}")
    console.print(f"  status     {record.status}   git commit {record.git_commit or 'unknown'}")
    console.print("  versions   " + ", ".join(f"{k} {v}" for k, v in record.versions.items()))
    config = {k: v for k, v in record.config.items() if v is not None}
    console.print("  config     " + ", ".join(f"{k}={v}" for k, v in config.items()))
    figures = {k: v for k, v in record.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    console.print("  metrics    " + ", ".join(f"{k}={v:.6g}" for k, v in figures.items()))
    if record.history:
        history = Table("epoch", "loss", "accuracy", "val loss", "val accuracy", "seconds", title="history")
        for row in record.history:
            history.add_row(str(row["epoch"]), _fmt(row.get("loss")), _fmt(row.get("accuracy")),
                            _fmt(row.get("val_loss")), _fmt(row.get("val_accuracy")), _fmt(row.get("seconds"), ".2f"))
        console.print(history)
    if record.evaluations:
        evaluations = Table("id", "recorded", "split", "images", "accuracy", "loss", "ECE %", "report",
                            title="evaluations")
        for e in record.evaluations:
            evaluations.add_row(str(e.id), e.created, e.split, f"{e.count:,}", _fmt(e.accuracy), _fmt(e.loss),
                                _fmt(None if e.ece is None else 100 * e.ece, ".2f"), e.report or "")
        console.print(evaluations)
    return 0


def cmd_runs_compare(args: argparse.Namespace) -> int:
    """``mnistlab runs compare ID ID...``: runs side by side, with curves and one HTML page."""
    from mnistlab.compare import compare_runs
    from mnistlab.runs import default_run_dir

    if len(args.runs) < 2:
        raise MnistlabError("runs compare needs at least two run ids (`mnistlab runs list` shows them)")
    with _registry(args) as registry:
        records = [registry.resolve(ref) for ref in args.runs]
    out = Path(args.out) if args.out else default_run_dir("compare")
    comparison = compare_runs(records, out_dir=out, html=args.html, device=args.device)
    if args.json:
        print(json_text({"table": [list(row) for row in comparison.rows],
                         "f1_per_class": [list(row) for row in comparison.per_class],
                         "files": {key: str(path) for key, path in comparison.files.items()},
                         "html": str(comparison.html)}))
        return 0
    from rich.table import Table

    console = _console()
    table = Table("", *(column.label for column in comparison.columns), title="runs side by side")
    for row in comparison.rows:
        table.add_row(*row)
    console.print(table)
    for column in comparison.columns:
        if column.note:
            console.print(f"[yellow]{column.label}[/yellow]: {column.note}")
    console.print(f"curves: {comparison.files.get('curves_png', '(no history)')}")
    console.print(f"report: {comparison.html}")
    return 0


def cmd_runs_rm(args: argparse.Namespace) -> int:
    """``mnistlab runs rm ID...``: forget runs (their directories stay on disk)."""
    with _registry(args) as registry:
        removed = registry.remove(args.runs)
    for record in removed:
        print(f"forgot run {record.id} ({record.model}, {record.path}); its files were left on disk")
    return 0


# ------------------------------------------------------------------------------------------- prediction
INVERT_CHOICES = ("auto", "yes", "no")  # = mnistlab.predict.INVERT_CHOICES (kept here so --help stays light)


def show_input_paths(out: Path, count: int) -> list[Path]:
    """Where ``--show-input`` writes: ``out`` itself for one image, else ``out-1.png``, ``out-2.png``, ..."""
    if count == 1:
        return [out]
    width = len(str(count))
    return [out.with_name(f"{out.stem}-{i:0{width}d}{out.suffix or '.png'}") for i in range(1, count + 1)]


def cmd_predict(args: argparse.Namespace) -> int:
    """``mnistlab predict RUN IMAGE...``: the digit in each image, with its top-k probabilities."""
    from mnistlab.imaging import encode_png, expand_image_paths, prepare_image
    from mnistlab.predict import Predictor, format_percent
    from mnistlab.runs import check_run_dir, write_bytes_atomic

    check_run_dir(args.run_dir)
    if args.top < 1:
        raise MnistlabError(f"--top must be >= 1, got {args.top}")
    outs: list[Path] = []
    paths = expand_image_paths(args.images)
    if args.show_input:
        out = Path(args.show_input)
        if out.suffix.lower() != ".png":
            raise MnistlabError(f"--show-input {out}: name a .png file (e.g. seen.png)")
        if not out.parent.is_dir():
            raise MnistlabError(f"--show-input {out}: folder {out.parent} does not exist")
        outs = show_input_paths(out, len(paths))
        inputs = {path.resolve() for path in paths}
        clash = [str(target) for target in outs if target.resolve() in inputs]
        if clash:
            raise MnistlabError(f"--show-input would overwrite the input image {clash[0]}; choose another name")
    # Every image is prepared before the model loads: a bad file fails fast, naming itself.
    prepared = [prepare_image(path, invert=args.invert) for path in paths]
    predictor = Predictor(args.run_dir, device=args.device)
    if args.top > predictor.num_classes:
        raise MnistlabError(f"--top must be at most {predictor.num_classes} (the model's classes), "
                            f"got {args.top}")
    import numpy as np

    predictions = predictor.predict(np.stack([item.pixels for item in prepared]))
    for item, out in zip(prepared, outs, strict=False):
        write_bytes_atomic(out, encode_png(item.pixels))
    if args.json:
        info = predictor.info()
        results = []
        for i, (path, item, prediction) in enumerate(zip(paths, prepared, predictions, strict=True)):
            results.append({"image": str(path), **prediction.to_dict(top=args.top), "inverted": item.inverted,
                            "input_png": str(outs[i]) if outs else None})
        print(json_text({"run": str(args.run_dir), "model": info["model"], "dataset": info["dataset"],
                         "test_accuracy": info["test_accuracy"], "results": results}))
        return 0
    width = max(len(str(path)) for path in paths)
    for i, (path, prediction) in enumerate(zip(paths, predictions, strict=True)):
        ranked = "  ".join(f"{name} {format_percent(p)}" for _, name, p in prediction.top(args.top))
        shown = f"  -> {outs[i]}" if outs else ""
        print(f"{path!s:<{width}}  {prediction.name}   ({ranked}){shown}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``mnistlab serve RUN``: the draw-a-digit page and the JSON API, until Ctrl-C."""
    import os

    from mnistlab.serve import serve

    serve(run_dir=args.run_dir, host=args.host, port=args.port, device=args.device,
          access_log=not args.quiet, token=args.token or os.environ.get("MNISTLAB_TOKEN") or None)
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _add_dataset_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="mnist", help="mnist (bundled, default) or fashion-mnist")
    parser.add_argument("--data-dir", help="a folder holding the four IDX files (raw or .gz) to use instead")


def _add_registry_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", metavar="PATH",
                        help="the run registry (SQLite) file; default $MNISTLAB_HOME/registry.sqlite, else "
                             "$XDG_DATA_HOME/mnistlab/registry.sqlite (~/.local/share/mnistlab/...)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    parser = _Parser(prog="mnistlab", description="MNIST done properly: data, models, training, evaluation.")
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    data = commands.add_parser("data", help="look at a dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", parser_class=_Parser)
    info = data_commands.add_parser("info", help="shapes, dtypes, value range, label counts, checksum status")
    _add_dataset_flags(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.set_defaults(handler=cmd_data_info)
    show = data_commands.add_parser("show", help="save a labelled grid of digits as a PNG")
    _add_dataset_flags(show)
    show.add_argument("--split", default="train", choices=("train", "test"))
    show.add_argument("--start", type=int, default=0, help="index of the first image (default 0)")
    show.add_argument("--count", type=int, default=25, help="how many images (default 25)")
    show.add_argument("--out", required=True, help="PNG file to write")
    show.set_defaults(handler=cmd_data_show)

    summary = commands.add_parser("summary", help="a Keras-style table of a model's layers and parameters")
    summary.add_argument("model", metavar="MODEL", help=f"one of {', '.join(MODEL_NAMES)}")
    summary.set_defaults(handler=cmd_summary)

    train = commands.add_parser("train", help="train a model and write a run directory")
    train.add_argument("model", metavar="MODEL", help=f"a network ({', '.join(MODEL_NAMES)}) or a classical "
                                                      f"baseline ({', '.join(CLASSICAL_NAMES)})")
    train.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="a classical model's hyper-parameter, e.g. k=5 for knn (repeatable)")
    train.add_argument("--epochs", type=int, help="default: the model's recipe (the tutorial's 30)")
    train.add_argument("--batch-size", type=int, help="default: the recipe's (softmax 128, mlp/cnn 200)")
    train.add_argument("--optimizer", help=f"one of {', '.join(OPTIMIZER_NAMES)} (default rmsprop)")
    train.add_argument("--lr", type=float, help="learning rate (default: Keras' for the optimizer)")
    train.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and splits (default 0)")
    train.add_argument("--val-split", type=float, default=0.0, help="fraction of train held out, in [0, 1)")
    train.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_NAMES)} (default auto)")
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    train.add_argument("--precision", help="auto (default: bf16 where the hardware has it), fp32 or bf16")
    train.add_argument("--schedule", help="learning-rate schedule: constant or onecycle (default: the recipe's)")
    train.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing in [0, 1)")
    train.add_argument("--out", help="run directory to create (default runs/MODEL-TIMESTAMP)")
    _add_dataset_flags(train)
    _add_registry_flag(train)
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="score a run: per-class metrics, confusions, mistakes, "
                                                    "calibration, and a self-contained HTML report")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--split", default="test", choices=("test", "val", "train"),
                          help="test (default), val (rebuilt from the run's --val-split and seed) or train")
    evaluate.add_argument("--html", metavar="PATH", help="also write the HTML report here "
                                                         "(it is always written to RUN_DIR/eval/SPLIT/report.html)")
    evaluate.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_NAMES)}")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.add_argument("--data-dir", help="read the run's dataset from this folder (when its files moved)")
    _add_registry_flag(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = commands.add_parser("predict", help="read the digit in image files with a trained run")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `mnistlab train`")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files; a folder means its images")
    predict.add_argument("--top", type=int, default=3, help="how many classes to list per image (default 3)")
    predict.add_argument("--json", action="store_true", help="print JSON (all probabilities) for scripts")
    predict.add_argument("--show-input", metavar="OUT.png",
                         help="save the 28x28 the model saw (several images: OUT-1.png, OUT-2.png, ...)")
    predict.add_argument("--invert", default="auto", choices=INVERT_CHOICES,
                         help="auto (default): detect dark ink on light paper; yes: force it; "
                              "no: the image is already light ink on dark")
    predict.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICE_NAMES)} (default cpu)")
    predict.set_defaults(handler=cmd_predict)

    serve = commands.add_parser("serve", help="serve the draw-a-digit page and a JSON API for a trained run")
    serve.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `mnistlab train`")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICE_NAMES)} (default cpu)")
    serve.add_argument("--quiet", action="store_true", help="no access log (one line per request)")
    serve.add_argument("--token", help="require `Authorization: Bearer TOKEN` on /api/* (the page takes it "
                       "from the URL printed at start); default: $MNISTLAB_TOKEN, else none")
    serve.set_defaults(handler=cmd_serve)

    repro = commands.add_parser("reproduce", help="rerun the seed tutorial's four experiments and write a report")
    repro.add_argument("--quick", action="store_true", help="a short version for a first look (under a minute)")
    repro.add_argument("--out", help="folder to create (default runs/reproduce-TIMESTAMP)")
    repro.add_argument("--seed", type=int, default=0)
    repro.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_NAMES)}")
    repro.add_argument("--only", help="comma-separated subset of softmax,mlp,cnn,sgd (default: all four)")
    _add_registry_flag(repro)
    repro.set_defaults(handler=cmd_reproduce)

    registry = commands.add_parser("runs", help="the run registry: list, show, compare and forget runs")
    runs_commands = registry.add_subparsers(dest="runs_command", required=True, metavar="ACTION",
                                            parser_class=_Parser)
    listing = runs_commands.add_parser("list", help="registered runs, filtered and sorted")
    listing.add_argument("--model", help="only runs of this model")
    listing.add_argument("--dataset", help="only runs on this dataset")
    listing.add_argument("--sort", metavar="FIGURE", help="sort best first by a figure, e.g. test_accuracy, "
                                                          "test_loss, test_error, train_seconds, params, test_ece")
    listing.add_argument("--reverse", action="store_true", help="reverse the order")
    listing.add_argument("--limit", type=int, help="show at most this many")
    listing.add_argument("--json", action="store_true", help="print JSON")
    _add_registry_flag(listing)
    listing.set_defaults(handler=cmd_runs_list)
    show = runs_commands.add_parser("show", help="everything recorded about one run")
    show.add_argument("run", metavar="ID", help="a run id (or its directory)")
    show.add_argument("--json", action="store_true", help="print JSON")
    _add_registry_flag(show)
    show.set_defaults(handler=cmd_runs_show)
    compare = runs_commands.add_parser("compare", help="runs side by side: table, overlaid curves, HTML report "
                                                      "of where each fails")
    compare.add_argument("runs", metavar="ID", nargs="+", help="two or more run ids (or directories)")
    compare.add_argument("--out", help="folder to create for the comparison (default runs/compare-TIMESTAMP)")
    compare.add_argument("--html", metavar="PATH", help="also write the HTML report here")
    compare.add_argument("--device", default="auto", help=f"for evaluations still to compute: "
                                                          f"{', '.join(DEVICE_NAMES)}")
    compare.add_argument("--json", action="store_true", help="print JSON")
    _add_registry_flag(compare)
    compare.set_defaults(handler=cmd_runs_compare)
    remove = runs_commands.add_parser("rm", help="forget runs (their directories stay on disk)")
    remove.add_argument("runs", metavar="ID", nargs="+", help="run ids (or directories)")
    _add_registry_flag(remove)
    remove.set_defaults(handler=cmd_runs_rm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mnistlab`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except MnistlabError as exc:
        print(f"mnistlab: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingInterrupted as exc:
        if exc.epochs_completed:
            print(f"mnistlab: {exc}; `mnistlab evaluate {exc.run_dir}` scores it", file=sys.stderr)
        else:
            print(f"mnistlab: interrupted before the first epoch completed; {exc.run_dir} was not kept",
                  file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("mnistlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
