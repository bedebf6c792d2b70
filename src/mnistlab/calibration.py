"""Honest confidence: temperature scaling and a "not sure" threshold, both fitted on a run's validation split.

A network trained with cross-entropy is usually over-confident: its softmax says 99.9% where it is right 98% of
the time. Temperature scaling (Guo et al. 2017) divides the logits by one scalar ``T > 0`` chosen to minimise the
negative log-likelihood on held-out data; it never changes the predicted class, only how sure the model says it
is. The "not sure" threshold is then chosen on the same held-out data by a stated rule (:data:`THRESHOLD_RULE`).

Both are fitted on the VALIDATION split only (:func:`mnistlab.analysis.validation_indices` rebuilds it from the
run's config): fitting them on the test split would make the test figures that ``evaluate`` reports dishonest,
and a run trained without ``--val-split`` has no held-out data to fit them on, so it is refused.

:func:`mnistlab.analysis.calibrate_run` fits both on a run (it lives there, beside the scoring path, so this
module stays numpy/scipy only) and writes ``RUN/calibration.json`` (atomically), tied to the SHA-256 of the weights
it was fitted for: once the weights change (``train --resume``, another ``--weights`` choice),
:func:`load_calibration` refuses it and predictions behave as uncalibrated ones until ``mnistlab calibrate RUN``
is run again.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistlab import metrics
from mnistlab.errors import MnistlabError

CALIBRATION_JSON = "calibration.json"
FORMAT = "mnistlab-calibration/1"
DEFAULT_TARGET_ACCURACY = 0.995
# log T is searched in [log 0.05, log 20]: wide enough for any network mnistlab trains (typical T is 1-3), and
# bounded so a degenerate split (all correct with huge margins) cannot drive T to 0 or infinity.
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))
THRESHOLD_RULE = ("the smallest top probability t (after temperature scaling) such that the validation images "
                  "answered (top probability >= t) reach the target accuracy; below t the answer is 'not sure'")


class StaleCalibration(MnistlabError):
    """calibration.json belongs to other weights than those loaded (the run was resumed, or --weights differs)."""


# ------------------------------------------------------------------------------------------------ numbers
def scaled_nll(logits: Any, labels: Any, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(``logits`` / ``temperature``)."""
    return metrics.cross_entropy_from_logits(np.asarray(logits, np.float64) / float(temperature), labels)


def fit_temperature(logits: Any, labels: Any) -> float:
    """The scalar T > 0 minimising the NLL of softmax(logits / T) on (``logits``, ``labels``).

    A bounded 1-D minimisation over log T (the NLL is smooth and unimodal in log T for fixed logits), so T
    stays positive without constraints.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise MnistlabError(f"fit_temperature needs logits (N, K) and N labels, N >= 1; got {z.shape} and {y.shape}")
    result = minimize_scalar(lambda log_t: metrics.cross_entropy_from_logits(z / math.exp(log_t), y),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(math.exp(result.x))


def not_sure_threshold(confidence: Any, correct: Any, *, target_accuracy: float = DEFAULT_TARGET_ACCURACY) -> float:
    """The threshold of :data:`THRESHOLD_RULE`: the smallest t with accuracy(confidence >= t) >= target.

    ``confidence``: top probabilities (N,); ``correct``: whether each top class was right (N,).
    """
    if not 0.0 < target_accuracy <= 1.0:
        raise MnistlabError(f"`target_accuracy` must be in (0, 1], got {target_accuracy}")
    conf = np.asarray(confidence, np.float64)
    hit = np.asarray(correct, bool)
    if conf.shape != hit.shape or conf.ndim != 1 or conf.size == 0:
        raise MnistlabError("not_sure_threshold needs confidences and correctness of the same length, at least one")
    order = np.argsort(-conf, kind="stable")
    conf, hit = conf[order], hit[order]
    # Answering the n most confident images: accuracy of the first n. Thresholds fall only between distinct
    # confidences, so take the last index of each run of ties.
    answered_accuracy = np.cumsum(hit) / np.arange(1, conf.size + 1)
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]
    ok = np.flatnonzero(last_of_tie & (answered_accuracy >= target_accuracy))
    if ok.size == 0:
        raise MnistlabError(f"no threshold reaches `target_accuracy` {target_accuracy:.4f} on the validation split "
                            f"(the most confident image is wrong); choose a lower `target_accuracy`")
    return float(conf[ok[-1]])


# ------------------------------------------------------------------------------------------------- record
@dataclass(frozen=True)
class CalibrationRecord:
    """What calibration.json holds: T, the not-sure threshold, and the figures on val they were chosen from."""

    temperature: float
    threshold: float
    target_accuracy: float
    weights_sha256: str
    weights_used: str
    split: str
    count: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    not_sure_fraction: float      # of the validation images, at ``threshold``
    answered_accuracy: float      # of the validation images answered at ``threshold``
    rule: str = THRESHOLD_RULE
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what calibration.json holds)."""
        return {"format": FORMAT, **{key: getattr(self, key) for key in self.__dataclass_fields__}}

    @classmethod
    def from_dict(cls, data: Any, *, name: str = CALIBRATION_JSON) -> CalibrationRecord:
        """Rebuild a record from :meth:`to_dict` output; one clear error for anything else."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise MnistlabError(f"{name}: not an mnistlab calibration (format {FORMAT!r} expected); "
                                "rerun `mnistlab calibrate RUN`")
        try:
            record = cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})
        except TypeError as exc:
            raise MnistlabError(f"{name}: incomplete ({exc}); rerun `mnistlab calibrate RUN`") from None
        if not (math.isfinite(record.temperature) and record.temperature > 0 and 0 <= record.threshold <= 1):
            raise MnistlabError(f"{name}: temperature must be > 0 and threshold in [0, 1]; "
                                "rerun `mnistlab calibrate RUN`")
        return record

    def scale(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities softmax(logits / T), float64."""
        return metrics.softmax(np.asarray(logits, np.float64) / self.temperature)


