"""One handler per command: turn parsed flags into a library call, hand the result to :mod:`.render`.

Rules live in the library (:mod:`mnistlab.api` records runs in the registry, resolves run ids, reloads
moved data); the handlers only check what is about the command line itself (ranges of flags that have no
library counterpart, output file names).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mnistlab.cli import render
from mnistlab.errors import MnistlabError


def json_text(obj: Any) -> str:
    """Strict JSON for ``--json`` output (NaN and infinities become null)."""
    from mnistlab.runs import json_text as strict

    return strict(obj)


# ------------------------------------------------------------------------------------------------- data
def data_info(args: argparse.Namespace) -> int:
    """``mnistlab data info``: a dataset's shapes, dtypes, value range, label counts and checksum status."""
    from mnistlab import datasets

    info = datasets.info(datasets.load(args.dataset, data_dir=args.data_dir))
    if args.json:
        print(json_text(info))
    else:
        render.data_info(render.console(), info)
    return 0


IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".tif": "tiff",
                 ".tiff": "tiff", ".bmp": "bmp", ".gif": "gif"}


def data_show(args: argparse.Namespace) -> int:
    """``mnistlab data show``: a labelled grid of images from one split, in the format its extension names."""
    import numpy as np

    from mnistlab import datasets
    from mnistlab.report import plot_digit_grid

    if args.count < 1 or args.count > 400:
        raise MnistlabError(f"--count must be in 1..400, got {args.count}")
    out = Path(args.out)
    if out.is_dir():
        raise MnistlabError(f"--out {out}: is a folder; name an image file such as {out / 'digits.png'}")
    image_format = IMAGE_FORMATS.get(out.suffix.lower())
    if image_format is None:
        raise MnistlabError(f"--out {out}: name an image file ending in {', '.join(IMAGE_FORMATS)}")
    if not out.parent.is_dir():
        raise MnistlabError(f"--out {out}: folder {out.parent} does not exist")
    dataset = datasets.load(args.dataset, data_dir=args.data_dir, splits=(args.split,))
    split = dataset.split(args.split)
    if not 0 <= args.start < len(split):
        raise MnistlabError(f"--start must be in 0..{len(split) - 1} for the {args.split} split, got {args.start}")
    indices = np.arange(args.start, min(args.start + args.count, len(split)))
    plot_digit_grid(split.images[indices], split.labels[indices], out, class_names=dataset.class_names,
                    indices=indices.tolist(), title=f"{dataset.name} {args.split} #{indices[0]}-#{indices[-1]}",
                    image_format=image_format)
    render.console().print(f"wrote {render.esc(out)} ({len(indices)} images from {dataset.name} {args.split}, "
                           f"starting at #{args.start})")
    return 0


def summary(args: argparse.Namespace) -> int:
    """``mnistlab summary MODEL``: the Keras-style table of a network's layers, and its recipe."""
    from mnistlab.config import model_info
    from mnistlab.models import summary as model_summary

    info = model_info(args.model)
    render.model_summary(render.console(), model_summary(args.model), info)
    return 0


# -------------------------------------------------------------------------------------------- training
def train(args: argparse.Namespace) -> int:
    """``mnistlab train MODEL``: train (or fit) a model into a new run directory and record it;
    ``mnistlab train --resume RUN``: continue a run from its last checkpoint; ``--nproc N``: either of them in N
    data-parallel processes."""
    if args.nproc is not None:
        from mnistlab.distributed import launch

        return launch(nproc=args.nproc, argv=args.argv)
    try:
        if args.resume is not None:
            return _train_resume(args)
        return _train_new(args)
    finally:
        from mnistlab import distributed

        distributed.shutdown()  # a torchrun rank leaves its process group (no-op otherwise)


