"""Ensembles and test-time augmentation, checked against hand computations.

The oracle for every probability here is independent of mnistlab's scoring path: each member's network is
rebuilt from its own run's ``model.safetensors`` with ``load_state_dict``, fed numpy-scaled pixels, and its
softmax is averaged in numpy. TTA's shifted copies are made with numpy slicing, not the tensor ops under test.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import mnistlab
from mnistlab.errors import MnistlabError
from tests.clitools import assert_one_line_error, copy_run, run_cli

MEMBERS = (("fast", 0), ("mlp", 1), ("softmax", 2))  # mixed architectures, on purpose
TRAIN_IMAGES = 3000  # a fraction of MNIST: a few seconds of training for all three


def _slice(mnist, n: int):
    """MNIST with only the first ``n`` training images (the test split stays whole)."""
    from mnistlab.data import Split

    train = Split(mnist.train.images[:n], mnist.train.labels[:n])
    return dataclasses.replace(mnist, splits={**mnist.splits, "train": train})


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory, mnist) -> list[Path]:
    """Three small runs of different architectures on a fraction of MNIST (1 epoch each)."""
    from mnistlab.config import TrainConfig
    from mnistlab.training import fit

    root = tmp_path_factory.mktemp("members")
    data = _slice(mnist, TRAIN_IMAGES)
    paths = []
    for name, seed in MEMBERS:
        path = root / f"{name}-{seed}"
        fit(TrainConfig.for_model(name, epochs=1, seed=seed, device="cpu", precision="fp32"), run_dir=path,
            dataset=data)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def expected_test(members: list[Path], mnist) -> np.ndarray:
    """The hand-computed mean probabilities of the three members on all 10,000 test images."""
    return mean_member_probabilities(members, mnist.test.images)


@pytest.fixture(scope="module")
def ensemble_run(members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> mnistlab.Run:
    return mnistlab.ensemble(members, out=tmp_path_factory.mktemp("ens") / "ensemble", registry=False)


def hand_probabilities(run_dir: Path, images: np.ndarray) -> np.ndarray:
    """float64 softmax probabilities of one run's network, rebuilt by hand from its own files."""
    import torch
    from safetensors.torch import load_file

    from mnistlab.models import BUILDERS

    record = json.loads((run_dir / "model.json").read_text())
    module = BUILDERS[record["name"]](num_classes=record["num_classes"])
    module.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    module.eval()
    x = torch.from_numpy((images.astype(np.float32) / np.float32(255.0))[:, None])
    with torch.no_grad():
        logits = module(x).double().numpy()
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def mean_member_probabilities(members: list[Path], images: np.ndarray) -> np.ndarray:
    return np.mean([hand_probabilities(path, images) for path in members], axis=0)


