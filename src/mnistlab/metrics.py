"""Classification metrics from labels and scores, in plain numpy (no torch, no scikit-learn).

Everything here is a pure function of arrays: ``labels`` (N,) integers in ``0..K-1`` and either predicted
labels (N,) or a score matrix (N, K) whose row-wise arg-max is the prediction. The definitions follow
scikit-learn's, so the numbers agree with ``sklearn.metrics`` (the tests check that on random data):

- precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN), with 0 where a
  denominator is 0 (scikit-learn's ``zero_division`` default);
- macro average = unweighted mean over classes, weighted average = mean weighted by support.

Ties between scores are broken toward the lower class index everywhere (as ``argmax`` does), so top-1
accuracy always equals accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_CALIBRATION_BINS = 15  # Guo et al. (2017), "On Calibration of Modern Neural Networks"


def _labels(array: Any, *, num_classes: int, name: str) -> np.ndarray:
    values = np.asarray(array)
    if values.ndim != 1:
        raise ValueError(f"{name} must be a vector, got shape {values.shape}")
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}")
    return values.astype(np.int64, copy=False)


def _scores(array: Any, labels: np.ndarray) -> np.ndarray:
    scores = np.asarray(array, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must have shape (N, K) with N = {labels.shape[0]}, got {scores.shape}")
    return scores


# --------------------------------------------------------------------------------------- basic quantities
def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row maximum so large logits cannot overflow."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def cross_entropy_from_logits(logits: Any, labels: Any) -> float:
    """Mean cross-entropy ``-log softmax(logits)[label]`` computed stably with log-sum-exp (float64)."""
    y = np.asarray(labels).astype(np.int64)
    z = np.asarray(logits, dtype=np.float64)
    if y.size == 0:
        return float("nan")
    peak = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - peak).sum(axis=1)) + peak[:, 0]        # (N,) log sum exp
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def log_loss(probabilities: Any, labels: Any) -> float:
    """Mean ``-log p[label]`` with p clipped to [eps, 1 - eps] (float64 eps), as scikit-learn's ``log_loss``."""
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.size == 0:
        return float("nan")
    eps = np.finfo(np.float64).eps
    picked = np.clip(p[np.arange(len(y)), y], eps, 1 - eps)
    return float(np.mean(-np.log(picked)))


def predictions(scores: Any) -> np.ndarray:
    """Row-wise arg-max (the lowest class index wins a tie)."""
    return np.asarray(scores).argmax(axis=1)


def accuracy(labels: Any, predicted: Any) -> float:
    """Fraction of ``predicted == labels`` (NaN for no samples)."""
    y, p = np.asarray(labels), np.asarray(predicted)
    return float(np.mean(y == p)) if y.size else float("nan")


