"""The argument parser: one small function per command. Nothing here imports the library's heavy parts."""

from __future__ import annotations

import argparse
import functools
from typing import NoReturn

from mnistlab import __version__
from mnistlab.config import AUGMENT_NAMES, CLASSICAL_NAMES, DEVICE_NAMES, MODEL_NAMES, OPTIMIZER_NAMES
from mnistlab.runs import WEIGHTS_CHOICES

INVERT_CHOICES = ("auto", "yes", "no")  # = mnistlab.imaging.INVERT_CHOICES (kept here so --help stays light)
EXIT_USAGE = 2
# Library parameter names whose flag is not simply --name-with-dashes.
_FLAG_FOR_PARAMETER = {"run_dir": "--out", "options": "--option", "registry": "--registry"}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``mnistlab train: error: … (see mnistlab train --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


@functools.cache
def flag_names() -> dict[str, str]:
    """Every library parameter name the CLI has a flag for -> that flag (``batch_size`` -> ``--batch-size``)."""
    names: dict[str, str] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            long = [option for option in action.option_strings if option.startswith("--")]
            if long:
                names.setdefault(action.dest, long[0])
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    return {**names, **_FLAG_FOR_PARAMETER}


def _add_dataset_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="mnist", help="mnist (bundled, default) or fashion-mnist")
    parser.add_argument("--data-dir", help="a folder holding the four IDX files (raw or .gz) to use instead")


def _add_registry_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", metavar="PATH",
                        help="the run registry (SQLite) file; default $MNISTLAB_HOME/registry.sqlite, else "
                             "$XDG_DATA_HOME/mnistlab/registry.sqlite (~/.local/share/mnistlab/...)")


def _add_run_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run directory, or a run id from `mnistlab runs list`")


