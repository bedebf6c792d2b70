"""mnistlab.metrics against scikit-learn, torch and hand-computed cases."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.calibration import calibration_curve

from mnistlab import metrics

FAST = settings(max_examples=60, deadline=None)


@st.composite
def labelled_predictions(draw: st.DrawFn, min_classes: int = 2) -> tuple[np.ndarray, np.ndarray, int]:
    """Random (labels, predicted, K): often skewed so that some classes are never predicted or never true."""
    k = draw(st.integers(min_classes, 12))
    n = draw(st.integers(1, 300))
    used_true = draw(st.integers(1, k))
    used_pred = draw(st.integers(1, k))
    y = draw(arrays(np.int64, n, elements=st.integers(0, used_true - 1)))
    p = draw(arrays(np.int64, n, elements=st.integers(0, used_pred - 1)))
    # Shift the used ranges so that gaps also appear at the low end.
    y = (y + draw(st.integers(0, k - used_true))) % k
    p = (p + draw(st.integers(0, k - used_pred))) % k
    return y, p, k


@st.composite
def scored_labels(draw: st.DrawFn, *, distinct: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Random (scores (N, K), labels); with ``distinct`` no two scores in a row are equal."""
    k = draw(st.integers(3, 11))
    n = draw(st.integers(1, 120))
    if distinct:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        scores = np.argsort(rng.random((n, k)), axis=1).astype(np.float64) + rng.random((n, 1))
    else:
        # Few distinct values, so ties are common.
        scores = draw(arrays(np.float64, (n, k), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, -2.0])))
    labels = draw(arrays(np.int64, n, elements=st.integers(0, k - 1)))
    return scores, labels


# ----------------------------------------------------------------------------------- confusion + report
@FAST
@given(labelled_predictions())
def test_confusion_matrix_matches_sklearn_and_sums(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    y, p, k = case
    confusion = metrics.confusion_matrix(y, p, num_classes=k)
    np.testing.assert_array_equal(confusion, skm.confusion_matrix(y, p, labels=list(range(k))))
    assert confusion.sum() == len(y)
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(y, minlength=k))
    np.testing.assert_array_equal(confusion.sum(axis=0), np.bincount(p, minlength=k))
    assert np.trace(confusion) == np.sum(y == p)
    rates = metrics.row_normalized(confusion)
    support = np.bincount(y, minlength=k)
    np.testing.assert_allclose(rates.sum(axis=1), (support > 0).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):  # sklearn divides empty rows by zero
        sk_rates = skm.confusion_matrix(y, p, labels=list(range(k)), normalize="true")
    np.testing.assert_allclose(rates, np.nan_to_num(sk_rates), rtol=1e-15)


@FAST
@given(labelled_predictions())
def test_classification_report_is_sklearns_to_the_last_digit(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    y, p, k = case
    names = [f"class-{i}" for i in range(k)]
    ours = metrics.classification_report(y, p, class_names=names)
    kwargs = {"labels": list(range(k)), "target_names": names, "zero_division": 0.0}
    # Exactly equal floats, not approximately: same formulas, same order of operations.
    assert ours.to_dict() == skm.classification_report(y, p, output_dict=True, **kwargs)
    for digits in (2, 4, 6):
        expected = skm.classification_report(y, p, digits=digits, **kwargs)
        if not np.any(y == p):
            # scikit-learn's quirk: with no correct prediction at all it prints supports as floats ("3.0").
            # Our integers keep the same column width.
            expected = re.sub(r"(\d+)\.0\n", r"  \1\n", expected)
        assert ours.as_text(digits=digits) == expected
    assert ours.accuracy == skm.accuracy_score(y, p)


def test_classification_report_hand_computed() -> None:
    # true 0 0 0 1 1 2 ; predicted 0 0 1 1 2 2
    report = metrics.classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], class_names=["a", "b", "c"])
    np.testing.assert_allclose(report.precision, [1.0, 0.5, 0.5])
    np.testing.assert_allclose(report.recall, [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(report.f1, [0.8, 0.5, 2 / 3])
    np.testing.assert_array_equal(report.support, [3, 2, 1])
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.macro[0] == pytest.approx(2 / 3)
    assert report.weighted[1] == pytest.approx(4 / 6)  # weighted recall is accuracy


# ------------------------------------------------------------------------------------------ top-k
@FAST
@given(scored_labels(distinct=True), st.integers(1, 10))
def test_top_k_matches_sklearn_without_ties(case: tuple[np.ndarray, np.ndarray], k: int) -> None:
    scores, labels = case
    k = min(k, scores.shape[1] - 1)
    expected = skm.top_k_accuracy_score(labels, scores, k=k, labels=list(range(scores.shape[1])))
    assert metrics.top_k_accuracy(scores, labels, k=k) == pytest.approx(expected, abs=1e-15)


@FAST
@given(scored_labels(), st.integers(1, 12))
def test_top_k_with_ties_follows_argmax_rule(case: tuple[np.ndarray, np.ndarray], k: int) -> None:
    scores, labels = case
    # Oracle: a stable sort of the negated scores puts the lower index first among equals, like argmax.
    order = np.argsort(-scores, axis=1, kind="stable")
    expected = np.mean([labels[i] in order[i, :k] for i in range(len(labels))])
    assert metrics.top_k_accuracy(scores, labels, k=k) == pytest.approx(expected, abs=1e-15)
    # Top-1 is exactly accuracy of the arg-max prediction.
    assert metrics.top_k_accuracy(scores, labels, k=1) == metrics.accuracy(labels, scores.argmax(axis=1))


# ---------------------------------------------------------------------------------- losses + softmax
@FAST
@given(arrays(np.float64, st.tuples(st.integers(1, 50), st.integers(2, 10)),
              elements=st.floats(-30, 30, allow_nan=False)), st.data())
def test_cross_entropy_matches_torch_and_sklearn(logits: np.ndarray, data: st.DataObject) -> None:
    import torch

    labels = data.draw(arrays(np.int64, logits.shape[0], elements=st.integers(0, logits.shape[1] - 1)))
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    assert metrics.cross_entropy_from_logits(logits, labels) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    probs = metrics.softmax(logits)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), dim=1).numpy(), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    # sklearn clips at eps, so compare where no true-class probability is that small.
    assume(probs[np.arange(len(labels)), labels].min() > 1e-12)
    sk = skm.log_loss(labels, probs, labels=list(range(logits.shape[1])))
    assert metrics.log_loss(probs, labels) == pytest.approx(sk, rel=1e-9)


