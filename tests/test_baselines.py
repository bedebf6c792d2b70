"""Classical baselines: array-rebuilt predictions against the scikit-learn estimators they came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from mnistlab import runs
from mnistlab.analysis import evaluate_run
from mnistlab.baselines import (
    flatten_scaled,
    holdout_indices,
    knn_votes,
    load_classical_model,
    svm_ovo_decision,
)
from mnistlab.config import TrainConfig
from mnistlab.data import load_dataset, write_idx
from mnistlab.errors import MnistlabError
from mnistlab.training import fit

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # refits stop early

SEED = 3
FIT_SIZE = 1000
OPTIONS = {
    "sgd": {"max_iter": 30, "max_train": FIT_SIZE},
    "logreg": {"max_iter": 60, "C": 0.5, "max_train": FIT_SIZE},
    "knn": {"k": 3, "max_train": FIT_SIZE},
    "svm": {"C": 5.0, "gamma": 0.05, "max_train": FIT_SIZE},
    "forest": {"n_estimators": 8, "max_train": FIT_SIZE},
}


@pytest.fixture(scope="module")
def classical_runs(tmp_path_factory: pytest.TempPathFactory, mnist) -> dict[str, Path]:
    """All five classical models fitted on the same 1,000 MNIST training images (one thread: the CI is busy)."""
    root = tmp_path_factory.mktemp("classical")
    return {name: fit(TrainConfig.for_model(name, options=options, seed=SEED, threads=1), run_dir=root / name,
                      dataset=mnist).run_dir
            for name, options in OPTIONS.items()}


@pytest.fixture(scope="module")
def fit_data(mnist) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The documented subsample rule, computed here independently: a seeded choice of FIT_SIZE, sorted."""
    index = np.sort(np.random.default_rng(SEED).choice(60_000, size=FIT_SIZE, replace=False))
    # mnistlab.data.train_val_indices with no validation returns range(n) in order, so the choice is of it.
    return (mnist.train.images[index], mnist.train.labels[index].astype(np.int64),
            mnist.test.images[:2000], mnist.test.labels[:2000].astype(np.int64))


def _loaded_scores(run_dir: Path, images: np.ndarray, mnist) -> np.ndarray:
    model, _ = load_classical_model(run_dir, dataset=mnist)
    return model.scores(images)


def test_run_directory_is_complete_and_consistent(classical_runs: dict[str, Path], mnist) -> None:
    for name, run_dir in classical_runs.items():
        for filename in (runs.CONFIG_FILE, runs.MODEL_FILE, runs.WEIGHTS_FILE, runs.HISTORY_JSON, runs.HISTORY_CSV,
                         runs.CURVES_PNG, runs.METRICS_FILE):
            assert (run_dir / filename).is_file(), (name, filename)
        config = json.loads((run_dir / runs.CONFIG_FILE).read_text())
        assert config["family"] == "classical" and config["options"]["max_train"] == FIT_SIZE
        assert TrainConfig.from_dict(config).options == TrainConfig.for_model(name, options=OPTIONS[name]).options
        history = json.loads((run_dir / runs.HISTORY_JSON).read_text())
        assert len(history) == 1 and history[0]["epoch"] == 1
        metrics = json.loads((run_dir / runs.METRICS_FILE).read_text())
        assert metrics["train_samples"] == FIT_SIZE and metrics["test_count"] == 10_000
        # The recorded test accuracy is what the saved arrays predict, recomputed from the files.
        scores = _loaded_scores(run_dir, mnist.test.images, mnist)
        assert metrics["test_accuracy"] == np.mean(scores.argmax(axis=1) == mnist.test.labels)
        # And evaluate_run (the networks' API) agrees for classical runs too.
        result, recorded = evaluate_run(run_dir, device="cpu")
        assert result.accuracy == metrics["test_accuracy"] and recorded["test_accuracy"] == result.accuracy
        assert result.count == 10_000
        model = json.loads((run_dir / runs.MODEL_FILE).read_text())
        assert model["family"] == "classical" and model["score_kind"] in ("probability", "decision")
        if model["score_kind"] == "probability":
            assert metrics["test_loss"] > 0 and np.allclose(scores.sum(axis=1), 1.0)
        else:
            assert metrics["test_loss"] is None and history[0]["loss"] is None


