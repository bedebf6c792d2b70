"""Deep evaluation of one run on one split: scores -> metrics -> files (JSON, text, PNGs, one HTML page).

Data flow: run directory -> :func:`run_scores` (the model's scores for every image of the split; networks
through torch, classical models through numpy) -> :func:`evaluate_scores` (pure numpy metrics from
:mod:`mnistlab.metrics`) -> :func:`write_evaluation` (``RUN/eval/<split>/``). :func:`evaluate_report` does
all three. Nothing here trains or changes a run's own files.

The ``val`` split is rebuilt from the run's config: the same fraction, seed and method that training used
to hold images out of the training split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from mnistlab import metrics
from mnistlab.config import EVAL_BATCH_SIZE
from mnistlab.errors import MnistlabError
from mnistlab.results import EvalResult
from mnistlab.runs import (
    CURVES_PNG,
    RunFiles,
    WeightsChoice,
    read_json,
    read_run,
    write_json_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    from mnistlab.calibration import CalibrationRecord

EvalSplit = Literal["test", "val", "train"]
EVAL_SPLITS: tuple[str, ...] = get_args(EvalSplit)
ScoreKind = Literal["logits", "probability", "decision"]
EVAL_DIR = "eval"
EVALUATION_JSON = "evaluation.json"
REPORT_HTML = "report.html"
TOP_K = (1, 2, 3, 5)
GALLERY_SIZE = 36
FORMAT = "mnistlab-evaluation/1"


@dataclass(frozen=True)
class RunScores:
    """A run's scores for every image of a split, with the images and where they came from."""

    run: RunFiles
    split: str
    dataset: str
    class_names: tuple[str, ...]
    images: np.ndarray          # uint8 (N, 28, 28)
    labels: np.ndarray          # int64 (N,)
    indices: np.ndarray         # (N,) position of each image in its dataset split
    source_split: str           # the dataset split ``indices`` refer to ("train" for val)
    scores: np.ndarray          # float64 (N, K)
    score_kind: ScoreKind
    seconds: float
    # True: the split's data are those the run recorded at training; False: other data (not the run's own
    # score); None: the run recorded no digest (made before mnistlab recorded them).
    same_data: bool | None = None
    data_sha256: str = ""       # of the source split's arrays, as scored
    tta: tuple[str, ...] = ()   # test-time augmentation: the transforms whose probabilities were averaged

    @property
    def probabilities(self) -> np.ndarray | None:
        """Class probabilities (N, K), or None for a model that gives only decision values."""
        if self.score_kind == "logits":
            return metrics.softmax(self.scores)
        if self.score_kind == "probability":
            return self.scores
        return None


def check_split(split: str) -> str:
    """``split`` if it is one of test, val, train; a clear error otherwise."""
    if split not in EVAL_SPLITS:
        raise MnistlabError(f"`split` {split!r} does not exist; choose one of {', '.join(EVAL_SPLITS)}")
    return split


def validation_indices(run: RunFiles, n_train: int) -> np.ndarray:
    """The training-split indices a run held out for validation, rebuilt from its config.json."""
    config = run.config
    fraction = float(config.get("val_split") or 0.0)
    if fraction <= 0.0:
        raise MnistlabError(f"{run.path}: trained without a validation split (val_split 0), so there is no val "
                            "split to evaluate; use `split` test or train, or retrain with `val_split`")
    seed = int(config.get("seed", 0))
    if run.model.get("family") == "classical":
        from mnistlab.baselines import holdout_indices

        held = holdout_indices(n_train, val_fraction=fraction, seed=seed,
                               method=str(config.get("val_method", "mnistlab")))[1]
    else:
        from mnistlab.data import train_val_indices

        held = train_val_indices(n_train, val_fraction=fraction, seed=seed)[1]
    if len(held) == 0:
        raise MnistlabError(f"{run.path}: its val split is empty (val_split {fraction} of {n_train:,} images); "
                            "use `split` test or train")
    return held