def confusion_matrix(labels: Any, predicted: Any, *, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class; rows sum to each class's support."""
    y = _labels(labels, num_classes=num_classes, name="labels")
    p = _labels(predicted, num_classes=num_classes, name="predicted")
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predicted {p.shape} differ in length")
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def row_normalized(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the fraction of a true class predicted as each class); empty rows stay 0."""
    counts = np.asarray(confusion, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    num = numerator.astype(np.float64)
    den = denominator.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


# ------------------------------------------------------------------------------------ per-class report
@dataclass(frozen=True)
class ClassificationReport:
    """Per-class precision, recall, F1 and support, plus accuracy and the macro and weighted averages."""

    class_names: tuple[str, ...]
    precision: np.ndarray  # (K,) float64
    recall: np.ndarray     # (K,) float64
    f1: np.ndarray         # (K,) float64
    support: np.ndarray    # (K,) int64: true samples per class
    accuracy: float
    macro: tuple[float, float, float]     # precision, recall, F1
    weighted: tuple[float, float, float]  # precision, recall, F1

    @property
    def total(self) -> int:
        """Number of samples in the report."""
        return int(self.support.sum())

    def to_dict(self) -> dict[str, Any]:
        """The shape of ``sklearn.metrics.classification_report(..., output_dict=True)``."""
        out: dict[str, Any] = {
            name: {"precision": float(self.precision[k]), "recall": float(self.recall[k]),
                   "f1-score": float(self.f1[k]), "support": float(self.support[k])}
            for k, name in enumerate(self.class_names)
        }
        out["accuracy"] = self.accuracy
        for key, values in (("macro avg", self.macro), ("weighted avg", self.weighted)):
            out[key] = {"precision": values[0], "recall": values[1], "f1-score": values[2],
                        "support": float(self.total)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, class_names: Sequence[str]) -> ClassificationReport:
        """Rebuild from :meth:`to_dict` output (as saved in evaluation.json)."""
        def column(key: str) -> np.ndarray:
            return np.array([float(data[str(name)][key]) for name in class_names])

        def averages(key: str) -> tuple[float, float, float]:
            row = data[key]
            return float(row["precision"]), float(row["recall"]), float(row["f1-score"])

        return cls(class_names=tuple(str(n) for n in class_names), precision=column("precision"),
                   recall=column("recall"), f1=column("f1-score"), support=column("support").astype(np.int64),
                   accuracy=float(data["accuracy"]), macro=averages("macro avg"), weighted=averages("weighted avg"))

    def as_text(self, *, digits: int = 4) -> str:
        """The same text, character for character, as ``sklearn.metrics.classification_report``."""
        headers = ("precision", "recall", "f1-score", "support")
        width = max(*(len(name) for name in self.class_names), len("weighted avg"), digits)
        text = f"{'':>{width}s} " + "".join(f" {h:>9}" for h in headers) + "\n\n"
        for k, name in enumerate(self.class_names):
            text += (f"{name:>{width}s} " + "".join(f" {v:>9.{digits}f}" for v in
                     (self.precision[k], self.recall[k], self.f1[k])) + f" {int(self.support[k]):>9}\n")
        text += "\n"
        text += f"{'accuracy':>{width}s}  {'':>9} {'':>9} {self.accuracy:>9.{digits}f} {self.total:>9}\n"
        for heading, values in (("macro avg", self.macro), ("weighted avg", self.weighted)):
            text += f"{heading:>{width}s} " + "".join(f" {v:>9.{digits}f}" for v in values) + f" {self.total:>9}\n"
        return text


def classification_report(labels: Any, predicted: Any, *, class_names: Sequence[str]) -> ClassificationReport:
    """Precision, recall, F1 and support per class from true and predicted labels (see the module notes)."""
    num_classes = len(class_names)
    confusion = confusion_matrix(labels, predicted, num_classes=num_classes)
    return report_from_confusion(confusion, class_names=class_names)


def report_from_confusion(confusion: np.ndarray, *, class_names: Sequence[str]) -> ClassificationReport:
    """The :class:`ClassificationReport` of a confusion matrix (rows true, columns predicted)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)      # TP + FN
    predicted = confusion.sum(axis=0)    # TP + FP
    precision = _divide(tp, predicted)
    recall = _divide(tp, support)
    # F1 from counts, not from the rounded precision and recall: 2 TP / ((TP + FN) + (TP + FP)).
    f1 = _divide(2.0 * tp, support.astype(np.float64) + predicted)
    total = int(support.sum())

    def averages(weights: np.ndarray | None) -> tuple[float, float, float]:
        """Macro and weighted averages of precision, recall and F1."""
        if weights is None:
            return float(np.mean(precision)), float(np.mean(recall)), float(np.mean(f1))
        return tuple(float(np.average(v, weights=weights)) for v in (precision, recall, f1))  # type: ignore[return-value]

    return ClassificationReport(
        class_names=tuple(class_names), precision=precision, recall=recall, f1=f1, support=support,
        accuracy=float(tp.sum() / total) if total else float("nan"),
        macro=averages(None), weighted=averages(support) if total else (0.0, 0.0, 0.0),
    )


# ------------------------------------------------------------------------------------------- ranking
def true_class_rank(scores: Any, labels: Any) -> np.ndarray:
    """0-based rank of each sample's true class among its scores (0 = top).

    A class ranks above the true class if its score is higher, or equal with a lower index (arg-max's
    tie rule), so rank 0 means "predicted correctly".
    """
    y = np.asarray(labels).astype(np.int64)
    s = _scores(scores, y)
    true_score = s[np.arange(len(y)), y][:, None]                                  # (N, 1)
    lower_index = np.arange(s.shape[1])[None, :] < y[:, None]                     # (N, K)
    return ((s > true_score) | ((s == true_score) & lower_index)).sum(axis=1)


