"""Classical (non-neural) baselines from scikit-learn, starting with the seed's linear SGD classifier."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from mnistlab.data import Dataset


@dataclass(frozen=True)
class SGDBaselineResult:
    """The seed's SGD experiment: accuracy on its 75/25 split of the training set and on the real test set."""

    split_accuracy: float
    test_accuracy: float
    train_samples: int
    split_samples: int
    n_iter: int
    max_iter: int
    train_seconds: float
    coef: np.ndarray
    intercept: np.ndarray


def flatten_scaled(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1], the scaling the seed used for scikit-learn too."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)


def sgd_baseline(
    dataset: Dataset,
    *,
    seed: int = 0,
    max_iter: int = 200,
    test_size: float = 0.25,
    n_jobs: int | None = -1,
) -> SGDBaselineResult:
    """``SGDClassifier(max_iter=max_iter)`` (hinge loss, one-vs-rest) as in the seed.

    Fitted on a seeded 75/25 ``train_test_split`` of the training set; scored on the held-out quarter (the
    seed's figure) and on the official test set (the honest one). ``n_jobs`` fits the ten one-vs-rest
    problems in parallel; each gets its own seed drawn up front, so the result does not depend on it.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import train_test_split

    features = flatten_scaled(dataset.train.images)
    x_fit, x_held, y_fit, y_held = train_test_split(features, dataset.train.labels, test_size=test_size,
                                                    random_state=seed)
    classifier = SGDClassifier(max_iter=max_iter, random_state=seed, n_jobs=n_jobs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # A short --quick run stops before convergence on purpose; the report says how many epochs ran.
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x_fit, y_fit)
    seconds = time.perf_counter() - start
    split_accuracy = float(np.mean(classifier.predict(x_held) == y_held))
    test_accuracy = float(np.mean(classifier.predict(flatten_scaled(dataset.test.images)) == dataset.test.labels))
    return SGDBaselineResult(
        split_accuracy=split_accuracy, test_accuracy=test_accuracy, train_samples=len(y_fit),
        split_samples=len(y_held), n_iter=int(classifier.n_iter_), max_iter=max_iter, train_seconds=seconds,
        coef=classifier.coef_.astype(np.float32), intercept=classifier.intercept_.astype(np.float32),
    )
