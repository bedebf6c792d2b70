"""Prediction: 28x28 uint8 images (from :mod:`mnistlab.imaging`) -> a run's class probabilities.

Two backends with one interface (``predict``, ``probabilities``, ``info``, ``num_classes``, ``class_names``):
:class:`Predictor` (torch, a run directory) and :class:`OnnxPredictor` (onnxruntime, a file written by
``mnistlab export``; it never imports torch). :func:`open_predictor` picks one.

:class:`Predictor` loads a run once and scores batches through :func:`mnistlab.inference.predict_logits`, the
same function (same precision, same batching) that ``evaluate`` uses, so ``predict``/``serve`` and
``evaluate`` agree on every image. Softmax is applied here, where probabilities are shown.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from mnistlab.config import EVAL_BATCH_SIZE
from mnistlab.errors import MnistlabError
from mnistlab.imaging import SIZE, BadPixels

Backend = Literal["auto", "torch", "onnx"]
BACKENDS: tuple[str, ...] = get_args(Backend)


# ----------------------------------------------------------------------------------------------- predictor
@dataclass(frozen=True)
class Prediction:
    """One image's answer: the most probable class and every class's probability (softmax of the logits).

    For a calibrated run (``mnistlab calibrate``) the probabilities are softmax(logits / ``temperature``) and
    ``not_sure`` is True when the top probability is below the run's ``threshold`` (then :meth:`top` gives the
    guesses to offer instead of one answer). ``saliency``: (28, 28) in [0, 1], when asked for.
    """

    label: int
    name: str
    probabilities: tuple[float, ...]
    class_names: tuple[str, ...]
    not_sure: bool = False
    threshold: float | None = None      # None: the run is not calibrated
    temperature: float | None = None
    saliency: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def confidence(self) -> float:
        """The top probability."""
        return self.probabilities[self.label]

    @property
    def answer(self) -> str:
        """What to show: the class name, or ``not sure``."""
        return "not sure" if self.not_sure else self.name

    def top(self, k: int = 3) -> list[tuple[int, str, float]]:
        """The ``k`` most probable classes as (index, name, probability), most probable first."""
        order = sorted(range(len(self.probabilities)), key=lambda i: (-self.probabilities[i], i))
        return [(i, self.class_names[i], self.probabilities[i]) for i in order[:k]]

    def to_dict(self, *, top: int = 3) -> dict[str, Any]:
        """JSON-ready: prediction, label name, all probabilities, the top ``top``, and the not-sure verdict
        (``not_sure``, ``threshold`` and ``temperature`` are false/null for an uncalibrated run)."""
        data: dict[str, Any] = {
            "prediction": self.label,
            "label": self.name,
            "answer": self.answer,
            "probabilities": [round(p, 6) for p in self.probabilities],
            "top": [{"class": i, "label": n, "probability": round(p, 6)} for i, n, p in self.top(top)],
            "not_sure": self.not_sure,
            "threshold": None if self.threshold is None else round(self.threshold, 6),
            "temperature": None if self.temperature is None else round(self.temperature, 6),
        }
        if self.saliency is not None:
            data["saliency"] = np.round(self.saliency, 3).tolist()
        return data


class Predictor:
    """A trained run loaded once (safetensors weights, eval mode) that predicts batches of 28x28 uint8.

    Inference only reads the model, so one Predictor can serve several threads at once.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, device: str = "cpu",
                 batch_size: int = EVAL_BATCH_SIZE, weights: str = "auto") -> None:
        from mnistlab.inference import load_network

        self.batch_size = batch_size
        # ``weights``: best (where the run kept them), last or auto; ``self.run.weights_used`` says which.
        self.network = load_network(run_dir, device=device, weights=weights)
        self.device = self.network.device
        self.precision = self.network.precision
        self.model, self.run = self.network.model, self.network.run
        names = self.run.model.get("class_names") or [str(i) for i in range(10)]
        self.class_names: tuple[str, ...] = tuple(str(n) for n in names)
        self.calibration, self.calibration_note = _run_calibration(self.run.path, self.run.weights)

    @property
    def has_saliency(self) -> bool:
        """True: :meth:`predict` can return saliency maps (torch backend)."""
        return True

    @property
    def num_classes(self) -> int:
        """How many classes the loaded model predicts."""
        return len(self.class_names)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float64 (N, classes) softmax probabilities for uint8 images (N, 28, 28).

        The logits come from :func:`mnistlab.inference.predict_logits` in the run's own precision, and the
        softmax is :func:`mnistlab.metrics.softmax`, exactly what ``evaluate`` computes.
        """
        from mnistlab.metrics import softmax

        images = _checked_images(images)
        logits = self.network.logits(images, batch_size=self.batch_size).cpu().numpy().astype(np.float64)
        if self.calibration is not None:  # temperature scaling: same argmax, honest probabilities
            return self.calibration.scale(logits)
        return softmax(logits)

    def saliency(self, images: np.ndarray) -> np.ndarray:
        """float64 (N, 28, 28) input-gradient saliency in [0, 1] of the predicted class
        (:func:`mnistlab.saliency.input_gradient_saliency`)."""
        from mnistlab.saliency import input_gradient_saliency

        images = _checked_images(images)
        return np.concatenate([input_gradient_saliency(self.model, images[i:i + self.batch_size], device=self.device)
                               for i in range(0, max(len(images), 1), self.batch_size)])

    def predict(self, images: np.ndarray | Sequence[np.ndarray], *, saliency: bool = False) -> list[Prediction]:
        """One :class:`Prediction` per uint8 28x28 image (with its saliency map if ``saliency``)."""
        batch = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
        maps = self.saliency(batch) if saliency else None
        return _predictions(self.probabilities(batch), self.class_names, calibration=self.calibration, maps=maps)

    def info(self) -> dict[str, Any]:
        """What is loaded: model, dataset, classes, parameters, and the run's recorded test accuracy."""
        metrics = self.run.metrics or {}
        accuracy = metrics.get("test_accuracy")
        return {
            "run": self.run.path.name,
            "model": self.run.model.get("name"),
            "dataset": self.run.model.get("dataset", self.run.config.get("dataset")),
            "class_names": list(self.class_names),
            "params": self.run.model.get("params"),
            "test_accuracy": float(accuracy) if isinstance(accuracy, int | float) else None,
            "test_count": metrics.get("test_count"),
            "epochs_completed": metrics.get("epochs_completed", len(self.run.history)),
            "status": metrics.get("status", "unknown"),
            "device": str(self.device),
            "precision": self.precision,
            "backend": "torch",
            "weights": self.run.weights_used,
            "calibration": _calibration_info(self.calibration, self.calibration_note),
        }