def top_k_accuracy(scores: Any, labels: Any, *, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = true_class_rank(scores, labels)
    return float(np.mean(ranks < k)) if ranks.size else float("nan")


# --------------------------------------------------------------------------------------- confusions
@dataclass(frozen=True)
class ConfusedPair:
    """One off-diagonal cell of the confusion matrix."""

    true: int
    predicted: int
    count: int
    fraction_of_true: float  # count / support of the true class


def most_confused_pairs(confusion: np.ndarray, *, top: int = 10) -> list[ConfusedPair]:
    """The ``top`` largest off-diagonal cells, largest first (ties: by true class, then predicted)."""
    counts = np.asarray(confusion, dtype=np.int64)
    rates = row_normalized(counts)
    true_idx, pred_idx = np.nonzero(counts * (1 - np.eye(len(counts), dtype=np.int64)))
    order = np.lexsort((pred_idx, true_idx, -counts[true_idx, pred_idx]))[:top]
    return [ConfusedPair(true=int(true_idx[i]), predicted=int(pred_idx[i]), count=int(counts[true_idx[i], pred_idx[i]]),
                         fraction_of_true=float(rates[true_idx[i], pred_idx[i]])) for i in order]


def worst_mistakes(scores: Any, labels: Any, *, top: int = 25) -> np.ndarray:
    """Indices of the misclassified samples with the highest score for their (wrong) prediction, worst first.

    With probabilities that is "most confidently wrong". Ties keep sample order.
    """
    y = np.asarray(labels).astype(np.int64)
    s = _scores(scores, y)
    predicted = s.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y)
    confidence = s[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:top]]


# --------------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Calibration:
    """A reliability diagram's data: equal-width confidence bins over [0, 1].

    Bin ``b`` holds the samples with ``edges[b] < confidence <= edges[b + 1]`` (the first bin also takes 0).
    ``accuracy`` and ``confidence`` are the bin means (NaN for empty bins).
    """

    edges: np.ndarray       # (B + 1,)
    count: np.ndarray       # (B,) int64
    accuracy: np.ndarray    # (B,) float64
    confidence: np.ndarray  # (B,) float64
    ece: float              # expected calibration error: sum_b count_b / N * |accuracy_b - confidence_b|
    mce: float              # maximum calibration error over non-empty bins

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Rebuild from :meth:`to_dict` output (None bins become NaN again)."""
        def values(key: str) -> np.ndarray:
            return np.array([np.nan if v is None else float(v) for v in data[key]])

        return cls(edges=np.array(data["edges"], dtype=np.float64), count=np.array(data["count"], dtype=np.int64),
                   accuracy=values("accuracy"), confidence=values("confidence"), ece=float(data["ece"]),
                   mce=float(data["mce"]))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN bins become None)."""
        def clean(values: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in values]

        return {"bins": len(self.count), "edges": [float(e) for e in self.edges],
                "count": [int(c) for c in self.count], "accuracy": clean(self.accuracy),
                "confidence": clean(self.confidence), "ece": self.ece, "mce": self.mce}


def calibration(confidence: Any, correct: Any, *, bins: int = DEFAULT_CALIBRATION_BINS) -> Calibration:
    """Bin top-1 ``confidence`` (N,) in [0, 1] against ``correct`` (N,) booleans; compute ECE and MCE."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=bool)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError("confidence and correct must be vectors of the same length")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidence must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins: index b such that edges[b] < c <= edges[b + 1]; c == 0 falls into bin 0.
    which = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(which, minlength=bins)
    sum_conf = np.bincount(which, weights=conf, minlength=bins)
    sum_hit = np.bincount(which, weights=hit.astype(np.float64), minlength=bins)
    filled = count > 0
    acc = np.full(bins, np.nan)
    mean_conf = np.full(bins, np.nan)
    acc[filled] = sum_hit[filled] / count[filled]
    mean_conf[filled] = sum_conf[filled] / count[filled]
    gaps = np.abs(acc[filled] - mean_conf[filled])
    total = conf.size
    ece = float(np.sum(count[filled] / total * gaps)) if total else float("nan")
    mce = float(gaps.max()) if gaps.size else float("nan")
    return Calibration(edges=edges, count=count, accuracy=acc, confidence=mean_conf, ece=ece, mce=mce)