def _data_parsers(commands: argparse._SubParsersAction) -> None:
    from mnistlab.cli import commands as cmd

    data = commands.add_parser("data", help="look at a dataset")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", parser_class=Parser)
    info = actions.add_parser("info", help="shapes, dtypes, value range, label counts, checksum status")
    _add_dataset_flags(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.set_defaults(handler=cmd.data_info)
    show = actions.add_parser("show", help="save a labelled grid of digits as an image (.png, .jpg, ...)")
    _add_dataset_flags(show)
    show.add_argument("--split", default="train", choices=("train", "test"))
    show.add_argument("--start", type=int, default=0, help="index of the first image (default 0)")
    show.add_argument("--count", type=int, default=25, help="how many images (default 25)")
    show.add_argument("--out", required=True, help="image file to write; its extension picks the format")
    show.set_defaults(handler=cmd.data_show)
    summary = commands.add_parser("summary", help="a Keras-style table of a model's layers, parameters and recipe")
    summary.add_argument("model", metavar="MODEL", help=f"one of {', '.join(MODEL_NAMES)}")
    summary.set_defaults(handler=cmd.summary)


def _train_parser(commands: argparse._SubParsersAction) -> None:
    from mnistlab.cli import commands as cmd

    train = commands.add_parser("train", help="train a model and write a run directory",
                                description="Unset options take the model's recipe; `mnistlab summary MODEL` "
                                            "shows each model's effective defaults.")
    train.add_argument("model", metavar="MODEL", nargs="?", help=f"a network ({', '.join(MODEL_NAMES)}) or a "
                                                                 f"classical baseline ({', '.join(CLASSICAL_NAMES)})")
    train.add_argument("--resume", metavar="RUN", help="continue this run (a folder or run id) from its last "
                                                       "checkpoint, to its epochs or to --epochs N; other settings "
                                                       "given must match the run's")
    train.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="a classical model's hyper-parameter (k=5 for knn), or a network's --schedule "
                            "parameter (patience=3 for plateau); repeatable")
    train.add_argument("--epochs", type=int, help="default: the model's recipe (softmax/mlp/cnn: the tutorial's 30)")
    train.add_argument("--batch-size", type=int,
                       help="default: the recipe's (softmax 128, mlp/cnn 200, fast 256, best 128)")
    train.add_argument("--optimizer", help=f"one of {', '.join(OPTIMIZER_NAMES)} (default: the recipe's)")
    train.add_argument("--lr", type=float, help="learning rate (default: the recipe's, else Keras' for the optimizer)")
    # Defaults None (filled in by the handler) so that --resume can tell a given setting from a default.
    train.add_argument("--seed", type=int, help="seed for weights, shuffling and splits (default 0)")
    train.add_argument("--val-split", type=float, help="fraction of train held out, in [0, 1) (default 0)")
    train.add_argument("--device", help=f"one of {', '.join(DEVICE_NAMES)} (default auto)")
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: the recipe's, else all cores)")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="data-parallel training in N processes on this machine (torch's elastic launcher, as "
                            "`torchrun --standalone --nproc-per-node N`; gloo on CPU, NCCL on CUDA; one thread "
                            "per process unless OMP_NUM_THREADS or --threads says otherwise); --batch-size stays "
                            "the global batch")
    train.add_argument("--precision", help="auto (bf16 where the hardware has it), fp32 or bf16 "
                                           "(default: the recipe's)")
    train.add_argument("--schedule", help="learning-rate schedule (default: the recipe's): constant; onecycle; "
                                          "cosine (to --option min_lr=0 over the run); step (times --option "
                                          "gamma=0.1 every step_size=10 epochs); plateau (Keras ReduceLROnPlateau "
                                          "on val_loss: factor=0.1 patience=10 min_delta=1e-4 cooldown=0 "
                                          "min_lr=0)")
    train.add_argument("--weight-decay", type=float,
                       help="decoupled weight decay for --optimizer adam (AdamW, as torch.optim.AdamW); default 0")
    train.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing in [0, 1)")
    train.add_argument("--epoch-fraction", type=float, metavar="F",
                       help="train each epoch on this share (0, 1] of the shuffled images (default: the recipe's: "
                            "fast 0.8, the others 1)")
    train.add_argument("--backprop-fraction", type=float, metavar="F",
                       help="selective backprop: each step scores its batch without gradients and trains on this "
                            "share (0, 1] of it, the images the model is least sure of; the reported training "
                            "loss and accuracy are then the scoring pass's (default: the recipe's: fast 0.5, the "
                            "others 1)")
    train.add_argument("--augment", choices=AUGMENT_NAMES,
                       help="random changes of each batch: light (slant, size, position), strong (+ elastic, "
                            "stroke width), robust (light + grey background, faded ink, sensor noise); default: "
                            "the recipe's (best: light, the others none)")
    train.add_argument("--out", help="run directory to create (default runs/MODEL-TIMESTAMP)")
    train.add_argument("--init-from", metavar="RUN", help="fine-tune: start from this run's weights (a folder or "
                                                          "run id; best where it kept them), same architecture")
    train.add_argument("--early-stop", type=int, metavar="PATIENCE",
                       help="stop once --monitor has not improved for PATIENCE epochs (needs --val-split); "
                            "the best epoch's weights are kept in RUN/best.safetensors")
    train.add_argument("--monitor", choices=("val_loss", "val_accuracy"),
                       help="the figure --early-stop watches (default val_loss)")
    train.add_argument("--tensorboard", metavar="DIR",
                       help="also log each epoch as TensorBoard events in DIR/RUN-NAME (needs "
                            "pip install 'mnistlab[tensorboard]'; view with tensorboard --logdir DIR)")
    _add_dataset_flags(train)
    _add_registry_flag(train)
    train.set_defaults(handler=cmd.train, dataset=None)


def _add_weights_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="auto", choices=WEIGHTS_CHOICES,
                        help="best (the best epoch's, kept by runs trained with --early-stop), last (the last "
                             "epoch's), or auto (default: best where the run has them, else last)")