def _load_split(run: RunFiles, split: str, dataset: Any = None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, str]:
    """(dataset, images, labels, indices, source split) of ``split`` for ``run``."""
    from mnistlab.data import load_run_dataset

    source = "test" if split == "test" else "train"
    needed: tuple[str, ...] = (source,)
    if run.model.get("family") == "classical" and run.model.get("name") in ("knn", "svm"):
        needed = tuple(dict.fromkeys((source, "train")))  # their reference images live in the train split
    if dataset is None or any(name not in dataset.splits for name in needed):
        dataset = load_run_dataset(run.config, splits=needed, run_name=str(run.path))  # type: ignore[arg-type]
    data = dataset.split(source)
    indices = validation_indices(run, len(data)) if split == "val" else np.arange(len(data))
    return dataset, data.images[indices], data.labels[indices].astype(np.int64), indices, source


def run_scores(run_dir: str | os.PathLike[str], *, split: str = "test", device: str = "auto",
               batch_size: int = EVAL_BATCH_SIZE, dataset: Any = None, weights: WeightsChoice = "auto",
               tta: bool = False) -> RunScores:
    """Load a run (network or classical) and score every image of ``split`` (test, val or train) with its
    ``weights`` (``auto``: the best epoch's where the run kept them, else the last's). ``tta``: average the
    probabilities over the image and its one-pixel shifts (networks; :func:`mnistlab.inference.predict_logits`)."""
    check_split(split)
    run = read_run(run_dir, weights=weights)
    if tta and run.model.get("family") == "classical":
        raise MnistlabError(f"{run.path}: `tta` (test-time augmentation) scores networks; {run.model.get('name')} "
                            "is a classical model: evaluate it without `tta`")
    dataset, images, labels, indices, source = _load_split(run, split, dataset)
    class_names = tuple(run.model.get("class_names") or dataset.class_names)
    if len(class_names) != len(dataset.class_names):
        raise MnistlabError(f"{run.path}: the model has {len(class_names)} classes but {dataset.name} has "
                            f"{len(dataset.class_names)}; is this run from a different dataset?")
    from mnistlab.data import split_sha256

    digest = split_sha256(dataset.split(source))  # which data these scores are of (hashed once)
    started = time.perf_counter()
    transforms: tuple[str, ...] = ()
    if run.model.get("family") == "classical":
        from mnistlab.baselines import load_classical_model

        model, _ = load_classical_model(run.path, dataset=dataset)
        scores = model.scores(images)
        kind: ScoreKind = model.score_kind
    else:
        from mnistlab.inference import load_network

        # Scored in the precision the run was trained and scored in (bf16 autocast where it ran bf16).
        network = load_network(run.path, device=device, weights=run.weights_used)
        scores = network.logits(images, batch_size=batch_size, tta=tta).cpu().numpy()
        kind = "logits"
        if tta:
            from mnistlab.inference import TTA_NAMES

            transforms = TTA_NAMES
    if not np.isfinite(np.asarray(scores, np.float64)).all():
        raise MnistlabError(f"{run.path}: the model outputs NaN or infinite scores (its weights diverged); "
                            "retrain it with a lower `lr`")
    return RunScores(run=run, split=split, dataset=dataset.name, class_names=class_names, images=images,
                     labels=labels, indices=indices, source_split=source, scores=np.asarray(scores, np.float64),
                     score_kind=kind, seconds=time.perf_counter() - started,
                     same_data=_same_data(run, digest, source), data_sha256=digest, tta=transforms)


def _same_data(run: RunFiles, digest: str, source: str) -> bool | None:
    """Whether ``digest`` is the split the run recorded (SHA-256 of its arrays), or None if none recorded."""
    recorded = ((run.metrics or {}).get("data_sha256") or {}).get(source)
    return None if recorded is None else digest == recorded


