"""Classical (non-neural) baselines from scikit-learn, starting with the tutorial's linear SGD classifier."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mnistlab import runs
from mnistlab.callbacks import Callback
from mnistlab.config import TrainConfig
from mnistlab.data import Dataset, load_run_dataset, split_sha256, train_val_indices
from mnistlab.errors import MnistlabError
from mnistlab.metrics import softmax
from mnistlab.results import EpochRecord, EvalResult, TrainResult


def flatten_scaled(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1], the scaling the seed used for scikit-learn too."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)


# =========================================================================================================
# Classical models through the train / evaluate / registry path.
#
# Every classical model is saved as plain arrays in model.safetensors (never pickle/joblib) and predicted
# by numpy code here, which the tests check against the scikit-learn estimator it was fitted with:
#
#   sgd, logreg  coef (K, 784) and intercept (K,): decision = x @ coef.T + intercept
#   knn          indices of the reference training images (+ their labels and a SHA-256 fingerprint):
#                exact integer squared distances, k nearest (ties: lower training index), majority vote
#   svm          indices of the support vectors in the training set, dual coefficients, intercepts and
#                gamma: libsvm's one-vs-one RBF decision values, combined as scikit-learn's "ovr" shape
#   forest       every tree's nodes (children, feature, threshold) and its leaves' class probabilities
#
# k-NN and the SVM reference training images by index, so a run stays small; the fingerprint makes loading
# fail loudly if the dataset files changed since training.
# =========================================================================================================
ScoreKind = Literal["probability", "decision"]
TRAIN_SAMPLE_FOR_METRICS = 10_000  # training accuracy of a classical model is measured on at most this many


def holdout_indices(n: int, *, val_fraction: float, seed: int, method: str = "mnistlab"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) index arrays of a training split of ``n`` images.

    ``mnistlab``: :func:`mnistlab.data.train_val_indices` (what the networks use). ``sklearn``: scikit-learn's
    ``train_test_split`` as the seed did for its SGD baseline, order included (SGD's result depends on it).
    """
    if method == "mnistlab" or val_fraction == 0.0:
        return train_val_indices(n, val_fraction=val_fraction, seed=seed)
    if method == "sklearn":
        from sklearn.model_selection import train_test_split

        fit_idx, held_idx = train_test_split(np.arange(n), test_size=val_fraction, random_state=seed)
        return fit_idx, held_idx
    raise MnistlabError(f"unknown validation method {method!r}; choose mnistlab or sklearn")


def subsample_indices(indices: np.ndarray, *, max_train: int, seed: int) -> np.ndarray:
    """``indices`` unchanged, or a seeded random ``max_train`` of them (sorted) when ``0 < max_train < len``."""
    if max_train <= 0 or max_train >= len(indices):
        return indices
    chosen = np.random.default_rng(seed).choice(len(indices), size=max_train, replace=False)
    return indices[np.sort(chosen)]


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of reference images and labels, so a model that indexes into a dataset detects changed files."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def _pixels_u8(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.uint8).reshape(len(images), -1)