def _sweep_parser(commands: argparse._SubParsersAction) -> None:
    from mnistlab.cli import commands as cmd

    sweep = commands.add_parser(
        "sweep", help="many runs on Ray: a grid of settings times seeds, with a mean ± std table",
        description="Every trial is a normal run (its own folder under --out and its own registry row), run as a Ray "
                    "task. Needs Ray: pip install 'mnistlab[scale]'.")
    sweep.add_argument("model", metavar="MODEL", help=f"a network ({', '.join(MODEL_NAMES)}) or a classical "
                                                      f"baseline ({', '.join(CLASSICAL_NAMES)})")
    sweep.add_argument("--seeds", default="0", help="seeds to run each configuration with: 0-9, 0,3,7 (default 0)")
    sweep.add_argument("--grid", action="extend", nargs="+", metavar="KEY=V1,V2",
                       help="settings to sweep, by train's flag names: epochs, batch-size, optimizer, lr, val-split, "
                            "precision, schedule, label-smoothing, augment, weight-decay, epoch-fraction, "
                            "backprop-fraction (all combinations)")
    sweep.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="a classical model's hyper-parameter, or a schedule's, for every trial (repeatable)")
    sweep.add_argument("--epochs", type=int, help="for every trial (default: the recipe's)")
    sweep.add_argument("--batch-size", type=int, help="for every trial (default: the recipe's)")
    sweep.add_argument("--optimizer", help=f"one of {', '.join(OPTIMIZER_NAMES)} (default: the recipe's)")
    sweep.add_argument("--lr", type=float, help="for every trial (default: the recipe's)")
    sweep.add_argument("--val-split", type=float, help="fraction of train held out, in [0, 1) (default 0)")
    sweep.add_argument("--device", help=f"one of {', '.join(DEVICE_NAMES)} (default auto: cuda in trials given "
                                        "--gpus-per-trial, else cpu)")
    sweep.add_argument("--precision", help="auto, fp32 or bf16 (default: the recipe's)")
    sweep.add_argument("--schedule", help="constant, onecycle, cosine, step or plateau (default: the recipe's)")
    sweep.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing in [0, 1)")
    sweep.add_argument("--augment", choices=AUGMENT_NAMES,
                       help="batch augmentation (default: the recipe's; best: light, the others none)")
    sweep.add_argument("--out", help="the sweep's folder, to create (default runs/sweep-TIMESTAMP)")
    sweep.add_argument("--address", metavar="HOST:PORT",
                       help="run on this Ray cluster (`ray start --head --port PORT`); default: an embedded Ray "
                            "on this machine, started and stopped by the sweep")
    sweep.add_argument("--cpus-per-trial", type=float, default=1.0,
                       help="Ray CPUs per trial, also its torch threads (default 1)")
    sweep.add_argument("--gpus-per-trial", type=float, default=0.0,
                       help="Ray GPUs per trial; fractions share a GPU, e.g. 0.25 (default 0)")
    sweep.add_argument("--retries", type=int, default=3,
                       help="times a trial whose worker process died is retried, resuming from its last "
                            "checkpoint (default 3)")
    sweep.add_argument("--no-compare", action="store_true",
                       help="skip the side-by-side comparison page (it evaluates each configuration's best run)")
    sweep.add_argument("--json", action="store_true", help="print sweep.json's table as JSON")
    _add_dataset_flags(sweep)
    _add_registry_flag(sweep)
    sweep.set_defaults(handler=cmd.sweep, dataset=None)


def _evaluate_parser(commands: argparse._SubParsersAction) -> None:
    from mnistlab.cli import commands as cmd

    evaluate = commands.add_parser("evaluate", help="score a run: per-class metrics, confusions, mistakes, "
                                                    "calibration, and a self-contained HTML report")
    _add_run_argument(evaluate)
    evaluate.add_argument("--split", default="test", choices=("test", "val", "train"),
                          help="test (default), val (rebuilt from the run's --val-split and seed) or train")
    evaluate.add_argument("--html", metavar="PATH", help="also write the HTML report here "
                                                         "(it is always written to RUN/eval/SPLIT/report.html)")
    evaluate.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_NAMES)}")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.add_argument("--corruptions", action="store_true",
                          help="instead: the robustness report, test accuracy under 15 MNIST-C-style corruptions "
                               "(written to RUN/eval/test/corruptions.*)")
    evaluate.add_argument("--seed", type=int, default=0, help="with --corruptions: the corruptions' seed (default 0)")
    evaluate.add_argument("--tta", action="store_true",
                          help="test-time augmentation: average the probabilities over each image and its copies "
                               "shifted by 1 px right, left, down and up (written to RUN/eval/SPLIT-tta/)")
    evaluate.add_argument("--data-dir", help="read the run's dataset from this folder (when its files moved)")
    _add_weights_flag(evaluate)
    _add_registry_flag(evaluate)
    evaluate.set_defaults(handler=cmd.evaluate)