def calibration_path(run_dir: str | os.PathLike[str]) -> Path:
    """``RUN/calibration.json``."""
    return Path(run_dir) / CALIBRATION_JSON


def load_calibration(run_dir: str | os.PathLike[str], *, weights_sha256: str) -> CalibrationRecord | None:
    """The run's calibration if it was fitted for weights with this SHA-256; None if the run has none.

    Raises :class:`StaleCalibration` when calibration.json belongs to other weights: a temperature and a
    threshold fitted for one set of weights say nothing about another.
    """
    from mnistlab.runs import read_json

    path = calibration_path(run_dir)
    if not path.is_file():
        return None
    record = CalibrationRecord.from_dict(read_json(path), name=str(path))
    if record.weights_sha256 != weights_sha256:
        raise StaleCalibration(f"{path}: fitted for other weights ({record.weights_used}, "
                               f"sha256 {record.weights_sha256[:12]}), not these ({weights_sha256[:12]}); "
                               "rerun `mnistlab calibrate RUN` for them")
    return record


def fit_calibration(logits: Any, labels: Any, *, target_accuracy: float = DEFAULT_TARGET_ACCURACY,
                    weights_sha256: str = "", weights_used: str = "last", split: str = "val") -> CalibrationRecord:
    """Fit T and the not-sure threshold on held-out (``logits``, ``labels``) (pure numpy/scipy)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    temperature = fit_temperature(z, y)
    before = metrics.softmax(z)
    after = metrics.softmax(z / temperature)
    correct = after.argmax(axis=1) == y
    top = after.max(axis=1)
    threshold = not_sure_threshold(top, correct, target_accuracy=target_accuracy)
    answered = top >= threshold
    return CalibrationRecord(
        temperature=temperature, threshold=threshold, target_accuracy=float(target_accuracy),
        weights_sha256=weights_sha256, weights_used=weights_used, split=split, count=len(y),
        nll_before=metrics.cross_entropy_from_logits(z, y),
        nll_after=metrics.cross_entropy_from_logits(z / temperature, y),
        ece_before=metrics.calibration(before.max(axis=1), before.argmax(axis=1) == y).ece,
        ece_after=metrics.calibration(top, correct).ece,
        not_sure_fraction=float(1.0 - answered.mean()), answered_accuracy=float(correct[answered].mean()),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )


def split_figures(record: CalibrationRecord, logits: Any, labels: Any) -> dict[str, Any]:
    """What temperature scaling changes on another split (``evaluate``'s test split): NLL, ECE before/after,
    and how many images the threshold leaves "not sure" and the accuracy of the others."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    before = metrics.softmax(z)
    after = record.scale(z)
    correct = after.argmax(axis=1) == y
    top = after.max(axis=1)
    answered = top >= record.threshold
    return {
        "temperature": record.temperature, "threshold": record.threshold, "fitted_on": record.split,
        "nll_before": metrics.cross_entropy_from_logits(z, y), "nll_after": metrics.cross_entropy_from_logits(
            z / record.temperature, y),
        "ece_before": metrics.calibration(before.max(axis=1), before.argmax(axis=1) == y).ece,
        "ece_after": metrics.calibration(top, correct).ece,
        "not_sure_fraction": float(1.0 - answered.mean()) if len(y) else float("nan"),
        "answered_accuracy": float(correct[answered].mean()) if answered.any() else float("nan"),
    }