def test_linear_models_equal_sklearn(classical_runs: dict[str, Path], fit_data, mnist) -> None:
    x_fit, y_fit, x_test, y_test = fit_data
    features, test_features = flatten_scaled(x_fit), flatten_scaled(x_test)
    sgd = SGDClassifier(max_iter=30, random_state=SEED, n_jobs=1).fit(features, y_fit)
    ours = _loaded_scores(classical_runs["sgd"], x_test, mnist)
    np.testing.assert_allclose(ours, sgd.decision_function(test_features), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours.argmax(axis=1), sgd.predict(test_features))

    # lbfgs stopped early is sensitive to BLAS threading: refit as the fixture did, with one thread.
    with threadpool_limits(1):
        logreg = LogisticRegression(C=0.5, max_iter=60, random_state=SEED).fit(features, y_fit)
    model, _ = load_classical_model(classical_runs["logreg"], dataset=mnist)
    np.testing.assert_array_equal(model.arrays["coef"], logreg.coef_)
    ours = model.scores(x_test)
    np.testing.assert_allclose(ours, logreg.predict_proba(test_features), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ours.argmax(axis=1), logreg.predict(test_features))
    assert np.mean(ours.argmax(axis=1) == y_test) > 0.8


def test_knn_equals_sklearn_brute_force(classical_runs: dict[str, Path], fit_data, mnist) -> None:
    x_fit, y_fit, x_test, _ = fit_data
    knn = KNeighborsClassifier(n_neighbors=3, algorithm="brute").fit(flatten_scaled(x_fit), y_fit)
    ours = _loaded_scores(classical_runs["knn"], x_test, mnist)
    expected = knn.predict_proba(flatten_scaled(x_test))
    # sklearn's float distances may order exact ties either way; compare where the 3rd and 4th nearest differ.
    q, r = x_test.reshape(len(x_test), -1).astype(np.int64), x_fit.reshape(len(x_fit), -1).astype(np.int64)
    d = (q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2 * (q @ r.T)   # exact integer squared distances
    d.sort(axis=1)
    clear = d[:, 2] != d[:, 3]
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(ours[clear], expected[clear])
    np.testing.assert_array_equal(ours.argmax(axis=1)[clear], knn.predict(flatten_scaled(x_test))[clear])


def test_knn_ties_go_to_the_lower_training_index() -> None:
    reference = np.zeros((4, 28, 28), np.uint8)
    reference[0, 0, 0] = 10   # distance 10 from the query
    reference[1, 0, 0] = 30   # distance 10 as well (query has 20): tie with #0
    reference[2, 0, 0] = 20   # distance 0
    reference[3, 0, 0] = 200
    query = np.zeros((1, 28, 28), np.uint8)
    query[0, 0, 0] = 20
    labels = np.array([5, 7, 1, 9])
    # k=2: #2 (distance 0) and, of the tied #0/#1, #0 -> votes for 1 and 5.
    votes = knn_votes(query, reference, labels, k=2, num_classes=10)
    np.testing.assert_array_equal(votes[0], np.eye(10)[1] / 2 + np.eye(10)[5] / 2)
    # A 1-1 vote picks the lower class (as sklearn's mode does).
    assert votes.argmax(axis=1)[0] == 1


def test_svm_decision_equals_sklearn(classical_runs: dict[str, Path], fit_data, mnist) -> None:
    x_fit, y_fit, x_test, _ = fit_data
    features, test_features = flatten_scaled(x_fit), flatten_scaled(x_test)
    svc = SVC(C=5.0, gamma=0.05, kernel="rbf", break_ties=True, random_state=SEED).fit(features, y_fit)
    model, _ = load_classical_model(classical_runs["svm"], dataset=mnist)
    assert model.arrays["support_indices"].size == svc.support_.size
    ours = model.scores(x_test)
    np.testing.assert_allclose(ours, svc.decision_function(test_features), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(ours.argmax(axis=1), svc.predict(test_features))
    svc.decision_function_shape = "ovo"
    ovo = svm_ovo_decision(test_features, svc.support_vectors_, svc.dual_coef_, svc.intercept_, svc.n_support_,
                           gamma=0.05)
    np.testing.assert_allclose(ovo, svc.decision_function(test_features), rtol=1e-9, atol=1e-9)


def test_forest_probabilities_are_sklearns_bit_for_bit(classical_runs: dict[str, Path], fit_data, mnist) -> None:
    x_fit, y_fit, x_test, _ = fit_data
    forest = RandomForestClassifier(n_estimators=8, random_state=SEED, n_jobs=1).fit(flatten_scaled(x_fit), y_fit)
    ours = _loaded_scores(classical_runs["forest"], x_test, mnist)
    np.testing.assert_array_equal(ours, forest.predict_proba(flatten_scaled(x_test)))
    np.testing.assert_array_equal(ours.argmax(axis=1), forest.predict(flatten_scaled(x_test)))


def test_changed_dataset_is_detected(tmp_path: Path, tiny_data_dir: Path) -> None:
    config = TrainConfig.for_model("knn", options={"k": 1}, data_dir=str(tiny_data_dir), threads=1)
    run = fit(config, run_dir=tmp_path / "knn").run_dir
    assert evaluate_run(run, device="cpu")[0].accuracy > 0.9
    dataset = load_dataset(data_dir=tiny_data_dir)
    changed = np.array(dataset.train.images)
    changed[:, 0, 0] ^= 1
    write_idx(tiny_data_dir / "train-images-idx3-ubyte.gz", changed)
    with pytest.raises(MnistlabError, match="fingerprint mismatch"):
        evaluate_run(run, device="cpu")


def test_a_subsample_missing_a_class_is_a_clear_error(tmp_path: Path, tiny_data_dir_shared: Path) -> None:
    config = TrainConfig.for_model("logreg", options={"max_train": 3}, data_dir=str(tiny_data_dir_shared))
    with pytest.raises(MnistlabError, match="lack class"):
        fit(config, run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # a failed fit leaves no folder to block --out


def test_sklearn_holdout_is_train_test_split_order_included() -> None:
    fit_idx, held_idx = holdout_indices(1000, val_fraction=0.25, seed=7, method="sklearn")
    a, b = train_test_split(np.arange(1000), test_size=0.25, random_state=7)
    np.testing.assert_array_equal(fit_idx, a)
    np.testing.assert_array_equal(held_idx, b)


def test_seed_sgd_through_the_run_path_matches_the_tutorials_code(tmp_path: Path, mnist) -> None:
    """The tutorial's experiment written directly in scikit-learn (75/25 train_test_split, SGDClassifier,
    pixels / 255) gives the same figures as mnistlab's classical run path."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import train_test_split

    features = mnist.train.images.reshape(-1, 784).astype(np.float32) / 255
    x_fit, x_held, y_fit, y_held = train_test_split(features, mnist.train.labels, test_size=0.25, random_state=0)
    reference = SGDClassifier(max_iter=1, random_state=0).fit(x_fit, y_fit)
    test_features = mnist.test.images.reshape(-1, 784).astype(np.float32) / 255
    config = TrainConfig.for_model("sgd", options={"max_iter": 1}, val_split=0.25, val_method="sklearn")
    result = fit(config, run_dir=tmp_path / "sgd", dataset=mnist)
    assert result.history[0].val_accuracy == float(np.mean(reference.predict(x_held) == y_held))
    assert result.test.accuracy == float(np.mean(reference.predict(test_features) == mnist.test.labels))
    assert result.metrics["n_iter"] == reference.n_iter_


# ------------------------------------------------------------------------------ error paths, end to end
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from tests.clitools import run_cli

    return run_cli(capsys, *argv)


def test_knn_with_k_over_the_training_images_is_one_line(capsys, tmp_path: Path, tiny_data_dir: Path) -> None:
    from tests.clitools import assert_one_line_error

    code, _, err = _cli(capsys, "train", "knn", "--option", "k=300", "--data-dir", str(tiny_data_dir),
                        "--out", str(tmp_path / "knn"))
    assert_one_line_error(code, err, "knn: k=300 is more than the 256 training images")
    assert not (tmp_path / "knn").exists()


def test_a_reference_index_past_the_training_split_is_one_line(capsys, tmp_path: Path, tiny_data_dir: Path) -> None:
    """A k-NN run keeps training images by index; data with fewer training images cannot hold them."""
    from tests.clitools import assert_one_line_error

    run = fit(TrainConfig.for_model("knn", options={"k": 1}, data_dir=str(tiny_data_dir), threads=1),
              run_dir=tmp_path / "knn").run_dir
    dataset = load_dataset(data_dir=tiny_data_dir)
    write_idx(tiny_data_dir / "train-images-idx3-ubyte.gz", dataset.train.images[:100])
    write_idx(tiny_data_dir / "train-labels-idx1-ubyte.gz", dataset.train.labels[:100])
    code, _, err = _cli(capsys, "evaluate", str(run), "--device", "cpu")
    assert_one_line_error(code, err, f"{run}: the model refers to training image #255 but",
                          "training split has 100; wrong dataset?")


def test_svm_on_changed_training_images_is_a_fingerprint_mismatch(capsys, tmp_path: Path,
                                                                  tiny_data_dir: Path) -> None:
    from tests.clitools import assert_one_line_error

    run = fit(TrainConfig.for_model("svm", data_dir=str(tiny_data_dir), threads=1), run_dir=tmp_path / "svm").run_dir
    code, _, err = _cli(capsys, "evaluate", str(run), "--device", "cpu", "--json")
    assert code == 0, err
    dataset = load_dataset(data_dir=tiny_data_dir)
    # Change one pixel of one support vector only: the fingerprint covers exactly the images the SVM keeps.
    from tests.reference import read_safetensors

    first_support = int(read_safetensors(run / runs.WEIGHTS_FILE)["support_indices"][0])
    changed = np.array(dataset.train.images)
    changed[first_support, 0, 0] ^= 1
    write_idx(tiny_data_dir / "train-images-idx3-ubyte.gz", changed)
    code, _, err = _cli(capsys, "evaluate", str(run), "--device", "cpu")
    assert_one_line_error(code, err, f"{run}: ", "training images differ from those this svm model was fitted on",
                          "fingerprint mismatch", "evaluate with the original data")