def _calibrate_parser(commands: argparse._SubParsersAction) -> None:
    from mnistlab.cli import commands as cmd

    calibrate = commands.add_parser(
        "calibrate", help="fit temperature scaling and a 'not sure' threshold on the run's validation split",
        description="Writes RUN/calibration.json: one temperature T (minimising the validation NLL of "
                    "softmax(logits / T)) and the smallest top probability at which the validation images answered "
                    "reach --target-accuracy; below it predict, serve and the page say 'not sure'. Needs a run "
                    "trained with --val-split (never fitted on the test split). evaluate then reports test ECE "
                    "before and after.")
    _add_run_argument(calibrate)
    calibrate.add_argument("--target-accuracy", type=float, default=0.995,
                           help="accuracy the answered validation images must reach (default 0.995)")
    calibrate.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_NAMES)}")
    calibrate.add_argument("--data-dir", help="read the run's dataset from this folder (when its files moved)")
    calibrate.add_argument("--json", action="store_true", help="print calibration.json")
    _add_weights_flag(calibrate)
    _add_registry_flag(calibrate)
    calibrate.set_defaults(handler=cmd.calibrate)


BACKEND_CHOICES = ("auto", "torch", "onnx")  # = mnistlab.predict.BACKENDS (kept here so --help stays light)
_MODEL_HELP = ("a run directory, a run id from `mnistlab runs list`, or a .onnx file from `mnistlab export` "
               "(runs on onnxruntime, without torch)")
_BACKEND_HELP = ("auto (default): onnxruntime for a .onnx file, torch for a run; onnx: export the run once "
                 "(cached in RUN/export/) and run it on onnxruntime, without torch")


def _export_parser(commands: argparse._SubParsersAction) -> None:
    from mnistlab.cli import commands as cmd

    export = commands.add_parser("export", help="export a run to ONNX (with its contract as metadata) and write "
                                                "a model card beside it")
    _add_run_argument(export)
    export.add_argument("--format", default="onnx", choices=("onnx",), help="file format (default onnx)")
    export.add_argument("--out", metavar="PATH", help="the .onnx file to write (default RUN/export/model.onnx)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..20 (default 17)")
    export.add_argument("--quantize", default="none", choices=("none", "int8"),
                        help="int8: dynamic int8 quantization by onnxruntime (smaller; slightly different "
                             "logits)")
    export.add_argument("--no-card", action="store_true", help="do not write MODEL_CARD.md beside the file")
    _add_weights_flag(export)
    _add_registry_flag(export)
    export.set_defaults(handler=cmd.export)


def _predict_parsers(commands: argparse._SubParsersAction) -> None:
    from mnistlab.cli import commands as cmd

    predict = commands.add_parser("predict", help="read the digit in image files with a trained run")
    predict.add_argument("run_dir", metavar="MODEL", help=_MODEL_HELP)
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files; a folder means its images")
    predict.add_argument("--top", type=int, default=3, help="how many classes to list per image (default 3)")
    predict.add_argument("--json", action="store_true", help="print JSON (all probabilities) for scripts")
    predict.add_argument("--show-input", metavar="OUT.png",
                         help="save the 28x28 the model saw (several images: OUT-1.png, OUT-2.png, ...)")
    predict.add_argument("--invert", default="auto", choices=INVERT_CHOICES,
                         help="auto (default): detect dark ink on light paper; yes: force it; "
                              "no: the image is already light ink on dark")
    predict.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICE_NAMES)} (default cpu)")
    predict.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help=_BACKEND_HELP)
    _add_weights_flag(predict)
    _add_registry_flag(predict)
    predict.set_defaults(handler=cmd.predict)

    serve = commands.add_parser("serve", help="serve the draw-a-digit page and a JSON API for a trained run")
    serve.add_argument("run_dir", metavar="MODEL", help=_MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICE_NAMES)} (default cpu)")
    serve.add_argument("--quiet", action="store_true", help="no access log (one line per request)")
    serve.add_argument("--token", help="require `Authorization: Bearer TOKEN` on /api/* (the page takes it "
                       "from the URL printed at start); default: $MNISTLAB_TOKEN, else none")
    serve.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help=_BACKEND_HELP)
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes sharing the port, each with its own model (default 1); image "
                            "uploads scale with cores: 2 on a 2-core machine")
    _add_weights_flag(serve)
    _add_registry_flag(serve)
    serve.set_defaults(handler=cmd.serve)