def _train_new(args: argparse.Namespace) -> int:
    from mnistlab.config import parse_option

    if args.model is None:
        raise MnistlabError("train: name the MODEL to train, or pass --resume RUN to continue a run")
    options = dict(parse_option(args.model, text) for text in args.option or [])
    from mnistlab.cli import flag_text
    from mnistlab.progress import make_progress

    console = render.console()
    progress = make_progress("auto", console=console)
    if hasattr(progress, "translate"):
        progress.translate = flag_text
    from mnistlab.runs import deferred_writes  # not training: torch is imported after the data read starts

    with deferred_writes():  # the summary prints while matplotlib draws curves.png
        _train_and_print(args, options, console, progress)
    return 0


def _train_and_print(args: argparse.Namespace, options: dict[str, Any], console: Any, progress: Any) -> None:
    from mnistlab import api

    run = api.train(
        args.model, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        seed=args.seed or 0, val_split=args.val_split or 0.0, device=args.device or "auto", threads=args.threads,
        dataset=args.dataset or "mnist", data_dir=args.data_dir, precision=args.precision, schedule=args.schedule,
        label_smoothing=args.label_smoothing, augment=args.augment, weight_decay=args.weight_decay,
        epoch_fraction=args.epoch_fraction, backprop_fraction=args.backprop_fraction,
        options=options or None, run_dir=args.out,
        registry=args.registry, progress=False, callbacks=[progress], early_stop=args.early_stop,
        monitor=args.monitor or "val_loss", init_from=args.init_from, tensorboard=args.tensorboard,
    )
    if not _replica():
        render.train_result(console, run)


def _replica() -> bool:
    """A torchrun rank other than 0: rank 0 alone prints the result."""
    from mnistlab.distributed import is_replica

    return is_replica()


def _train_resume(args: argparse.Namespace) -> int:
    """``train --resume RUN``: every flag given besides --epochs/--threads/--device must match the run's."""
    from mnistlab import api

    if (args.out is not None or args.option or args.early_stop is not None or args.init_from is not None
            or args.monitor is not None):
        raise MnistlabError("--resume continues the run in its own folder from its own weights with its own early "
                            "stopping; leave out --out, --option, --init-from, --early-stop and --monitor")
    changes = {"model": args.model, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
               "seed": args.seed, "val_split": args.val_split, "precision": args.precision,
               "schedule": args.schedule, "label_smoothing": args.label_smoothing, "dataset": args.dataset,
               "augment": args.augment, "weight_decay": args.weight_decay,
               "epoch_fraction": args.epoch_fraction, "backprop_fraction": args.backprop_fraction}
    console = render.console()
    run = api.resume(args.resume, epochs=args.epochs, threads=args.threads, device=args.device,
                     data_dir=args.data_dir, changes=changes, registry=args.registry, progress="auto",
                     tensorboard=args.tensorboard)
    if not _replica():
        render.train_result(console, run)
    return 0


def sweep(args: argparse.Namespace) -> int:
    """``mnistlab sweep MODEL --seeds ... --grid ...``: every trial a normal run on Ray, then the mean ± std table.

    Exit code 0 when every trial completed, 2 when some failed (each one's line is in the table).
    """
    from mnistlab import api
    from mnistlab.config import parse_option
    from mnistlab.registry import default_registry_path
    from mnistlab.sweep import Resources, parse_grid, parse_seeds, plan_sweep, prepare_sweep_dir, require_ray, run_sweep

    options = dict(parse_option(args.model, text) for text in args.option or [])
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
                "val_split": args.val_split, "device": args.device, "precision": args.precision,
                "schedule": args.schedule, "label_smoothing": args.label_smoothing, "augment": args.augment,
                "dataset": args.dataset, "data_dir": str(Path(args.data_dir).absolute()) if args.data_dir else None,
                "options": options or None}
    settings = {key: value for key, value in settings.items() if value is not None}
    resources = Resources(cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                          max_retries=args.retries)
    grid = parse_grid(args.grid or [])
    seeds = parse_seeds(args.seeds)
    # Everything is checked before a folder or Ray exists: the plan (each trial's config), Ray, the registry.
    plan_sweep(args.model, seeds=seeds, grid=grid, settings=settings, resources=resources, out_dir=".")
    require_ray()
    api.check_registry(args.registry)
    out = prepare_sweep_dir(args.out)
    plan = plan_sweep(args.model, seeds=seeds, grid=grid, settings=settings, resources=resources, out_dir=out,
                      registry=str(default_registry_path(args.registry).absolute()))
    console = render.console()
    if not args.json:
        render.sweep_start(console, plan, address=args.address)
    result = run_sweep(plan, address=args.address, compare=not args.no_compare,
                       on_trial=None if args.json else lambda trial: render.sweep_trial(console, trial))
    if args.json:
        import dataclasses

        print(json_text({"out": str(result.out_dir), "table": [dataclasses.asdict(r) for r in result.table],
                         "trials": list(result.trials), "wall_seconds": result.wall_seconds,
                         "ray_start_seconds": result.ray_start_seconds}))
    else:
        render.sweep_table(console, result)
    return 2 if result.failed else 0