# ------------------------------------------------------------------------------------------- predictors
def linear_scores(features: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Decision values ``features @ coef.T + intercept`` in the coefficients' dtype (scikit-learn's)."""
    return features.astype(coef.dtype, copy=False) @ coef.T + intercept


def knn_votes(queries: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray, *, k: int,
              num_classes: int, chunk_elements: int = 1 << 23) -> np.ndarray:
    """Vote fractions (N, K) of the ``k`` nearest reference images (Euclidean distance on raw pixels).

    Squared distances are computed exactly: uint8 pixels in float64 make every product and partial sum of
    ``|q|^2 + |r|^2 - 2 q.r`` an integer below 2^53. Equal distances rank the lower reference index first
    (one int64 key ``distance * M + index`` per pair), so results never depend on BLAS or thread order.
    """
    q = _pixels_u8(queries)
    r = _pixels_u8(reference).astype(np.float64)                                # (M, 784)
    m = r.shape[0]
    if not 1 <= k <= m:
        raise MnistlabError(f"k-NN needs 1 <= k <= {m} reference images, got k={k}")
    r_sq = np.einsum("ij,ij->i", r, r)                                           # (M,)
    labels = np.asarray(reference_labels, dtype=np.int64)
    votes = np.zeros((len(q), num_classes), dtype=np.float64)
    rows = max(1, chunk_elements // m)
    for start in range(0, len(q), rows):
        block = q[start:start + rows].astype(np.float64)                         # (B, 784)
        # |q|^2 is the same for every reference of a query, so ranking needs only |r|^2 - 2 q.r.
        partial = r_sq[None, :] - 2.0 * (block @ r.T)                             # (B, M) exact integers
        shift = np.einsum("ij,ij->i", block, block)[:, None]                      # |q|^2 makes it >= 0
        keys = (partial + shift).astype(np.int64) * m + np.arange(m)[None, :]     # unique per row
        # (B, k) reference indices of the k smallest keys (all of them when k == M).
        nearest = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < m else np.broadcast_to(np.arange(m), keys.shape)
        neighbour_labels = labels[nearest]                                        # (B, k)
        counts = (neighbour_labels[:, :, None] == np.arange(num_classes)).sum(axis=1)
        votes[start:start + rows] = counts / k
    return votes


def ovo_to_ovr(decision: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's "ovr" shape of one-vs-one decision values: votes plus confidences squashed to ±1/3.

    The arg-max is the class with most pairwise wins, ties broken by the summed confidences.
    """
    votes = np.zeros((decision.shape[0], num_classes))
    confidence = np.zeros((decision.shape[0], num_classes))
    pair = 0
    for i in range(num_classes):
        for j in range(i + 1, num_classes):
            confidence[:, i] += decision[:, pair]
            confidence[:, j] -= decision[:, pair]
            votes[decision[:, pair] > 0, i] += 1     # libsvm: a positive value is a vote for the first class
            votes[decision[:, pair] <= 0, j] += 1
            pair += 1
    return votes + confidence / (3 * (np.abs(confidence) + 1))