def _checked_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIZE, SIZE):
        raise BadPixels(f"images must be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    return images


def _predictions(probs: np.ndarray, class_names: tuple[str, ...], *, calibration: Any = None,
                 maps: np.ndarray | None = None) -> list[Prediction]:
    threshold = None if calibration is None else float(calibration.threshold)
    temperature = None if calibration is None else float(calibration.temperature)
    return [Prediction(label=int(row.argmax()), name=class_names[int(row.argmax())],
                       probabilities=tuple(float(p) for p in row), class_names=class_names,
                       not_sure=threshold is not None and float(row.max()) < threshold,
                       threshold=threshold, temperature=temperature, saliency=None if maps is None else maps[i])
            for i, row in enumerate(probs)]


def _run_calibration(run_dir: Path, weights_file: Path) -> tuple[Any, str]:
    """(the run's calibration record or None, a one-line note on why there is none)."""
    from mnistlab.calibration import StaleCalibration, calibration_path, load_calibration
    from mnistlab.runs import file_sha256

    if not calibration_path(run_dir).is_file():
        return None, "not calibrated (`mnistlab calibrate RUN` fits it on the validation split)"
    try:
        return load_calibration(run_dir, weights_sha256=file_sha256(weights_file)), ""
    except StaleCalibration as exc:  # other weights: behave as uncalibrated, and say why
        return None, str(exc)


def _calibration_info(record: Any, note: str) -> dict[str, Any]:
    if record is None:
        return {"calibrated": False, "note": note}
    return {"calibrated": True, "temperature": record.temperature, "threshold": record.threshold,
            "target_accuracy": record.target_accuracy, "fitted_on": record.split}


class OnnxPredictor:
    """An exported ``.onnx`` file (``mnistlab export``) run by onnxruntime, with :class:`Predictor`'s interface.

    Never imports torch: the whole path (image -> 28x28 -> float32 / 255 -> logits -> softmax) is numpy and
    onnxruntime. onnxruntime sessions are safe to call from several threads at once (the server does).
    """

    def __init__(self, path: str | os.PathLike[str], *, batch_size: int = EVAL_BATCH_SIZE,
                 threads: int | None = None) -> None:
        from mnistlab.export import load_onnx

        self.path = Path(path)
        self.batch_size = batch_size
        self.session, self.metadata = load_onnx(self.path, threads=threads)
        self.device = "cpu"
        self.precision = "int8" if self.metadata.get("exported_precision", "").startswith("int8") else "fp32"
        self.class_names: tuple[str, ...] = tuple(str(n) for n in _json_list(self.metadata.get("class_names")))
        # An exported file travels without its run's calibration.json: it answers uncalibrated.
        self.calibration: Any = None
        self.calibration_note = "not calibrated (an exported file carries no calibration; use the run directory)"

    @property
    def has_saliency(self) -> bool:
        """False: onnxruntime gives no input gradients (see :mod:`mnistlab.saliency`)."""
        return False

    @property
    def num_classes(self) -> int:
        """How many classes the loaded model predicts."""
        return len(self.class_names)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 logits (N, classes) for uint8 images (N, 28, 28), in batches of ``batch_size``."""
        from mnistlab.export import INPUT_NAME, OUTPUT_NAME, to_input

        images = _checked_images(images)
        chunks = [self.session.run([OUTPUT_NAME], {INPUT_NAME: to_input(images[i:i + self.batch_size])})[0]
                  for i in range(0, len(images), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.num_classes), np.float32)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float64 (N, classes) softmax probabilities for uint8 images (N, 28, 28)."""
        from mnistlab.metrics import softmax

        return softmax(self.logits(images).astype(np.float64))

    def predict(self, images: np.ndarray | Sequence[np.ndarray], *, saliency: bool = False) -> list[Prediction]:
        """One :class:`Prediction` per uint8 28x28 image; ``saliency`` is not available on this backend."""
        if saliency:
            raise MnistlabError("saliency needs input gradients, which the onnx backend does not give; "
                                "use --backend torch (the run directory)")
        batch = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
        return _predictions(self.probabilities(batch), self.class_names)

    def info(self) -> dict[str, Any]:
        """What is loaded, from the file's metadata (the same keys as :meth:`Predictor.info`)."""
        meta = self.metadata
        accuracy = meta.get("test_accuracy")
        return {
            "run": Path(meta.get("run_path") or self.path.stem).name,
            "model": meta.get("model"),
            "dataset": meta.get("dataset"),
            "class_names": list(self.class_names),
            "params": int(meta["params"]) if meta.get("params", "").isdigit() else None,
            "test_accuracy": float(accuracy) if accuracy else None,
            "test_count": int(meta["test_count"]) if meta.get("test_count", "").isdigit() else None,
            "epochs_completed": None,
            "status": "exported",
            "device": "cpu (onnxruntime)",
            "precision": self.precision,
            "backend": "onnx",
            "weights": meta.get("weights_used", "last"),
            "file": str(self.path),
            "calibration": _calibration_info(None, self.calibration_note),
        }


def _json_list(text: str | None) -> list[Any]:
    import json

    try:
        value = json.loads(text or "")
    except ValueError:
        value = None
    return value if isinstance(value, list) and value else [str(i) for i in range(10)]


AnyPredictor = Predictor | OnnxPredictor


def is_onnx_path(source: str | os.PathLike[str]) -> bool:
    """True for a path naming an exported ONNX file (by its extension)."""
    return str(source).lower().endswith(".onnx")


def open_predictor(source: str | os.PathLike[str], *, backend: Backend = "auto", device: str = "cpu",
                   threads: int | None = None, weights: str = "auto") -> AnyPredictor:
    """The predictor for ``source``: a ``.onnx`` file (onnxruntime) or a run directory (torch, or with
    ``backend="onnx"`` its export, made on first use in a child process and cached in ``RUN/export/``), with the
    run's ``weights`` (auto: best where it kept them, else last; best; last).

    The onnx paths never import torch in this process.
    """
    if backend not in BACKENDS:
        raise MnistlabError(f"--backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if is_onnx_path(source):
        if backend == "torch":
            raise MnistlabError(f"{source}: an ONNX file runs on --backend onnx (or auto), not torch; "
                                "pass the run directory for torch")
        if weights != "auto":
            raise MnistlabError(f"--weights {weights}: {source} is an exported file with its weights fixed; "
                                "pass the run directory to choose")
        return OnnxPredictor(source, threads=threads)
    if backend == "onnx":
        if device not in ("cpu", "auto"):
            raise MnistlabError(f"--device {device}: the onnx backend runs on the CPU; use --backend torch")
        from mnistlab.export import cached_onnx

        return OnnxPredictor(cached_onnx(source, weights=weights), threads=threads)
    return Predictor(source, device=device, weights=weights)


def format_percent(p: float) -> str:
    """A probability as a short percentage: ``97.1%``; ``<0.1%`` and ``>99.9%`` for what would round to 0.0%
    or 100.0% (a softmax output is never exactly 0 or 1: no "0.0%" beside "<0.1%", no "100.0% sure").
    The page (static/app.js) applies the same rule."""
    shown = f"{100 * p:.1f}"
    if shown in ("0.0", "-0.0") or p <= 0:
        return "<0.1%"
    if shown == "100.0" or p >= 1:
        return ">99.9%"
    return f"{shown}%"