def evaluate(args: argparse.Namespace) -> int:
    """``mnistlab evaluate RUN``: the full evaluation of a run on one split, saved and recorded."""
    from mnistlab import api

    run = api.load(args.run_dir, registry=args.registry, weights=args.weights)
    if args.corruptions:
        if args.tta:
            raise MnistlabError("--corruptions and --tta are two different reports; run them one at a time")
        return _evaluate_corruptions(args, run)
    result = run.evaluate(split=args.split, device=args.device, html=args.html, data_dir=args.data_dir,
                          registry=args.registry, tta=args.tta)
    if args.json:
        ids = result.registry_ids or (None, None)
        print(json_text({**result.to_dict(), "files": {key: str(path) for key, path in result.files.items()},
                         "html": str(result.html_path), "registry": {"run": ids[0], "evaluation": ids[1]}}))
        return 0
    render.evaluation(render.console(), result)
    return 0


def ensemble(args: argparse.Namespace) -> int:
    """``mnistlab ensemble RUN RUN ...``: one run-like directory averaging the members' probabilities."""
    from mnistlab import api

    run = api.ensemble(args.runs, out=args.out, weights=args.weights, device=args.device, registry=args.registry)
    if args.json:
        print(json_text({"run_dir": str(run.path), "registry": run.id,
                         **{k: v for k, v in run.metrics.items() if k != "environment"}}))
        return 0
    render.ensemble_result(render.console(), run)
    return 0


def calibrate(args: argparse.Namespace) -> int:
    """``mnistlab calibrate RUN``: temperature scaling and the not-sure threshold, fitted on the val split."""
    from mnistlab import api

    run = api.load(args.run_dir, registry=args.registry, weights=args.weights)
    record = run.calibrate(target_accuracy=args.target_accuracy, device=args.device, data_dir=args.data_dir)
    if args.json:
        print(json_text(record.to_dict()))
        return 0
    render.calibration_result(render.console(), record, run_dir=run.path)
    return 0


def _evaluate_corruptions(args: argparse.Namespace, run: Any) -> int:
    """``evaluate RUN --corruptions``: the robustness report (test split only)."""
    if args.split != "test":
        raise MnistlabError(f"--corruptions scores the test split; drop --split {args.split}")
    if args.html is not None:
        raise MnistlabError("--corruptions writes its page to RUN/eval/test/corruptions.html; drop --html")
    report = run.evaluate_corruptions(seed=args.seed, device=args.device, data_dir=args.data_dir)
    if args.json:
        print(json_text({**report.to_dict(), "files": {key: str(path) for key, path in (report.files or {}).items()}}))
        return 0
    render.robustness(render.console(), report)
    return 0