def _ensemble_parser(commands: argparse._SubParsersAction) -> None:
    from mnistlab.cli import commands as cmd

    ensemble = commands.add_parser(
        "ensemble", help="average several network runs into one run-like directory (mean softmax probabilities)",
        description="The directory holds a copy of every member's weights, so it evaluates, predicts, serves and "
                    "exports like a single run, and keeps working when a member is deleted. Members must share "
                    "input, classes and dataset; any architectures may mix.")
    ensemble.add_argument("runs", metavar="RUN", nargs="+", help="two or more run directories or run ids")
    ensemble.add_argument("--out", help="the ensemble directory to create (default runs/ensemble-TIMESTAMP)")
    ensemble.add_argument("--device", default="auto", help=f"where to score the test split: "
                                                           f"{', '.join(DEVICE_NAMES)} (figures are fp32)")
    ensemble.add_argument("--json", action="store_true", help="print metrics.json as JSON")
    _add_weights_flag(ensemble)
    _add_registry_flag(ensemble)
    ensemble.set_defaults(handler=cmd.ensemble)


def _reproduce_parser(commands: argparse._SubParsersAction) -> None:
    from mnistlab.cli import commands as cmd

    repro = commands.add_parser("reproduce", help="rerun the seed tutorial's four experiments and write a report")
    repro.add_argument("--quick", action="store_true", help="a short version for a first look (under a minute)")
    repro.add_argument("--out", help="folder to create (default runs/reproduce-TIMESTAMP)")
    repro.add_argument("--seed", type=int, default=0)
    repro.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_NAMES)}")
    repro.add_argument("--only", help="comma-separated subset of softmax,mlp,cnn,sgd (default: all four)")
    repro.add_argument("--seeds", type=int, metavar="N",
                       help="run each experiment with N seeds (--seed, --seed+1, ...) as a sweep on Ray and report "
                            "mean ± std beside the tutorial's number (needs pip install 'mnistlab[scale]')")
    repro.add_argument("--address", metavar="HOST:PORT", help="with --seeds: the Ray cluster (default: embedded)")
    repro.add_argument("--cpus-per-trial", type=float, default=1.0,
                       help="with --seeds: Ray CPUs (and torch threads) per run (default 1)")
    _add_registry_flag(repro)
    repro.set_defaults(handler=cmd.reproduce)


def _runs_parsers(commands: argparse._SubParsersAction) -> None:
    from mnistlab.cli import commands as cmd

    registry = commands.add_parser("runs", help="the run registry: list, show, compare and forget runs")
    actions = registry.add_subparsers(dest="runs_command", required=True, metavar="ACTION", parser_class=Parser)
    listing = actions.add_parser("list", help="registered runs, filtered and sorted")
    listing.add_argument("--model", help="only runs of this model")
    listing.add_argument("--dataset", help="only runs on this dataset")
    listing.add_argument("--sort", metavar="FIGURE", help="sort best first by a figure, e.g. test_accuracy, "
                                                          "test_loss, test_error, train_seconds, params, test_ece")
    listing.add_argument("--reverse", action="store_true", help="reverse the order")
    listing.add_argument("--limit", type=int, help="show at most this many")
    listing.add_argument("--json", action="store_true", help="print JSON")
    _add_registry_flag(listing)
    listing.set_defaults(handler=cmd.runs_list)
    show = actions.add_parser("show", help="everything recorded about one run")
    show.add_argument("run", metavar="ID", help="a run id (or its directory)")
    show.add_argument("--json", action="store_true", help="print JSON")
    _add_registry_flag(show)
    show.set_defaults(handler=cmd.runs_show)
    compare = actions.add_parser("compare", help="runs side by side: table, overlaid curves, HTML report "
                                                 "of where each fails")
    compare.add_argument("runs", metavar="ID", nargs="+", help="two or more run ids (or directories)")
    compare.add_argument("--out", help="folder to create for the comparison (default runs/compare-TIMESTAMP)")
    compare.add_argument("--html", metavar="PATH", help="also write the HTML report here")
    compare.add_argument("--device", default="auto", help=f"for evaluations still to compute: "
                                                          f"{', '.join(DEVICE_NAMES)}")
    compare.add_argument("--json", action="store_true", help="print JSON")
    _add_registry_flag(compare)
    compare.set_defaults(handler=cmd.runs_compare)
    remove = actions.add_parser("rm", help="forget runs (their directories stay on disk)")
    remove.add_argument("runs", metavar="ID", nargs="+", help="run ids (or directories)")
    _add_registry_flag(remove)
    remove.set_defaults(handler=cmd.runs_rm)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    parser = Parser(prog="mnistlab", description="MNIST done properly: data, models, training, evaluation.")
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for add in (_data_parsers, _train_parser, _sweep_parser, _evaluate_parser, _ensemble_parser, _calibrate_parser,
                _predict_parsers,
                _export_parser, _reproduce_parser, _runs_parsers):
        add(commands)
    return parser