def numpy_shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Every image moved by (dy, dx) pixels, zeros filling in (an independent numpy implementation)."""
    out = np.zeros_like(images)
    h, w = images.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


# ------------------------------------------------------------------------------------------- ensembles
def test_ensemble_probabilities_are_the_mean_of_the_members(ensemble_run: mnistlab.Run, members: list[Path],
                                                            expected_test: np.ndarray, mnist) -> None:
    images = mnist.test.images
    expected = expected_test
    got = np.array([p.probabilities for p in ensemble_run.predict(images[:2000])])
    assert np.abs(got - expected[:2000]).max() <= 1e-6
    # The evaluation (the one scoring path, all 10,000 images) and metrics.json agree with the hand figures.
    accuracy = float((expected.argmax(axis=1) == mnist.test.labels).mean())
    evaluation = ensemble_run.evaluate(registry=False)
    assert evaluation.accuracy == pytest.approx(accuracy, abs=1e-12)
    assert ensemble_run.metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    loss = float(-np.log(expected[np.arange(len(images)), mnist.test.labels]).mean())
    assert evaluation.loss == pytest.approx(loss, rel=1e-5)
    for member, path in zip(ensemble_run.metrics["members"], members, strict=True):
        own = hand_probabilities(path, images)
        assert member["test_accuracy"] == pytest.approx(float((own.argmax(1) == mnist.test.labels).mean()),
                                                        abs=1e-12)
    figures = [m["test_accuracy"] for m in ensemble_run.metrics["members"]]
    assert ensemble_run.metrics["member_test_accuracy_mean"] == pytest.approx(np.mean(figures))
    assert ensemble_run.metrics["member_test_accuracy_std"] == pytest.approx(np.std(figures, ddof=1))


def test_the_directory_records_its_members(ensemble_run: mnistlab.Run, members: list[Path]) -> None:
    import hashlib

    assert ensemble_run.is_ensemble and ensemble_run.name == "ensemble"
    recorded = ensemble_run.members
    assert [Path(m["path"]) for m in recorded] == [p.resolve() for p in members]
    for member, path in zip(recorded, members, strict=True):
        assert member["weights"] == "last"
        assert member["weights_sha256"] == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
        assert member["model"]["name"] == json.loads((path / "model.json").read_text())["name"]
    with pytest.raises(MnistlabError, match="no training settings"):
        ensemble_run.config  # noqa: B018


def test_deleting_the_members_keeps_the_ensemble_working(members: list[Path], tmp_path: Path, mnist) -> None:
    copies = [copy_run(path, tmp_path / path.name) for path in members]
    run = mnistlab.ensemble(copies, out=tmp_path / "ens", registry=False)
    images = mnist.test.images[:300]
    before = np.array([p.probabilities for p in run.predict(images)])
    for path in copies:
        shutil.rmtree(path)
    again = mnistlab.load(tmp_path / "ens", registry=False)
    after = np.array([p.probabilities for p in again.predict(images)])
    np.testing.assert_array_equal(before, after)
    assert np.abs(after - mean_member_probabilities(members, images)).max() <= 1e-6
    assert again.evaluate(registry=False).accuracy == run.metrics["test_accuracy"]


def _edited_copy(source: Path, target: Path, **changes: object) -> Path:
    copy_run(source, target)
    record = json.loads((target / "model.json").read_text())
    record.update(changes)
    (target / "model.json").write_text(json.dumps(record))
    return target


def test_members_with_different_class_counts_are_refused_in_one_line(members: list[Path], tmp_path: Path,
                                                                      capsys) -> None:
    five = _edited_copy(members[0], tmp_path / "five", num_classes=5, class_names=list("01234"))
    out = tmp_path / "ens"
    code, _, err = run_cli(capsys, "ensemble", str(members[1]), str(five), "--out", str(out), "--registry",
                           str(tmp_path / "reg.sqlite"))
    assert_one_line_error(code, err, str(five), "classes (5)", "(10)", "must agree")
    assert not out.exists()


def test_other_bad_member_lists_are_refused_in_one_line(members: list[Path], ensemble_run: mnistlab.Run,
                                                        tmp_path: Path, capsys) -> None:
    fashion = _edited_copy(members[0], tmp_path / "fashion", dataset="fashion-mnist")
    cases = [
        ((str(members[0]),), "at least two runs"),
        ((str(members[0]), str(members[0])), "listed twice"),
        ((str(members[0]), str(ensemble_run.path)), "is an ensemble itself"),
        ((str(members[1]), str(fashion)), "dataset (fashion-mnist)"),
        ((str(members[0]), str(tmp_path / "nowhere")), "no such run directory"),
    ]
    for argv, fragment in cases:
        code, _, err = run_cli(capsys, "ensemble", *argv, "--out", str(tmp_path / "never"), "--registry",
                               str(tmp_path / "reg.sqlite"))
        assert_one_line_error(code, err, fragment)
        assert not (tmp_path / "never").exists()


def test_onnx_export_of_the_ensemble_matches_torch(ensemble_run: mnistlab.Run, expected_test: np.ndarray,
                                                   mnist) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    result = ensemble_run.export()
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    images = mnist.test.images
    logits = session.run(None, {session.get_inputs()[0].name: (images.astype(np.float32) / 255.0)[:, None]})[0]
    logits = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.abs(probabilities - expected_test).max() <= 1e-5
    assert result.metadata["model"] == "ensemble"
    card = result.card.read_text() if result.card else ""
    assert "mean of the softmax probabilities of 3 trained networks" in card


# ------------------------------------------------------------------------------------------------- TTA
def test_shifted_copies_move_a_dot_where_it_should() -> None:
    import torch

    from mnistlab.inference import TTA_SHIFTS, shifted_copies

    image = torch.zeros((1, 28, 28), dtype=torch.uint8)
    image[0, 10, 20] = 255
    copies = shifted_copies(image)
    assert copies.shape == (len(TTA_SHIFTS), 28, 28) and copies.dtype == torch.uint8
    for copy, (dy, dx) in zip(copies, TTA_SHIFTS, strict=True):
        assert [tuple(p) for p in torch.nonzero(copy).tolist()] == [(10 + dy, 20 + dx)]
    edge = torch.zeros((1, 28, 28), dtype=torch.uint8)
    edge[0, :, 27] = 9  # the last column leaves the frame when moved right; zeros come in on the left
    moved = shifted_copies(edge, ((0, 1),))[0]
    assert int(moved.sum()) == 0


def test_tta_equals_the_mean_of_the_shifted_copies(members: list[Path], mnist) -> None:
    from mnistlab.analysis import evaluate_scores, run_scores
    from mnistlab.data import Split
    from mnistlab.inference import TTA_SHIFTS

    run_dir = members[0]  # the fast CNN: shifts change its output, unlike a model that ignores position
    test = Split(mnist.test.images[:1000], mnist.test.labels[:1000])
    some = dataclasses.replace(mnist, splits={**mnist.splits, "test": test})
    expected = np.mean([hand_probabilities(run_dir, numpy_shift(test.images, dy, dx)) for dy, dx in TTA_SHIFTS],
                       axis=0)
    # batch_size 64: 12 images a forward pass, so the last batch is a partial one
    scored = run_scores(run_dir, device="cpu", tta=True, dataset=some, batch_size=64)
    assert scored.tta and scored.probabilities is not None
    assert np.abs(scored.probabilities - expected).max() <= 1e-6
    plain = hand_probabilities(run_dir, test.images)
    assert np.abs(plain - expected).max() > 1e-3  # the transforms did something
    evaluation = evaluate_scores(scored)
    assert evaluation.accuracy == pytest.approx(float((expected.argmax(1) == test.labels).mean()), abs=1e-12)
    assert evaluation.to_dict()["tta"] == ["identity", "right 1 px", "left 1 px", "down 1 px", "up 1 px"]


def test_evaluate_tta_writes_its_own_folder(members: list[Path]) -> None:
    run_dir = members[2]
    plain = mnistlab.load(run_dir, registry=False).evaluate(registry=False)
    evaluation = mnistlab.load(run_dir, registry=False).evaluate(registry=False, tta=True)
    assert evaluation.files["json"].parent.name == "test-tta" and plain.files["json"].parent.name == "test"
    saved = json.loads(evaluation.files["json"].read_text())
    assert saved["tta"] and json.loads(plain.files["json"].read_text())["tta"] is None
    assert saved["accuracy"] != plain.accuracy  # another scoring rule, kept beside the plain one


def test_tta_is_refused_for_a_classical_run(tmp_path: Path, tiny_data_dir: Path) -> None:
    run = mnistlab.train("sgd", data_dir=tiny_data_dir, run_dir=tmp_path / "sgd", registry=False, progress=False)
    with pytest.raises(MnistlabError, match="classical model"):
        run.evaluate(registry=False, tta=True)


# ------------------------------------------------------------------------------------ end to end, CLI
def test_cli_ensemble_evaluate_and_predict_on_both_backends(members: list[Path], tmp_path: Path, capsys, mnist) -> None:
    from mnistlab.imaging import encode_png
    from mnistlab.registry import Registry

    registry = str(tmp_path / "reg.sqlite")
    out = tmp_path / "ens"
    code, stdout, err = run_cli(capsys, "ensemble", *map(str, members[1:]), "--out", str(out),
                                "--registry", registry)
    assert code == 0, err
    assert "mean of 2 softmax probabilities" in stdout and "registry: run 1" in stdout
    with Registry.open(registry, create=False) as opened:
        record = opened.get(1)
    assert record.model == "ensemble" and record.source == "ensemble"
    assert record.metrics["test_accuracy"] == json.loads((out / "metrics.json").read_text())["test_accuracy"]

    code, stdout, err = run_cli(capsys, "evaluate", "1", "--tta", "--json", "--registry", registry)
    assert code == 0, err
    assert json.loads(stdout)["tta"] and Path(json.loads(stdout)["files"]["json"]).parent.name == "test-tta"

    image = mnist.test.images[0]
    png = tmp_path / "digit.png"
    png.write_bytes(encode_png(image))
    expected = mean_member_probabilities(members[1:], image[None])[0]
    for backend in ("torch", "onnx"):
        code, stdout, err = run_cli(capsys, "predict", str(out), str(png), "--json", "--backend", backend,
                                    "--registry", registry)
        assert code == 0, err
        result = json.loads(stdout)["results"][0]
        got = [result["probabilities"][name] for name in map(str, range(10))] \
            if isinstance(result["probabilities"], dict) else result["probabilities"]
        assert np.abs(np.array(got) - expected).max() <= 1e-5, backend


def test_serve_answers_with_the_ensemble_on_both_backends(ensemble_run: mnistlab.Run, expected_test: np.ndarray,
                                                          mnist) -> None:
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from mnistlab.predict import open_predictor
    from mnistlab.serve import create_app

    images = mnist.test.images[:3]
    for backend in ("torch", "onnx"):
        with TestClient(create_app(predictor=open_predictor(ensemble_run.path, backend=backend))) as client:
            assert client.get("/api/model").json()["model"] == "ensemble"
            for image, expected in zip(images, expected_test[:3], strict=True):
                response = client.post("/api/predict", json={"pixels": image.tolist()})
                assert response.status_code == 200, response.text
                got = np.array(response.json()["probabilities"])
                assert np.abs(got - expected).max() <= 1e-5, backend
                assert response.json()["prediction"] == int(expected.argmax())