def reproduce(args: argparse.Namespace) -> int:
    """``mnistlab reproduce``: the Keras tutorial's four experiments and their report."""
    from mnistlab import api
    from mnistlab.progress import make_progress
    from mnistlab.reproduce import SEED_EXPERIMENTS
    from mnistlab.reproduce import reproduce as run_reproduce
    from mnistlab.runs import default_run_dir

    only = None
    if args.only is not None:  # "" is an error, not "all four"
        only = tuple(name.strip() for name in args.only.split(",") if name.strip())
        known = [exp.name for exp in SEED_EXPERIMENTS]
        unknown = [name for name in only if name not in known]
        if unknown or not only:
            raise MnistlabError(f"--only {args.only!r}: choose from {', '.join(known)}")
    api.check_registry(args.registry)
    from mnistlab.device import resolve_device

    resolve_device(args.device)  # refused before the default folder is reserved
    if args.seeds is not None:
        return _reproduce_seeds(args, only)
    if args.address is not None:
        raise MnistlabError("--address applies with --seeds N (the runs over seeds go to Ray); add --seeds")
    console = render.console()
    out = Path(args.out) if args.out else default_run_dir("reproduce-quick" if args.quick else "reproduce")
    observers: list[Any] = []

    def observer_for(name: str) -> Any:
        observers.append(make_progress("auto", label=name, console=console))
        return observers[-1]

    try:
        result = run_reproduce(out_dir=out, quick=args.quick, seed=args.seed, device=args.device,
                               observer_for=observer_for, on_result=lambda row: render.reproduce_row(console, row),
                               only=only)
    finally:
        for observer in observers:
            getattr(observer, "close", lambda: None)()
    records = api.record_runs([row.run_dir for row in result.rows], source="reproduce", registry=args.registry)
    render.reproduce_table(console, result, [record.id for record in records])
    return 0


def _reproduce_seeds(args: argparse.Namespace, only: tuple[str, ...] | None) -> int:
    """``reproduce --seeds N``: every experiment over N seeds on Ray, mean ± std beside the tutorial's figure."""
    from mnistlab.registry import default_registry_path
    from mnistlab.reproduce import reproduce_seeds
    from mnistlab.runs import default_run_dir

    if not 1 <= args.seeds <= 100:
        raise MnistlabError(f"--seeds must be in 1..100, got {args.seeds}")
    console = render.console()
    name = "reproduce-seeds-quick" if args.quick else "reproduce-seeds"
    out = Path(args.out) if args.out else default_run_dir(name)
    result = reproduce_seeds(out_dir=out, seeds=range(args.seed, args.seed + args.seeds), quick=args.quick,
                             device=args.device, only=only, address=args.address,
                             cpus_per_trial=args.cpus_per_trial,
                             registry=str(default_registry_path(args.registry).absolute()),
                             on_row=lambda row: render.reproduce_seeds_row(console, row))
    render.reproduce_seeds_table(console, result)
    return 2 if any(row.failed for row in result.rows) else 0


# ---------------------------------------------------------------------------------------------- registry
def _registry(args: argparse.Namespace) -> Any:
    from mnistlab.registry import Registry

    return Registry.open(args.registry, create=False)


def _record_json(record: Any) -> dict[str, Any]:
    return {"id": record.id, "created": record.created, "source": record.source, "model": record.model,
            "family": record.family, "dataset": record.dataset, "state": record.state, "path": record.path,
            "metrics": record.metrics, "figures": record.figures()}


def runs_list(args: argparse.Namespace) -> int:
    """``mnistlab runs list``: the registry's runs, filtered and sorted ("no runs yet" is not an error)."""
    from mnistlab.registry import default_registry_path

    if args.limit is not None and args.limit < 1:
        raise MnistlabError(f"--limit must be >= 1, got {args.limit}")
    path = default_registry_path(args.registry)
    if not path.is_file() or path.stat().st_size == 0:
        if args.json:
            print("[]")
        else:
            render.console().print(f"no runs yet (registry {render.esc(path)}); `mnistlab train MODEL` makes one")
        return 0
    with _registry(args) as registry:
        if registry.count() == 0:  # created (by a train that then failed) or emptied by `runs rm`
            records = []
        else:
            records = registry.list_runs(model=args.model, dataset=args.dataset, sort=args.sort,
                                         reverse=args.reverse, limit=args.limit)
        path = registry.path
    if args.json:
        print(json_text([_record_json(r) for r in records]))
        return 0
    render.runs_list(render.console(), records, registry_path=path, sort=args.sort)
    return 0