def test_softmax_survives_huge_logits() -> None:
    probs = metrics.softmax(np.array([[1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(probs, [[1.0, 0.0, 0.0]])
    assert metrics.cross_entropy_from_logits(np.array([[1000.0, 0.0]]), [1]) == pytest.approx(1000.0)


# --------------------------------------------------------------------------------------- calibration
def test_ece_hand_computed_cases() -> None:
    # Perfectly confident and always right: calibrated.
    assert metrics.calibration(np.ones(10), np.ones(10, bool), bins=10).ece == 0.0
    # Ten samples at confidence 0.8, six right: one bin, gap |0.6 - 0.8| = 0.2.
    result = metrics.calibration(np.full(10, 0.8), np.arange(10) < 6, bins=10)
    assert result.ece == pytest.approx(0.2) and result.mce == pytest.approx(0.2)
    assert result.count.tolist() == [0] * 7 + [10] + [0] * 2
    # Two halves: 0.95 all right (gap 0.05) and 0.55 half right (gap 0.05) -> ECE 0.05; MCE 0.05.
    conf = np.r_[np.full(50, 0.95), np.full(50, 0.55)]
    right = np.r_[np.ones(50, bool), np.arange(50) < 25]
    assert metrics.calibration(conf, right, bins=10).ece == pytest.approx(0.05)
    # Under-confident: 0.3 everywhere but always right -> gap 0.7; and a 3:1 mix of gaps 0.1 and 0.5.
    assert metrics.calibration(np.full(4, 0.3), np.ones(4, bool), bins=5).ece == pytest.approx(0.7)
    conf = np.r_[np.full(30, 0.9), np.full(10, 0.5)]
    right = np.r_[np.arange(30) < 30, np.zeros(10, bool)]
    assert metrics.calibration(conf, right, bins=10).ece == pytest.approx(0.75 * 0.1 + 0.25 * 0.5)
    assert metrics.calibration(conf, right, bins=10).mce == pytest.approx(0.5)


def test_calibration_bins_are_right_closed() -> None:
    # 0.2 sits on an edge of 5 bins: it belongs to (0, 0.2], as in sklearn's calibration_curve.
    result = metrics.calibration(np.array([0.2, 0.2000001, 1.0, 0.0]), np.ones(4, bool), bins=5)
    assert result.count.tolist() == [2, 1, 0, 0, 1]


@FAST
@given(arrays(np.float64, st.integers(2, 300), elements=st.floats(0, 1)), st.integers(1, 20), st.data())
def test_calibration_matches_sklearn_curve_and_a_loop(conf: np.ndarray, bins: int, data: st.DataObject) -> None:
    right = data.draw(arrays(np.bool_, conf.shape))
    result = metrics.calibration(conf, right, bins=bins)
    filled = result.count > 0
    assert result.count.sum() == len(conf)
    if 0 < right.sum() < len(right):  # sklearn's curve needs both outcomes
        prob_true, prob_pred = calibration_curve(right, conf, n_bins=bins, strategy="uniform")
        np.testing.assert_allclose(result.accuracy[filled], prob_true, rtol=1e-12)
        np.testing.assert_allclose(result.confidence[filled], prob_pred, rtol=1e-12)
    # A plain loop over samples and bins.
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for b in range(bins):
        inside = [i for i, c in enumerate(conf) if (edges[b] < c <= edges[b + 1]) or (b == 0 and c == 0)]
        if inside:
            gap = abs(np.mean(right[inside]) - np.mean(conf[inside]))
            ece += len(inside) / len(conf) * gap
    assert result.ece == pytest.approx(ece, abs=1e-12)


# ------------------------------------------------------------------------------ confusions + mistakes
@FAST
@given(labelled_predictions(), st.integers(1, 20))
def test_most_confused_pairs_brute_force(case: tuple[np.ndarray, np.ndarray, int], top: int) -> None:
    y, p, k = case
    confusion = metrics.confusion_matrix(y, p, num_classes=k)
    cells = sorted((-int(np.sum((y == i) & (p == j))), i, j) for i in range(k) for j in range(k) if i != j)
    expected = [(i, j, -neg) for neg, i, j in cells if neg < 0][:top]
    got = metrics.most_confused_pairs(confusion, top=top)
    assert [(pair.true, pair.predicted, pair.count) for pair in got] == expected
    for pair in got:
        assert pair.fraction_of_true == pytest.approx(pair.count / np.sum(y == pair.true))


@FAST
@given(scored_labels(), st.integers(1, 30))
def test_worst_mistakes_brute_force(case: tuple[np.ndarray, np.ndarray], top: int) -> None:
    scores, labels = case
    wrong = [(-scores[i].max(), i) for i in range(len(labels)) if int(np.argmax(scores[i])) != labels[i]]
    expected = [i for _, i in sorted(wrong)][:top]
    assert metrics.worst_mistakes(scores, labels, top=top).tolist() == expected