def svm_ovo_decision(features: np.ndarray, support: np.ndarray, dual_coef: np.ndarray, intercept: np.ndarray,
                     n_support: np.ndarray, *, gamma: float, chunk: int = 1000) -> np.ndarray:
    """libsvm's one-vs-one decision values (N, K(K-1)/2) of an RBF SVM, from its fitted arrays.

    For the pair (i, j): sum over i's support vectors of dual_coef[j-1] K(x, sv) plus over j's of
    dual_coef[i] K(x, sv), plus the intercept; K(x, sv) = exp(-gamma |x - sv|^2).
    """
    x = features.astype(np.float64, copy=False)
    sv = support.astype(np.float64, copy=False)                                  # (S, 784)
    sv_sq = np.einsum("ij,ij->i", sv, sv)
    starts = np.concatenate([[0], np.cumsum(n_support)])
    k = len(n_support)
    out = np.empty((len(x), k * (k - 1) // 2))
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        sq = np.einsum("ij,ij->i", block, block)[:, None] + sv_sq[None, :] - 2.0 * (block @ sv.T)
        kernel = np.exp(-gamma * np.maximum(sq, 0.0))                              # (B, S)
        pair = 0
        for i in range(k):
            for j in range(i + 1, k):
                si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                out[start:start + chunk, pair] = (kernel[:, si] @ dual_coef[j - 1, si]
                                                  + kernel[:, sj] @ dual_coef[i, sj] + intercept[pair])
                pair += 1
    return out


def forest_probabilities(features32: np.ndarray, arrays: dict[str, np.ndarray], *, chunk: int = 2000) -> np.ndarray:
    """Mean of the trees' leaf class probabilities, walking every tree of the forest at once.

    A node goes left when ``x[feature] <= threshold`` (float32 pixels against float64 thresholds, as
    scikit-learn compares). Leaves are nodes with ``left < 0``; ``-1 - left`` is their row of ``leaf_proba``.
    Trees are summed in order, as scikit-learn does with one job, so the result is bit-for-bit its own.
    """
    left, right = arrays["children_left"], arrays["children_right"]
    feature, threshold = arrays["feature"].astype(np.intp), arrays["threshold"]
    leaf_proba, roots = arrays["leaf_proba"], arrays["roots"]
    x = np.asarray(features32, dtype=np.float32)
    out = np.empty((len(x), leaf_proba.shape[1]))
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        node = np.repeat(roots[None, :].astype(np.int64), len(block), axis=0)     # (B, T)
        while True:
            rows, trees = np.nonzero(left[node] >= 0)
            if rows.size == 0:
                break
            at = node[rows, trees]
            go_left = block[rows, feature[at]] <= threshold[at]
            node[rows, trees] = np.where(go_left, left[at], right[at])
        leaves = -1 - left[node]                                                   # (B, T)
        total = np.zeros((len(block), leaf_proba.shape[1]))
        for tree in range(leaves.shape[1]):
            total += leaf_proba[leaves[:, tree]]
        out[start:start + chunk] = total / leaves.shape[1]
    return out


# ---------------------------------------------------------------------------------------- the model type
@dataclass(frozen=True)
class ClassicalModel:
    """A fitted classical model as arrays: what model.safetensors stores, plus scalars for model.json.

    ``reference`` holds the training images k-NN (all of them) or the SVM (its support vectors) compare
    against; it is rebuilt from the dataset by index when a run is loaded, never saved twice.
    """

    name: str
    num_classes: int
    score_kind: ScoreKind
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    reference: np.ndarray | None = None  # uint8 (M, 28, 28)

    @property
    def params(self) -> int:
        """How many numbers define the predictor (reference pixels count for k-NN and the SVM)."""
        stored = sum(int(a.size) for key, a in self.arrays.items() if not key.endswith("indices"))
        return stored + (int(self.reference.size) if self.reference is not None else 0)

    def scores(self, images: np.ndarray) -> np.ndarray:
        """(N, K) float64 scores for uint8 images (N, 28, 28): probabilities or decision values."""
        if len(images) == 0:
            return np.zeros((0, self.num_classes))
        features = flatten_scaled(np.asarray(images))                               # float32 (N, 784)
        if self.name in ("sgd", "logreg"):
            decision = linear_scores(features, self.arrays["coef"], self.arrays["intercept"])
            return softmax(decision) if self.name == "logreg" else decision.astype(np.float64)
        if self.name == "knn":
            assert self.reference is not None
            return knn_votes(images, self.reference, self.arrays["train_labels"], k=int(self.meta["k"]),
                             num_classes=self.num_classes)
        if self.name == "svm":
            assert self.reference is not None
            decision = svm_ovo_decision(features, flatten_scaled(self.reference), self.arrays["dual_coef"],
                                        self.arrays["intercept"], self.arrays["n_support"],
                                        gamma=float(self.meta["gamma"]))
            return ovo_to_ovr(decision, self.num_classes)
        if self.name == "forest":
            return forest_probabilities(features, self.arrays)
        raise MnistlabError(f"unknown classical model {self.name!r}")


# ----------------------------------------------------------------------------------------------- fitting
def _fit_sgd(x: np.ndarray, y: np.ndarray, options: dict[str, Any], seed: int, n_jobs: int) -> tuple[dict, dict]:
    from sklearn.linear_model import SGDClassifier

    # Each one-vs-rest problem gets its own seed drawn up front, so n_jobs does not change the result.
    model = SGDClassifier(max_iter=int(options["max_iter"]), random_state=seed, n_jobs=n_jobs)
    model.fit(x, y)
    return {"coef": model.coef_, "intercept": model.intercept_}, {"n_iter": int(model.n_iter_)}


def _fit_logreg(x: np.ndarray, y: np.ndarray, options: dict[str, Any], seed: int, n_jobs: int) -> tuple[dict, dict]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=float(options["C"]), max_iter=int(options["max_iter"]), random_state=seed)
    model.fit(x, y)
    return {"coef": model.coef_, "intercept": model.intercept_}, {"n_iter": int(np.max(model.n_iter_))}


def _fit_svm(x: np.ndarray, y: np.ndarray, options: dict[str, Any], seed: int, n_jobs: int) -> tuple[dict, dict]:
    from sklearn.svm import SVC

    model = SVC(C=float(options["C"]), kernel="rbf", gamma=float(options["gamma"]), break_ties=True,
                random_state=seed)
    model.fit(x, y)
    arrays = {"support_indices": model.support_.astype(np.int64), "dual_coef": model.dual_coef_,
              "intercept": model.intercept_, "n_support": model.n_support_.astype(np.int64)}
    return arrays, {"gamma": float(options["gamma"]), "support_vectors": len(model.support_)}


def forest_arrays(forest: Any) -> dict[str, np.ndarray]:
    """A fitted ``RandomForestClassifier``'s trees as flat arrays (see :func:`forest_probabilities`).

    All trees' nodes are concatenated (``roots`` marks where each tree starts). A leaf's ``children_left``
    is ``-1 - row`` of ``leaf_proba``, a table of the distinct leaf probability rows: fully grown trees
    have mostly pure leaves, so the table stays tiny and the forest costs about 18 bytes a node.
    """
    lefts, rights, features, thresholds, probas, roots = [], [], [], [], [], []
    node_offset = 0
    for estimator in forest.estimators_:
        tree = estimator.tree_
        is_leaf = tree.children_left < 0
        # A tree's predict_proba is its leaf's value normalised to sum to 1 (scikit-learn's own steps).
        value = tree.value[:, 0, :].astype(np.float64)
        total = value.sum(axis=1, keepdims=True)
        total[total == 0.0] = 1.0
        probas.append((value / total)[is_leaf])
        lefts.append(np.where(is_leaf, -1, tree.children_left + node_offset))
        rights.append(np.where(is_leaf, -1, tree.children_right + node_offset))
        features.append(np.where(is_leaf, 0, tree.feature))
        thresholds.append(np.where(is_leaf, 0.0, tree.threshold))
        roots.append(node_offset)
        node_offset += tree.node_count
    left = np.concatenate(lefts).astype(np.int64)
    table, rows = np.unique(np.concatenate(probas), axis=0, return_inverse=True)
    left[left < 0] = -1 - rows.ravel()
    return {"children_left": left.astype(np.int32),
            "children_right": np.concatenate(rights).astype(np.int32),
            "feature": np.concatenate(features).astype(np.int16),
            "threshold": np.concatenate(thresholds).astype(np.float64),
            "leaf_proba": np.ascontiguousarray(table), "roots": np.asarray(roots, dtype=np.int64)}


def _fit_forest(x: np.ndarray, y: np.ndarray, options: dict[str, Any], seed: int, n_jobs: int) -> tuple[dict, dict]:
    from sklearn.ensemble import RandomForestClassifier

    # Trees draw their seeds from random_state up front: n_jobs does not change the forest.
    model = RandomForestClassifier(n_estimators=int(options["n_estimators"]), random_state=seed, n_jobs=n_jobs)
    model.fit(x, y)
    arrays = forest_arrays(model)
    return arrays, {"trees": int(options["n_estimators"]), "nodes": len(arrays["threshold"]),
                    "leaves": int(np.sum(arrays["children_left"] < 0))}


def fit_classical_model(name: str, images: np.ndarray, labels: np.ndarray, *, options: dict[str, Any],
                        seed: int, num_classes: int, train_indices: np.ndarray, n_jobs: int = -1) -> ClassicalModel:
    """Fit classical model ``name`` on uint8 ``images`` (the training images at ``train_indices``).

    ``n_jobs`` is scikit-learn's (-1: every core) for the models that fit in parallel (sgd, forest).
    """
    missing = sorted(set(range(num_classes)) - {int(c) for c in np.unique(labels)})
    if missing:
        raise MnistlabError(f"{name}: the {len(labels):,} training images lack class(es) "
                            f"{', '.join(map(str, missing))}; use more training data (`options` max_train=0)")
    train_indices = np.asarray(train_indices, dtype=np.int64)
    kind: ScoreKind = "decision" if name in ("sgd", "svm") else "probability"
    if name == "knn":
        k = int(options["k"])
        if k > len(labels):
            raise MnistlabError(f"knn: k={k} is more than the {len(labels):,} training images")
        arrays = {"train_indices": train_indices, "train_labels": np.asarray(labels, dtype=np.uint8)}
        return ClassicalModel(name, num_classes, kind, arrays, {"k": k, "fingerprint": fingerprint(images, labels)},
                              reference=np.asarray(images, dtype=np.uint8))
    fitters = {"sgd": _fit_sgd, "logreg": _fit_logreg, "svm": _fit_svm, "forest": _fit_forest}
    if name not in fitters:
        raise MnistlabError(f"unknown classical model {name!r}")
    features = flatten_scaled(images)
    with warnings.catch_warnings():
        from sklearn.exceptions import ConvergenceWarning

        # An iteration cap reached on purpose is reported (n_iter), not warned about.
        warnings.simplefilter("ignore", ConvergenceWarning)
        arrays, meta = fitters[name](features, np.asarray(labels, dtype=np.int64), options, seed, n_jobs)
    reference = None
    if name == "svm":
        local = arrays.pop("support_indices")
        arrays["support_indices"] = train_indices[local]
        reference = np.asarray(images[local], dtype=np.uint8)
        meta["fingerprint"] = fingerprint(reference, labels[local])
        arrays["support_labels"] = np.asarray(labels[local], dtype=np.uint8)
    return ClassicalModel(name, num_classes, kind, {key: np.ascontiguousarray(a) for key, a in arrays.items()},
                          meta, reference=reference)


# --------------------------------------------------------------------------------------- saving/loading
def classical_model_record(model: ClassicalModel, *, class_names: tuple[str, ...], dataset: str) -> dict[str, Any]:
    """The ``model.json`` content of a classical model."""
    return {"format": "mnistlab-model/1", "name": model.name, "family": "classical",
            "num_classes": len(class_names), "class_names": list(class_names), "dataset": dataset,
            "input_shape": [1, 28, 28], "params": model.params, "score_kind": model.score_kind,
            "classical": model.meta}


def classical_weights_bytes(model: ClassicalModel) -> bytes:
    """The model's arrays as safetensors bytes."""
    from safetensors.numpy import save

    return save(model.arrays, metadata={"format": "mnistlab-classical/1", "model": model.name})


_REQUIRED_ARRAYS = {
    "sgd": ("coef", "intercept"), "logreg": ("coef", "intercept"),
    "knn": ("train_indices", "train_labels"),
    "svm": ("support_indices", "support_labels", "dual_coef", "intercept", "n_support"),
    "forest": ("children_left", "children_right", "feature", "threshold", "leaf_proba", "roots"),
}


def load_classical_model(run_dir: str | os.PathLike[str], *, dataset: Dataset | None = None
                         ) -> tuple[ClassicalModel, Any]:
    """Rebuild a classical run's model from model.json + model.safetensors; returns (model, RunFiles).

    k-NN and SVM runs take their reference images from the run's dataset (``dataset`` if given, else loaded
    from config.json) and check them against the fingerprint saved at training.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from mnistlab.runs import WEIGHTS_FILE, read_run

    run = read_run(run_dir)
    name = run.model["name"]
    if run.model.get("family") != "classical" or name not in _REQUIRED_ARRAYS:
        raise MnistlabError(f"{run.path}: model {name!r} is not a classical model this mnistlab knows "
                            f"({', '.join(_REQUIRED_ARRAYS)})")
    try:
        arrays = load_file(str(run.path / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MnistlabError(f"{run.path / WEIGHTS_FILE}: not a readable safetensors file ({exc}); "
                            "restore it or retrain") from None
    missing = [key for key in _REQUIRED_ARRAYS[name] if key not in arrays]
    if missing:
        raise MnistlabError(f"{run.path / WEIGHTS_FILE}: arrays {', '.join(missing)} missing for model {name!r}; "
                            "the run directory is inconsistent, retrain it")
    meta = dict(run.model.get("classical") or {})
    num_classes = int(run.model.get("num_classes", 10))
    kind: ScoreKind = run.model.get("score_kind", "probability")
    reference = None
    if name in ("knn", "svm"):
        index_key, label_key = (("train_indices", "train_labels") if name == "knn"
                                else ("support_indices", "support_labels"))
        if dataset is None:
            dataset = load_run_dataset(run.config, splits=("train",), run_name=str(run.path))
        train = dataset.train
        indices = arrays[index_key]
        if indices.size and (indices.min() < 0 or indices.max() >= len(train)):
            raise MnistlabError(f"{run.path}: the model refers to training image #{int(indices.max())} but "
                                f"{dataset.name}'s training split has {len(train):,}; wrong dataset?")
        reference = train.images[indices]
        if fingerprint(reference, train.labels[indices]) != meta.get("fingerprint") or not np.array_equal(
                train.labels[indices], arrays[label_key]):
            raise MnistlabError(f"{run.path}: {dataset.name}'s training images differ from those this {name} "
                                "model was fitted on (fingerprint mismatch); evaluate with the original data")
    return ClassicalModel(name, num_classes, kind, arrays, meta, reference=reference), run


# ------------------------------------------------------------------------------------ the training path
def _score_split(model: ClassicalModel, images: np.ndarray, labels: np.ndarray) -> tuple[float | None, float]:
    """(loss, accuracy) of ``model`` on uint8 images; loss is the log-loss, None for decision-value models."""
    from mnistlab.metrics import log_loss

    scores = model.scores(images)
    accuracy = float(np.mean(scores.argmax(axis=1) == labels)) if len(labels) else float("nan")
    loss = log_loss(scores, labels) if model.score_kind == "probability" and len(labels) else None
    return loss, accuracy


def fit_classical(config: TrainConfig, *, run_dir: Path, dataset: Dataset, callback: Callback,
                  fit_indices: np.ndarray, val_indices: np.ndarray) -> TrainResult:
    """Fit a classical model into ``run_dir`` (already claimed by :func:`mnistlab.training.fit`).

    Writes the same files as a network's run (config.json, model.json, model.safetensors, history.json/.csv
    with one row), so evaluate, compare and the registry treat both alike; :func:`mnistlab.training.fit` writes
    curves.png and metrics.json from the returned metrics.
    """
    import sklearn
    from threadpoolctl import threadpool_limits

    env = {**runs.environment(), "scikit_learn": sklearn.__version__}
    runs.write_json_atomic(run_dir / runs.CONFIG_FILE, {**config.to_dict(), "environment": env})
    callback.on_train_start(config=config, run_dir=run_dir, steps_per_epoch=1, samples=len(fit_indices))
    callback.on_epoch_start(epoch=1, epochs=1, steps=1)
    train = dataset.train
    # --threads caps BLAS/OpenMP threads and scikit-learn's jobs; spinning OpenMP threads on a busy machine
    # can make a fit many times slower than one thread.
    with threadpool_limits(limits=config.threads) if config.threads else contextlib.nullcontext():
        fit_start = time.perf_counter()
        model = fit_classical_model(config.model, train.images[fit_indices], train.labels[fit_indices],
                                    options=config.options, seed=config.seed, num_classes=len(dataset.class_names),
                                    train_indices=fit_indices, n_jobs=config.threads or -1)
        fit_seconds = time.perf_counter() - fit_start
        callback.on_step(step=1, steps=1, running=lambda: (float("nan"), float("nan")))
        sample = subsample_indices(fit_indices, max_train=TRAIN_SAMPLE_FOR_METRICS, seed=config.seed)
        train_loss, train_accuracy = _score_split(model, train.images[sample], train.labels[sample])
        val_loss = val_accuracy = None
        if len(val_indices):
            val_loss, val_accuracy = _score_split(model, train.images[val_indices], train.labels[val_indices])
        eval_start = time.perf_counter()
        test_loss, test_accuracy = _score_split(model, dataset.test.images, dataset.test.labels)
        eval_seconds = time.perf_counter() - eval_start
    record = EpochRecord(epoch=1, loss=float("nan") if train_loss is None else train_loss, accuracy=train_accuracy,
                         val_loss=val_loss, val_accuracy=val_accuracy, seconds=round(fit_seconds, 4))
    history_rows = [record.to_dict()]  # JSON null, not NaN, for "no loss"
    runs.write_bytes_atomic(run_dir / runs.WEIGHTS_FILE, classical_weights_bytes(model))
    model_json = classical_model_record(model, class_names=dataset.class_names, dataset=dataset.name)
    runs.write_json_atomic(run_dir / runs.MODEL_FILE, model_json)
    runs.write_json_atomic(run_dir / runs.HISTORY_JSON, history_rows)
    runs.write_text_atomic(run_dir / runs.HISTORY_CSV, runs.history_csv_text(history_rows))
    callback.on_epoch_end(record)
    meta = {key: value for key, value in model.meta.items() if key != "fingerprint"}
    metrics = {
        "status": "completed", "model": config.model, "family": "classical", "dataset": dataset.name,
        "epochs_completed": 1, "epochs": 1, "params": model_json["params"],
        "test_loss": test_loss, "test_accuracy": test_accuracy, "test_count": len(dataset.test),
        "train_loss": train_loss, "train_accuracy": train_accuracy, "train_metrics_samples": len(sample),
        "val_loss": val_loss, "val_accuracy": val_accuracy,
        "train_samples": len(fit_indices), "val_samples": len(val_indices), "options": dict(config.options), **meta,
        "train_seconds": round(fit_seconds, 3), "seconds_per_epoch": round(fit_seconds, 4),
        "eval_seconds": round(eval_seconds, 3), "device": "cpu", "checksums": dataset.checksums,
        "data_sha256": {name: split_sha256(dataset.split(name)) for name in ("train", "test")}, "environment": env,
    }
    test = EvalResult(loss=float("nan") if test_loss is None else test_loss, accuracy=test_accuracy,
                      count=len(dataset.test))
    return TrainResult(run_dir=run_dir, config=config, history=(record,), test=test, train_seconds=fit_seconds,
                       metrics=metrics)