def runs_show(args: argparse.Namespace) -> int:
    """``mnistlab runs show ID``: one run's config, versions, history and evaluations."""
    with _registry(args) as registry:
        record = registry.resolve(args.run)
    if args.json:
        from dataclasses import asdict

        print(json_text({**asdict(record), "state": record.state}))
        return 0
    render.runs_show(render.console(), record)
    return 0


def runs_compare(args: argparse.Namespace) -> int:
    """``mnistlab runs compare ID ID...``: runs side by side, with curves and one HTML page."""
    from mnistlab.compare import compare_runs

    if len(args.runs) < 2:
        raise MnistlabError("runs compare needs at least two run ids (`mnistlab runs list` shows them)")
    with _registry(args) as registry:
        records = [registry.resolve(ref) for ref in args.runs]
    comparison = compare_runs(records, out_dir=args.out, html=args.html, device=args.device)
    if args.json:
        print(json_text({"table": [list(row) for row in comparison.rows],
                         "f1_per_class": [list(row) for row in comparison.per_class],
                         "files": {key: str(path) for key, path in comparison.files.items()},
                         "html": str(comparison.html)}))
        return 0
    render.comparison(render.console(), comparison)
    return 0


def runs_rm(args: argparse.Namespace) -> int:
    """``mnistlab runs rm ID...``: forget runs; say what happened to each one's folder."""
    with _registry(args) as registry:
        removed = registry.remove(args.runs)
    out = render.console()
    for record in removed:
        fate = "its files were left on disk" if record.exists else "its folder was already gone"
        out.print(f"forgot run {record.id} ({render.esc(record.model)}, {render.esc(record.path)}); {fate}")
    return 0


# ------------------------------------------------------------------------------------------- prediction
def show_input_paths(out: Path, count: int) -> list[Path]:
    """Where ``--show-input`` writes: ``out`` itself for one image, else ``out-1.png``, ``out-2.png``, ..."""
    if count == 1:
        return [out]
    width = len(str(count))
    return [out.with_name(f"{out.stem}-{i:0{width}d}{out.suffix or '.png'}") for i in range(1, count + 1)]


def _show_input_targets(option: str | None, paths: list[Path]) -> list[Path]:
    if not option:
        return []
    out = Path(option)
    if out.suffix.lower() != ".png":
        raise MnistlabError(f"--show-input {out}: name a .png file (e.g. seen.png)")
    if not out.parent.is_dir():
        raise MnistlabError(f"--show-input {out}: folder {out.parent} does not exist")
    outs = show_input_paths(out, len(paths))
    inputs = {path.resolve() for path in paths}
    clash = [str(target) for target in outs if target.resolve() in inputs]
    if clash:
        raise MnistlabError(f"--show-input would overwrite the input image {clash[0]}; choose another name")
    return outs