def evaluate_run(run_dir: str | os.PathLike[str], *, split: str = "test", device: str = "auto",
                 weights: WeightsChoice = "auto",
                 batch_size: int = EVAL_BATCH_SIZE, dataset: Any = None) -> tuple[EvalResult, dict[str, Any]]:
    """Loss and accuracy of a saved run (network or classical) on ``split``, and its recorded metrics.json.

    The loss of a model without probabilities (sgd, svm) is NaN. Empty dict: the run never finished.
    """
    scored = run_scores(run_dir, split=split, device=device, batch_size=batch_size, dataset=dataset,
                        weights=weights)
    if scored.score_kind == "logits":
        loss = metrics.cross_entropy_from_logits(scored.scores, scored.labels)
    elif scored.probabilities is not None:
        loss = metrics.log_loss(scored.probabilities, scored.labels)
    else:
        loss = float("nan")
    accuracy = metrics.accuracy(scored.labels, metrics.predictions(scored.scores))
    return EvalResult(loss=loss, accuracy=accuracy, count=len(scored.labels)), dict(scored.run.metrics or {})


def weights_sha256(weights_file: str | os.PathLike[str]) -> str:
    """SHA-256 of a weights file: an evaluation belongs to exactly these weights."""
    digest = hashlib.sha256()
    with open(weights_file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Mistake:
    """One misclassified image: where it is, what it is, what the model said and how sure it was."""

    index: int           # in the dataset's ``source_split``
    true: int
    predicted: int
    confidence: float    # probability of the predicted class (or its decision value, for sgd/svm)
    true_probability: float | None


@dataclass(frozen=True)
class Evaluation:
    """Everything measured about one run on one split. ``to_dict`` is what evaluation.json holds."""

    run_dir: str
    model: str
    family: str
    dataset: str
    split: str
    source_split: str
    score_kind: ScoreKind
    class_names: tuple[str, ...]
    count: int
    accuracy: float
    loss: float | None
    top_k: dict[int, float]
    report: metrics.ClassificationReport
    confusion: np.ndarray
    pairs: list[metrics.ConfusedPair]
    calibration: metrics.Calibration | None
    mistakes: list[Mistake]
    weights_sha256: str
    seconds: float
    recorded: dict[str, Any] = field(default_factory=dict)
    # How the model was made: the run's settings, status and per-epoch history (config.json, history.json).
    training: dict[str, Any] = field(default_factory=dict)
    same_data: bool | None = None     # see RunScores.same_data
    weights_used: str = "last"        # which of the run's weights were scored: "last" or "best"
    best: dict[str, Any] | None = None  # for "best": the epoch and the monitor that chose it
    tta: tuple[str, ...] = ()           # test-time augmentation: the transforms averaged (none: plain scoring)
    # With a calibration.json for these weights (fitted on val): NLL/ECE before and after temperature scaling on
    # this split, and the not-sure share (:func:`mnistlab.calibration.split_figures`); None without one.
    temperature_scaling: dict[str, Any] | None = None
    # Where it was written (evaluation.json, PNGs, report.html) and its registry ids, once saved.
    files: dict[str, Path] = field(default_factory=dict, compare=False, repr=False)
    html_path: Path | None = field(default=None, compare=False, repr=False)
    registry_ids: tuple[int, int] | None = field(default=None, compare=False)

    @property
    def error(self) -> float:
        """1 - accuracy."""
        return 1.0 - self.accuracy

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        """Rebuild an evaluation from :meth:`to_dict` output (an evaluation.json), so every reader works with
        this one type instead of string keys."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise MnistlabError(f"not an mnistlab evaluation (format {FORMAT!r} expected)")
        names = tuple(str(n) for n in data["class_names"])
        return cls(
            run_dir=str(data["run_dir"]), model=str(data["model"]), family=str(data["family"]),
            dataset=str(data["dataset"]), split=str(data["split"]), source_split=str(data["source_split"]),
            score_kind=data["score_kind"], class_names=names, count=int(data["count"]),
            accuracy=float(data["accuracy"]), loss=data["loss"],
            top_k={int(k): float(v) for k, v in data["top_k"].items()},
            report=metrics.ClassificationReport.from_dict(data["classification_report"], class_names=names),
            confusion=np.array(data["confusion"], dtype=np.int64),
            pairs=[metrics.ConfusedPair(**pair) for pair in data["most_confused"]],
            calibration=metrics.Calibration.from_dict(data["calibration"]) if data.get("calibration") else None,
            mistakes=[Mistake(**mistake) for mistake in data["worst_mistakes"]],
            weights_sha256=str(data["weights_sha256"]), seconds=float(data["seconds"]),
            recorded={"test_accuracy": data.get("recorded_test_accuracy")}, training=dict(data.get("training") or {}),
            same_data=data.get("same_data"), weights_used=str(data.get("weights_used", "last")),
            best=data.get("best_epoch"), tta=tuple(str(name) for name in data.get("tta") or ()),
            temperature_scaling=data.get("temperature_scaling"),
        )

    def with_files(self, files: dict[str, Path], *, html: Path | None = None,
                   registry_ids: tuple[int, int] | None = None) -> Evaluation:
        """This evaluation with where it was saved (and recorded) attached."""
        return dataclasses.replace(self, files=dict(files), html_path=html or files.get("html"),
                                   registry_ids=registry_ids)

    def to_html(self) -> str:
        """The self-contained HTML report (images inlined) of this evaluation, as written to report.html."""
        if self.html_path is None:
            raise MnistlabError("this evaluation was not saved; Run.evaluate() writes its report.html")
        return self.html_path.read_text(encoding="utf-8")

    def _repr_html_(self) -> str:
        """Jupyter shows the summary figures as a small table."""
        from mnistlab.htmlreport import esc

        rows = [("model", self.model), ("split", f"{self.dataset} {self.split}"), ("images", f"{self.count:,}"),
                ("accuracy", f"{self.accuracy:.4f}"), ("error", f"{100 * self.error:.2f}%"),
                ("loss", "n/a" if self.loss is None else f"{self.loss:.4f}")]
        if self.calibration is not None:
            rows.append(("ECE", f"{100 * self.calibration.ece:.2f}%"))
        cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
        return f"<table>{cells}</table>"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every figure (the HTML report and ``runs compare`` read this)."""
        from mnistlab.config import published_figure

        figure = published_figure(self.model, self.dataset)
        return {
            "format": FORMAT,
            "run_dir": self.run_dir, "model": self.model, "family": self.family, "dataset": self.dataset,
            "split": self.split, "source_split": self.source_split, "score_kind": self.score_kind,
            "class_names": list(self.class_names), "count": self.count,
            "accuracy": self.accuracy, "error": round(1.0 - self.accuracy, 10), "loss": self.loss,
            "top_k": {str(k): v for k, v in self.top_k.items()},
            "classification_report": self.report.to_dict(),
            "confusion": self.confusion.tolist(),
            "confusion_row_normalized": metrics.row_normalized(self.confusion).tolist(),
            "most_confused": [vars(pair) for pair in self.pairs],
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "worst_mistakes": [vars(mistake) for mistake in self.mistakes],
            "published": None if figure is None else {"method": figure.method, "test_error": figure.test_error,
                                                      "source": figure.source},
            "recorded_test_accuracy": self.recorded.get("test_accuracy"),
            "weights_sha256": self.weights_sha256, "seconds": round(self.seconds, 3),
            "training": self.training,
            "same_data": self.same_data,
            "weights_used": self.weights_used, "best_epoch": self.best,
            "tta": list(self.tta) or None,
            "temperature_scaling": self.temperature_scaling,
        }


def evaluate_scores(scored: RunScores, *, gallery: int = GALLERY_SIZE, pairs: int = 10,
                    bins: int = metrics.DEFAULT_CALIBRATION_BINS) -> Evaluation:
    """Compute every metric of :class:`Evaluation` from a run's scores (pure numpy)."""
    labels, scores = scored.labels, scored.scores
    num_classes = len(scored.class_names)
    predicted = metrics.predictions(scores)
    confusion = metrics.confusion_matrix(labels, predicted, num_classes=num_classes)
    probabilities = scored.probabilities
    if scored.score_kind == "logits":
        loss: float | None = metrics.cross_entropy_from_logits(scores, labels)
    elif probabilities is not None:
        loss = metrics.log_loss(probabilities, labels)
    else:
        loss = None
    calibration = None
    confidence_scores = scores if probabilities is None else probabilities
    if probabilities is not None and len(labels):
        calibration = metrics.calibration(probabilities.max(axis=1), predicted == labels, bins=bins)
    worst = metrics.worst_mistakes(confidence_scores, labels, top=gallery)
    mistakes = [Mistake(index=int(scored.indices[i]), true=int(labels[i]), predicted=int(predicted[i]),
                        confidence=float(confidence_scores[i, predicted[i]]),
                        true_probability=None if probabilities is None else float(probabilities[i, labels[i]]))
                for i in worst]
    return Evaluation(
        run_dir=str(scored.run.path), model=str(scored.run.model["name"]),
        family=str(scored.run.model.get("family", "network")), dataset=scored.dataset, split=scored.split,
        source_split=scored.source_split, score_kind=scored.score_kind, class_names=scored.class_names,
        count=len(labels), accuracy=metrics.accuracy(labels, predicted), loss=loss,
        top_k={k: metrics.top_k_accuracy(scores, labels, k=k) for k in TOP_K if k <= num_classes},
        report=metrics.report_from_confusion(confusion, class_names=scored.class_names),
        confusion=confusion, pairs=metrics.most_confused_pairs(confusion, top=pairs),
        calibration=calibration, mistakes=mistakes, weights_sha256=weights_sha256(scored.run.weights),
        seconds=scored.seconds, recorded=dict(scored.run.metrics or {}), training=training_record(scored.run),
        same_data=scored.same_data, weights_used=scored.run.weights_used,
        best=scored.run.best if scored.run.weights_used == "best" else None, tta=scored.tta,
        temperature_scaling=_temperature_scaling(scored),
    )


def _temperature_scaling(scored: RunScores) -> dict[str, Any] | None:
    """Temperature scaling's effect on this split, if the run has a calibration.json for these weights."""
    from mnistlab.calibration import StaleCalibration, calibration_path, load_calibration, split_figures

    if scored.score_kind != "logits" or not len(scored.labels) or not calibration_path(scored.run.path).is_file():
        return None
    try:
        record = load_calibration(scored.run.path, weights_sha256=weights_sha256(scored.run.weights))
    except StaleCalibration as exc:
        return {"stale": str(exc)}
    if record is None:
        return None
    return split_figures(record, scored.scores, scored.labels)


TRAINING_SETTINGS = ("epochs", "batch_size", "optimizer", "lr", "schedule", "label_smoothing", "augment",
                     "weight_decay", "epoch_fraction", "backprop_fraction", "seed", "val_split", "precision",
                     "device", "threads", "options", "dataset",
                     "data_dir", "init_from")


def training_record(run: RunFiles) -> dict[str, Any]:
    """How a run's model was made, for reports that travel on their own: settings, what ran, how far it got."""
    metrics_json = run.metrics or {}
    settings = {key: run.config[key] for key in TRAINING_SETTINGS if run.config.get(key) not in (None, {}, "")}
    return {
        "settings": settings,
        "status": metrics_json.get("status", "incomplete (no metrics.json)"),
        "epochs_completed": metrics_json.get("epochs_completed", len(run.history)),
        "epochs": run.config.get("epochs"),
        "ran_on": metrics_json.get("device"), "ran_in": metrics_json.get("precision") or run.model.get("precision"),
        "train_seconds": metrics_json.get("train_seconds"),
        "history": [{key: row.get(key) for key in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")}
                    for row in run.history],
    }


# ---------------------------------------------------------------------------------------------- files
def confusion_text(confusion: np.ndarray, class_names: tuple[str, ...] | list[str]) -> str:
    """The confusion matrix as an aligned text table (rows true, columns predicted)."""
    names = [str(name) for name in class_names]
    corner = "true \\ predicted"
    first = max(len(corner), *(len(name) for name in names))
    width = max(5, *(len(name) for name in names), len(str(int(np.max(confusion, initial=0)))))
    lines = [corner.ljust(first) + "".join(name.rjust(width + 1) for name in names)]
    for name, row in zip(names, confusion, strict=True):
        lines.append(name.ljust(first) + "".join(str(int(v)).rjust(width + 1) for v in row))
    return "\n".join(lines) + "\n"


def check_html_path(path: str | os.PathLike[str], *, flag: str = "`html`") -> Path:
    """``path`` if an HTML report can be written there; otherwise one clear error (before any work)."""
    path = Path(path)
    if path.is_dir():
        raise MnistlabError(f"{flag} {path}: is a folder; give a file name such as {path / 'report.html'}")
    if not path.parent.is_dir():
        raise MnistlabError(f"{flag} {path}: folder {path.parent} does not exist; create it or choose another")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise MnistlabError(f"{flag} {path}: not writable; choose a writable location")
    return path


@dataclass(frozen=True)
class EvaluationFiles:
    """What :func:`evaluate_report` wrote, and the evaluation itself."""

    evaluation: Evaluation
    out_dir: Path
    files: dict[str, Path]
    html: Path


def write_evaluation(evaluation: Evaluation, scored: RunScores, *, out_dir: str | os.PathLike[str],
                     html: str | os.PathLike[str] | None = None) -> EvaluationFiles:
    """Write evaluation.json, the text tables, the PNGs and the self-contained report.html into ``out_dir``.

    ``html``: also write the HTML report there (e.g. to send it to someone).
    """
    from mnistlab.htmlreport import evaluation_html
    from mnistlab.report import plot_confusion, plot_mistakes, plot_reliability

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MnistlabError(f"{out}: cannot create the evaluation folder ({exc.strerror})") from None
    data = evaluation.to_dict()
    title = f"{evaluation.model} on {evaluation.dataset} {evaluation.split}"
    files = {
        "json": write_json_atomic(out / EVALUATION_JSON, data),
        "report_txt": write_text_atomic(out / "classification_report.txt", evaluation.report.as_text(digits=4)),
        "confusion_txt": write_text_atomic(out / "confusion.txt",
                                           confusion_text(evaluation.confusion, evaluation.class_names)),
        "confusion_png": plot_confusion(evaluation.confusion, evaluation.class_names, out / "confusion.png",
                                        title=title),
    }
    position = {int(index): i for i, index in enumerate(scored.indices)}
    rows = [position[m.index] for m in evaluation.mistakes]
    files["mistakes_png"] = plot_mistakes(
        scored.images[rows] if rows else np.zeros((0, 28, 28), np.uint8),
        [_mistake_caption(m, evaluation) for m in evaluation.mistakes], out / "mistakes.png",
        title=f"{title}: most confident mistakes")
    if rows and evaluation.family != "classical":  # which pixels drove each mistake
        from mnistlab.inference import load_network
        from mnistlab.report import plot_saliency
        from mnistlab.saliency import input_gradient_saliency

        network = load_network(scored.run.path, device="cpu", weights=scored.run.weights_used)
        maps = input_gradient_saliency(network.model, scored.images[rows], device=network.device)
        files["saliency_png"] = plot_saliency(scored.images[rows], maps,
                                              [_mistake_caption(m, evaluation) for m in evaluation.mistakes],
                                              out / "mistakes_saliency.png",
                                              title=f"{title}: pixels that drove each mistake")
    if evaluation.calibration is not None:
        files["reliability_png"] = plot_reliability(evaluation.calibration, out / "reliability.png",
                                                    title=f"{title}: reliability")
    images = {key: path.read_bytes() for key, path in files.items() if key.endswith("_png")}
    curves = Path(scored.run.path) / CURVES_PNG
    if curves.is_file():  # the training curves travel with the report
        images["curves_png"] = curves.read_bytes()
    page = evaluation_html(data, images=images)
    files["html"] = write_text_atomic(out / REPORT_HTML, page)
    target = files["html"]
    if html is not None:
        target = write_text_atomic(check_html_path(html), page)
    return EvaluationFiles(evaluation=evaluation, out_dir=out, files=files, html=target)


def _mistake_caption(mistake: Mistake, evaluation: Evaluation) -> str:
    names = evaluation.class_names
    if evaluation.score_kind == "decision":
        sure = f"score {mistake.confidence:.2f}"
    else:
        sure = f"{100 * mistake.confidence:.1f}%"
    return f"#{mistake.index} {names[mistake.true]}→{names[mistake.predicted]}\n{sure}"


def evaluation_dir(run_dir: str | os.PathLike[str], split: str) -> Path:
    """``RUN/eval/<split>``, where :func:`evaluate_report` writes."""
    return Path(run_dir) / EVAL_DIR / split


def _weights_folder(split: str, run: RunFiles) -> str:
    """The eval folder name for ``run``'s chosen weights: ``<split>`` for the default choice (best where the run
    kept them), ``<split>-last`` for the last epoch's weights of a run that also has best ones."""
    return f"{split}-last" if run.has_best and run.weights_used == "last" else split


def evaluate_report(run_dir: str | os.PathLike[str], *, split: str = "test", device: str = "auto",
                    html: str | os.PathLike[str] | None = None, dataset: Any = None,
                    batch_size: int = EVAL_BATCH_SIZE, weights: WeightsChoice = "auto",
                    tta: bool = False) -> EvaluationFiles:
    """Score ``run_dir`` on ``split`` with its ``weights``, compute every metric, write ``RUN/eval/<split>/``
    (``<split>-last`` for the last weights of a run that kept best ones; ``-tta`` appended with test-time
    augmentation) and ``html``."""
    check_split(split)
    if html is not None:
        check_html_path(html)   # fail before minutes of work, not after
    scored = run_scores(run_dir, split=split, device=device, batch_size=batch_size, dataset=dataset, weights=weights,
                        tta=tta)
    evaluation = evaluate_scores(scored)
    # Other data never overwrites the run's own evaluation: it gets a folder of its own, named by its digest.
    # Nor does test-time augmentation: another scoring rule, its own folder.
    folder = _weights_folder(split, scored.run) + ("-tta" if tta else "")
    if scored.same_data is False:
        folder = f"{folder}-other-{scored.data_sha256[:8]}"
    return write_evaluation(evaluation, scored, out_dir=evaluation_dir(scored.run.path, folder), html=html)


def cached_evaluation(run_dir: str | os.PathLike[str], split: str = "test", *,
                      weights: WeightsChoice = "auto") -> dict[str, Any] | None:
    """The saved evaluation.json of ``split`` if it belongs to the run's current ``weights``, else None."""
    try:
        run = read_run(run_dir, weights=weights)
    except MnistlabError:
        return None
    path = evaluation_dir(run_dir, _weights_folder(split, run)) / EVALUATION_JSON
    if not path.is_file() or not run.weights.is_file():
        return None
    try:
        data = read_json(path)
    except MnistlabError:
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data if data.get("weights_sha256") == weights_sha256(run.weights) else None


def calibrate_run(run_dir: str | os.PathLike[str], *, weights: WeightsChoice = "auto", device: str = "auto",
                  target_accuracy: float = 0.995, dataset: Any = None) -> CalibrationRecord:
    """Fit temperature scaling and the not-sure threshold on a network run's validation split; write
    ``RUN/calibration.json`` (atomically) and return it (:mod:`mnistlab.calibration`; it lives here, beside
    :func:`run_scores`, so that module stays numpy-only). Refuses runs trained without ``val_split``."""
    from mnistlab.calibration import calibration_path, fit_calibration

    run = read_run(run_dir, weights=weights)
    if run.model.get("family") == "classical":
        raise MnistlabError(f"{run.path}: a classical baseline has no logits to temperature-scale; "
                            "calibrate a network run")
    if float(run.config.get("val_split") or 0.0) <= 0.0:
        raise MnistlabError(f"{run.path}: trained without a validation split, so it cannot be calibrated honestly "
                            "(never on the test split); retrain with `val_split` (e.g. 0.1)")
    scored = run_scores(run.path, split="val", device=device, dataset=dataset, weights=run.weights_used)
    record = fit_calibration(scored.scores, scored.labels, target_accuracy=target_accuracy,
                             weights_sha256=weights_sha256(scored.run.weights), weights_used=scored.run.weights_used)
    write_json_atomic(calibration_path(run.path), record.to_dict())
    return record