def predict(args: argparse.Namespace) -> int:
    """``mnistlab predict RUN IMAGE...``: the digit in each image, with its top-k probabilities.

    One unreadable file does not hide the others: every good image is predicted, each bad one gets its own
    error line (and an ``error`` entry in ``--json``), and the exit code is 2 if any failed.
    """
    import sys

    import numpy as np

    from mnistlab.imaging import encode_png, expand_image_paths, prepare_image
    from mnistlab.predict import format_percent, open_predictor
    from mnistlab.runs import write_bytes_atomic

    run_dir = model_source(args)
    if args.top < 1:
        raise MnistlabError(f"--top must be >= 1, got {args.top}")
    paths = expand_image_paths(args.images)
    outs = dict(zip(paths, _show_input_targets(args.show_input, paths), strict=False))
    # Every image is prepared before the model loads: a bad file fails fast, naming itself.
    prepared, failed = {}, {}
    for path in paths:
        try:
            prepared[path] = prepare_image(path, invert=args.invert)
        except MnistlabError as exc:
            failed[path] = str(exc)
    if len(paths) == 1 and failed:
        raise MnistlabError(failed[paths[0]])
    predictor = open_predictor(run_dir, backend=args.backend, device=args.device, weights=args.weights)
    if args.top > predictor.num_classes:
        raise MnistlabError(f"--top must be at most {predictor.num_classes} (the model's classes), got {args.top}")
    good = list(prepared)
    predictions = dict(zip(good, predictor.predict(np.stack([prepared[p].pixels for p in good])), strict=True)
                       ) if good else {}
    for path in good:
        if path in outs:
            write_bytes_atomic(outs[path], encode_png(prepared[path].pixels))
    if args.json:
        info = predictor.info()
        results = [({"image": str(path), **predictions[path].to_dict(top=args.top),
                     "inverted": prepared[path].inverted, "input_png": str(outs[path]) if path in outs else None}
                    if path in predictions else {"image": str(path), "error": failed[path]}) for path in paths]
        print(json_text({"run": str(run_dir), "model": info["model"], "dataset": info["dataset"],
                         "test_accuracy": info["test_accuracy"], "weights": info["weights"], "results": results,
                         "failed": len(failed)}))
    else:
        note = predictor.calibration_note
        if note and predictor.calibration is None and "other weights" in note:  # a stale calibration.json
            print(f"mnistlab: {note}; answering uncalibrated", file=sys.stderr)
        if predictor.info()["weights"] != "last":  # said once, on stderr: stdout stays one line per image
            print(f"mnistlab: using the run's best weights ({predictor.info()['weights']}); --weights last for "
                  "the last epoch's", file=sys.stderr)
        width = max(len(str(path)) for path in paths)
        for path in paths:
            if path not in predictions:
                print(f"mnistlab: error: {failed[path]}", file=sys.stderr)
                continue
            ranked = "  ".join(f"{name} {format_percent(p)}" for _, name, p in predictions[path].top(args.top))
            shown = f"  -> {outs[path]}" if path in outs else ""
            # Below a calibrated run's threshold the answer is "not sure", and the top classes are the guesses.
            guesses = "maybe: " if predictions[path].not_sure else ""
            print(f"{path!s:<{width}}  {predictions[path].answer}   ({guesses}{ranked}){shown}")
    if failed:
        print(f"mnistlab: {len(failed)} of {len(paths)} images could not be read", file=sys.stderr)
        return 2
    return 0


def serve(args: argparse.Namespace) -> int:
    """``mnistlab serve RUN``: the draw-a-digit page and the JSON API, until Ctrl-C."""
    import os

    from mnistlab.serve import serve as run_server

    run_dir = model_source(args)
    run_server(run_dir=run_dir, host=args.host, port=args.port, device=args.device, access_log=not args.quiet,
               backend=args.backend, token=args.token or os.environ.get("MNISTLAB_TOKEN") or None,
               weights=args.weights, workers=args.workers)
    return 0


def model_source(args: argparse.Namespace) -> Path:
    """``predict``/``serve``'s MODEL: a .onnx file as given, else a run directory (a path or a registry id)."""
    from mnistlab.predict import is_onnx_path

    if is_onnx_path(args.run_dir):
        return Path(args.run_dir)
    from mnistlab import api

    return api.resolve_run_dir(args.run_dir, registry=args.registry)


# ------------------------------------------------------------------------------------------------ export
def _registered_id(path: Path, registry: str | None) -> int | None:
    """The registry id of the run at ``path``, or None (not recorded, no registry, or an unreadable one)."""
    from mnistlab.registry import Registry, default_registry_path

    location = default_registry_path(registry)
    if not location.is_file() or location.stat().st_size == 0:
        return None
    try:
        with Registry.open(registry, create=False) as opened:
            return opened.resolve(str(path)).id
    except MnistlabError:
        return None


def export(args: argparse.Namespace) -> int:
    """``mnistlab export RUN``: the run as an ONNX file with its contract as metadata, and a model card."""
    from mnistlab import api

    run = api.load(args.run_dir, registry=args.registry, weights=args.weights)
    if run.id is None:  # given by its path: the file still names its registry id, when it has one
        run.id = _registered_id(run.path, args.registry)
    result = run.export(format=args.format, out=args.out, opset=args.opset, quantize=args.quantize,
                        card=not args.no_card)
    render.export_result(render.console(), result)
    return 0
