"""The deep evaluation of a run: every figure against an independent computation, files, the HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from PIL import Image

from mnistlab import runs
from mnistlab.analysis import GALLERY_SIZE, cached_evaluation, check_html_path, evaluate_report
from mnistlab.config import EVAL_BATCH_SIZE, TrainConfig
from mnistlab.data import load_dataset, train_val_indices
from mnistlab.errors import MnistlabError
from mnistlab.models import load_trained_model, prepare_batch
from mnistlab.training import fit
from tests.clitools import assert_one_line_error, run_cli
from tests.conftest import write_dataset_dir


class PageParser(HTMLParser):
    """Collects every tag with its attributes, and the text of table cells row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse_page(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser


def assert_self_contained(page: PageParser) -> list[bytes]:
    """No scripts, links, frames or remote URLs; every image is an inline PNG. Returns the PNGs."""
    pngs = []
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base"), tag
        for name, value in attrs.items():
            if name in ("src", "href", "action", "poster", "srcset"):
                assert value is not None and value.startswith("data:image/png;base64,"), (tag, name, value)
                pngs.append(base64.b64decode(value.split(",", 1)[1], validate=True))
            assert "url(" not in (value or "") and "://" not in (value or ""), (tag, name)
    for png in pngs:
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.width > 100
    return pngs


def table_after(page: PageParser, first_header: str) -> list[list[str]]:
    """The first table whose header row starts with ``first_header``."""
    return next(table for table in page.tables if table and table[0] and table[0][0] == first_header)


@pytest.fixture(scope="module")
def mlp_test_report(trained_mlp_run: Path, mnist, tmp_path_factory: pytest.TempPathFactory):
    """The trained MLP evaluated on the test set, with an extra HTML copy (the run dir is a copy)."""
    run = tmp_path_factory.mktemp("eval") / "mlp"
    shutil.copytree(trained_mlp_run, run)
    html = run.parent / "shared.html"
    return evaluate_report(run, split="test", device="cpu", html=html, dataset=mnist), html


@pytest.fixture(scope="module")
def independent_logits(trained_mlp_run: Path, mnist) -> np.ndarray:
    """The MLP's test logits computed directly with torch (no mnistlab evaluation code).

    In the precision the run was trained in (bf16 autocast on CPUs with native bf16), in the same batches as
    training's test pass (EVAL_BATCH_SIZE), so the figures must agree exactly.
    """
    model, run = load_trained_model(trained_mlp_run, device="cpu")
    bf16 = run.model.get("precision") == "bf16"
    images = torch.tensor(mnist.test.images)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return torch.cat([model(prepare_batch(images[i:i + EVAL_BATCH_SIZE])).float()
                          for i in range(0, len(images), EVAL_BATCH_SIZE)]).numpy()


def test_figures_against_sklearn_and_torch(mlp_test_report, independent_logits: np.ndarray, mnist,
                                           trained_mlp_run: Path) -> None:
    out, _ = mlp_test_report
    e = out.evaluation
    labels = mnist.test.labels.astype(np.int64)
    predicted = independent_logits.argmax(axis=1)
    names = [str(d) for d in range(10)]
    assert e.count == 10_000 and e.split == "test"
    assert e.accuracy == skm.accuracy_score(labels, predicted)
    recorded = json.loads((trained_mlp_run / runs.METRICS_FILE).read_text())
    assert e.accuracy == recorded["test_accuracy"]   # what training measured with the same weights
    assert e.loss == pytest.approx(torch.nn.functional.cross_entropy(
        torch.from_numpy(independent_logits).double(), torch.from_numpy(labels)).item(), rel=1e-5)
    assert e.report.to_dict() == skm.classification_report(labels, predicted, labels=list(range(10)),
                                                           target_names=names, output_dict=True, zero_division=0.0)
    np.testing.assert_array_equal(e.confusion, skm.confusion_matrix(labels, predicted))
    # Top-k: bf16 logits tie now and then; sklearn ranks the higher index first in a tie, mnistlab the lower
    # (as argmax does). So: a stable sort as the oracle, and sklearn itself where the true class has no tie.
    order = np.argsort(-independent_logits, axis=1, kind="stable")
    true_score = independent_logits[np.arange(len(labels)), labels][:, None]
    untied = (independent_logits == true_score).sum(axis=1) == 1
    for k in (2, 3, 5):
        assert e.top_k[k] == np.mean((order[:, :k] == labels[:, None]).any(axis=1))
        hits = (order[:, :k] == labels[:, None]).any(axis=1)
        assert hits[untied].mean() == pytest.approx(
            skm.top_k_accuracy_score(labels[untied], independent_logits[untied], k=k, labels=list(range(10))))
    # ECE: a plain loop over 15 right-closed bins of the softmax's top probability.
    probs = torch.softmax(torch.from_numpy(independent_logits).double(), dim=1).numpy()
    confidence, correct = probs.max(axis=1), predicted == labels
    edges = np.linspace(0, 1, 16)
    ece = sum(np.mean(inside) * abs(correct[inside].mean() - confidence[inside].mean())
              for b in range(15) if (inside := (confidence > edges[b]) & (confidence <= edges[b + 1])).any())
    assert e.calibration is not None and e.calibration.ece == pytest.approx(ece, abs=1e-6)
    # Most confident mistakes: the wrong predictions with the highest probability, in order.
    # The gallery holds the 36 worst (GALLERY_SIZE); the lengths come from the oracle, never from the code.
    wrong = np.flatnonzero(~correct)
    assert len(wrong) > GALLERY_SIZE  # a 2-epoch MLP makes ~300 mistakes: the gallery is full
    expected = wrong[np.argsort(-confidence[wrong], kind="stable")][:GALLERY_SIZE]
    assert [m.index for m in e.mistakes] == expected.tolist()
    assert [m.confidence for m in e.mistakes] == pytest.approx(confidence[expected].tolist(), abs=1e-6)
    assert [(m.true, m.predicted) for m in e.mistakes] == list(zip(labels[expected].tolist(),
                                                                    predicted[expected].tolist(), strict=True))
    # Most confused pairs: the 10 largest off-diagonal cells, ties by true then predicted class.
    confusion = skm.confusion_matrix(labels, predicted, labels=list(range(10)))
    cells = sorted((-int(confusion[t, p]), t, p) for t in range(10) for p in range(10) if t != p and confusion[t, p])
    assert len(cells) >= 10
    assert [(p.true, p.predicted, p.count) for p in e.pairs] == [(t, p, -c) for c, t, p in cells[:10]]


def test_files_hold_the_same_figures(mlp_test_report, mnist) -> None:
    out, _ = mlp_test_report
    e = out.evaluation
    folder = out.out_dir
    assert folder == Path(e.run_dir) / "eval" / "test"
    saved = json.loads((folder / "evaluation.json").read_text())
    assert saved["accuracy"] == e.accuracy and saved["confusion"] == e.confusion.tolist()
    confusion = np.asarray(saved["confusion"])
    assert confusion.sum() == 10_000
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(mnist.test.labels, minlength=10))
    np.testing.assert_allclose(np.asarray(saved["confusion_row_normalized"]).sum(axis=1), 1.0)
    assert (folder / "classification_report.txt").read_text() == e.report.as_text(digits=4)
    rows = (folder / "confusion.txt").read_text().splitlines()[1:]
    np.testing.assert_array_equal([[int(v) for v in row.split()[1:]] for row in rows], confusion)
    for name in ("confusion.png", "mistakes.png", "reliability.png"):
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width > 300, name
    assert cached_evaluation(folder.parent.parent, "test") == saved


def test_html_report_is_self_contained_and_shows_the_numbers(mlp_test_report) -> None:
    out, extra = mlp_test_report
    text = out.files["html"].read_text()
    assert extra.read_text() == text   # --html writes the same page
    page = parse_page(text)
    pngs = assert_self_contained(page)
    assert len(pngs) == 5   # training curves, confusion, mistakes, their saliency, reliability
    e = out.evaluation
    # The page says how the model was made, on its own: settings, status, every epoch.
    made = dict(row for row in table_after(page, "setting")[1:])
    config = json.loads((Path(e.run_dir) / runs.CONFIG_FILE).read_text())
    assert made["status"].startswith("completed: 2 of 2 epochs")
    for key in ("epochs", "batch_size", "optimizer", "lr", "seed", "val_split", "precision"):
        assert made[key.replace("_", " ")] == str(config[key]), key
    epochs = table_after(page, "epoch")
    history = json.loads((Path(e.run_dir) / runs.HISTORY_JSON).read_text())
    assert [row[0] for row in epochs[1:]] == [str(row["epoch"]) for row in history]
    assert epochs[1][1] == f"{history[0]['loss']:.4f}"
    per_class = table_after(page, "class")
    assert per_class[0] == ["class", "precision", "recall", "f1-score", "support"]
    for k in range(10):
        assert per_class[k + 1] == [str(k), f"{e.report.precision[k]:.4f}", f"{e.report.recall[k]:.4f}",
                                    f"{e.report.f1[k]:.4f}", str(e.report.support[k])]
    confusion = table_after(page, "true \\ predicted")
    np.testing.assert_array_equal([[int(v) for v in row[1:]] for row in confusion[1:]], e.confusion)
    summary = dict(row for row in table_after(page, "figure")[1:])
    assert summary["accuracy"] == f"{100 * e.accuracy:.2f}%"
    assert summary["top-3 accuracy"] == f"{100 * e.top_k[3]:.2f}%"
    assert summary["expected calibration error (15 bins)"] == f"{100 * e.calibration.ece:.2f}%"
    assert "(matches)" in summary["test accuracy recorded at training"]


def test_validation_split_is_rebuilt_from_the_config(trained_mlp_run: Path, mnist, tmp_path: Path) -> None:
    run = tmp_path / "mlp"
    shutil.copytree(trained_mlp_run, run)
    out = evaluate_report(run, split="val", device="cpu", dataset=mnist)
    e = out.evaluation
    _, val_idx = train_val_indices(60_000, val_fraction=0.1, seed=0)
    assert e.count == len(val_idx) == 6_000
    history = json.loads((run / runs.HISTORY_JSON).read_text())
    assert e.accuracy == history[-1]["val_accuracy"]   # training's own validation pass of the final weights
    assert e.loss == pytest.approx(history[-1]["val_loss"], rel=1e-5)
    assert {m.index for m in e.mistakes} <= set(val_idx.tolist())
    assert (run / "eval" / "val" / "report.html").is_file()


def test_split_errors(tmp_path: Path, tiny_data_dir_shared: Path) -> None:
    run = fit(TrainConfig.for_model("softmax", epochs=1, device="cpu", data_dir=str(tiny_data_dir_shared)),
              run_dir=tmp_path / "no-val").run_dir
    with pytest.raises(MnistlabError, match="trained without a validation split"):
        evaluate_report(run, split="val", device="cpu")
    with pytest.raises(MnistlabError, match="`split` 'dev' does not exist"):
        evaluate_report(run, split="dev", device="cpu")


def test_html_path_errors_come_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(MnistlabError, match="is a folder"):
        check_html_path(tmp_path)
    with pytest.raises(MnistlabError, match="does not exist"):
        check_html_path(tmp_path / "no" / "such" / "report.html")
    # The run does not even exist: the HTML path is checked first.
    with pytest.raises(MnistlabError, match="`html`"):
        evaluate_report(tmp_path / "missing-run", html=tmp_path / "nowhere" / "r.html")


def test_a_run_directory_of_a_different_model(trained_mlp_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "mislabelled"
    shutil.copytree(trained_mlp_run, run)
    model = json.loads((run / runs.MODEL_FILE).read_text())
    runs.write_json_atomic(run / runs.MODEL_FILE, {**model, "name": "cnn"})
    with pytest.raises(MnistlabError, match="weights do not match model 'cnn'"):
        evaluate_report(run, device="cpu")
    runs.write_json_atomic(run / runs.MODEL_FILE, {**model, "name": "knn", "family": "classical"})
    with pytest.raises(MnistlabError, match="missing for model 'knn'"):
        evaluate_report(run, device="cpu")


def test_cache_is_dropped_when_weights_change(trained_mlp_run: Path, mnist, tmp_path: Path) -> None:
    run = tmp_path / "mlp"
    shutil.copytree(trained_mlp_run, run)
    evaluate_report(run, device="cpu", dataset=mnist)
    assert cached_evaluation(run, "test") is not None
    weights = (run / runs.WEIGHTS_FILE).read_bytes()
    (run / runs.WEIGHTS_FILE).write_bytes(weights[:-4] + bytes(4))   # different weights, same shapes
    assert cached_evaluation(run, "test") is None


def test_decision_value_model_has_no_calibration_or_loss(tmp_path: Path, tiny_data_dir_shared: Path) -> None:
    run = fit(TrainConfig.for_model("sgd", options={"max_iter": 20}, data_dir=str(tiny_data_dir_shared),
                                    threads=1), run_dir=tmp_path / "sgd").run_dir
    out = evaluate_report(run, device="cpu")
    e = out.evaluation
    assert e.score_kind == "decision" and e.loss is None and e.calibration is None
    assert "reliability_png" not in out.files
    page = parse_page(out.files["html"].read_text())
    assert_self_contained(page)
    summary = dict(row for row in table_after(page, "figure")[1:])
    assert summary["loss (cross-entropy)"] == "n/a (no probabilities)"
    # The synthetic data is custom data, not MNIST: no MNIST published figure is set beside its score.
    assert not [key for key in summary if key.startswith("published")]


def test_an_interrupted_run_is_marked_in_its_report_and_listed_with_its_score(tmp_path: Path,
                                                                             tiny_data_dir: Path) -> None:
    from mnistlab.callbacks import Callback
    from mnistlab.data import load_dataset
    from mnistlab.errors import TrainingInterrupted
    from mnistlab.registry import Registry

    class CtrlCAfterFirstEpoch(Callback):
        def on_epoch_end(self, record):
            raise KeyboardInterrupt

    dataset = load_dataset(data_dir=tiny_data_dir)
    run_dir = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        fit(TrainConfig.for_model("softmax", epochs=3, device="cpu"), run_dir=run_dir, dataset=dataset,
            callbacks=[CtrlCAfterFirstEpoch()])
    out = evaluate_report(run_dir, device="cpu", dataset=dataset)
    page = parse_page(out.files["html"].read_text())
    made = dict(row for row in table_after(page, "setting")[1:])
    assert made["status"] == "interrupted: 1 of 3 epochs completed"
    with Registry.open(tmp_path / "registry.sqlite") as registry:
        registry.record_run(run_dir)
        registry.record_evaluation(run_dir, out.evaluation.to_dict(), report=out.html)
        listed = registry.list_runs()[0]
    # One source of truth: the listing shows the evaluation's score and the model's parameter count.
    assert listed.figures()["test_accuracy"] == out.evaluation.accuracy
    assert listed.metrics["params"] == 7_850


def test_an_evaluation_round_trips_through_its_json(mlp_test_report) -> None:
    """evaluation.json is read back as the one Evaluation type (what runs compare uses), losing nothing."""
    from mnistlab.analysis import Evaluation

    out, _ = mlp_test_report
    saved = json.loads(out.files["json"].read_text())
    again = Evaluation.from_dict(saved)
    assert again.to_dict() == saved
    e = out.evaluation
    assert again.accuracy == e.accuracy and np.array_equal(again.confusion, e.confusion)
    assert np.array_equal(again.report.f1, e.report.f1) and again.report.as_text() == e.report.as_text()
    assert again.calibration is not None and again.calibration.ece == e.calibration.ece
    assert again.pairs == e.pairs and again.mistakes == e.mistakes


# ------------------------------------------------------------------------------ error paths, end to end
@pytest.fixture(scope="module")
def tiny_softmax_run(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir_shared: Path) -> Path:
    """A softmax run (fp32, 25% held out) on the 256-image synthetic set; tests edit copies of it."""
    config = TrainConfig.for_model("softmax", epochs=1, val_split=0.25, device="cpu", precision="fp32",
                                   data_dir=str(tiny_data_dir_shared))
    return fit(config, run_dir=tmp_path_factory.mktemp("tiny") / "softmax").run_dir


def _copy(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def test_evaluate_split_train_scores_every_training_image(capsys, tiny_softmax_run: Path,
                                                          tiny_data_dir_shared: Path) -> None:
    from mnistlab.data import load_dataset
    from tests.clitools import run_cli
    from tests.reference import plain_input, read_safetensors

    code, out, err = run_cli(capsys, "evaluate", str(tiny_softmax_run), "--split", "train", "--json",
                             "--device", "cpu")
    assert code == 0, err
    result = json.loads(out)
    train = load_dataset(data_dir=tiny_data_dir_shared).train
    # Oracle: the dense layer from the saved weights, by hand, over all 256 training images (val included).
    weights = read_safetensors(tiny_softmax_run / runs.WEIGHTS_FILE)
    logits = plain_input(train.images).flatten(1) @ weights["1.weight"].T + weights["1.bias"]
    labels = torch.from_numpy(train.labels.astype(np.int64))
    assert result["split"] == "train" and result["count"] == 256
    assert result["accuracy"] == (logits.argmax(1) == labels).double().mean().item()
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


def test_an_empty_validation_split_is_one_line(capsys, tiny_softmax_run: Path, tmp_path: Path) -> None:
    from tests.clitools import assert_one_line_error, run_cli

    run = _copy(tiny_softmax_run, tmp_path / "run")
    config = json.loads((run / runs.CONFIG_FILE).read_text())
    runs.write_json_atomic(run / runs.CONFIG_FILE, {**config, "val_split": 0.001})  # 0.1% of 256: no image
    assert len(train_val_indices(256, val_fraction=0.001, seed=0)[1]) == 0
    code, _, err = run_cli(capsys, "evaluate", str(run), "--split", "val", "--device", "cpu")
    assert_one_line_error(code, err, f"{run}: its val split is empty (val_split 0.001 of 256 images); "
                                     "use --split test or train")


def test_a_class_count_mismatch_is_one_line(capsys, tiny_softmax_run: Path, tmp_path: Path) -> None:
    from tests.clitools import assert_one_line_error, run_cli

    run = _copy(tiny_softmax_run, tmp_path / "run")
    model = json.loads((run / runs.MODEL_FILE).read_text())
    runs.write_json_atomic(run / runs.MODEL_FILE, {**model, "class_names": ["a", "b", "c", "d", "e"]})
    code, _, err = run_cli(capsys, "evaluate", str(run), "--device", "cpu")
    assert_one_line_error(code, err, f"{run}: the model has 5 classes but", "has 10; is this run from a "
                                                                            "different dataset?")


def test_non_finite_scores_are_one_line(capsys, tiny_softmax_run: Path, tmp_path: Path) -> None:
    from mnistlab.models import weights_bytes
    from tests.clitools import assert_one_line_error, run_cli

    run = _copy(tiny_softmax_run, tmp_path / "run")
    model, _ = load_trained_model(run, device="cpu")
    with torch.no_grad():
        model[1].bias[3] = float("nan")   # what a diverged run's weights look like
    runs.write_bytes_atomic(run / runs.WEIGHTS_FILE, weights_bytes(model))
    code, _, err = run_cli(capsys, "evaluate", str(run), "--device", "cpu")
    assert_one_line_error(code, err, f"{run}: the model outputs NaN or infinite scores (its weights diverged); "
                                     "retrain it with a lower --lr")


def test_html_escapes_run_paths_and_class_names(tiny_softmax_run: Path, tmp_path: Path) -> None:
    """Run paths and class names come from the user: <, & and quotes are shown as text, never read as HTML."""
    run = _copy(tiny_softmax_run, tmp_path / 'run <b>&amp; "q" \'s\'')
    names = ["<script>alert(1)</script>", "a & b", 'say "hi"', "it's", "x<y", "&lt;", "6", "7", "8", "9"]
    model = json.loads((run / runs.MODEL_FILE).read_text())
    runs.write_json_atomic(run / runs.MODEL_FILE, {**model, "class_names": names})
    out = evaluate_report(run, device="cpu")
    text = out.files["html"].read_text()
    assert "<script" not in text
    # The run's name shows, escaped; its raw form (which a browser would read as a <b> tag) never does.
    assert html.escape(run.name, quote=True) in text and run.name not in text
    page = parse_page(text)
    assert_self_contained(page)
    per_class = table_after(page, "class")
    assert [row[0] for row in per_class[1:11]] == names   # the parser unescapes: the names come back exact


def test_evaluate_after_the_data_moved(capsys, tmp_path: Path) -> None:
    data = write_dataset_dir(tmp_path / "data")
    run = fit(TrainConfig.for_model("softmax", epochs=1, device="cpu"), run_dir=tmp_path / "run",
              dataset=load_dataset(data_dir=data)).run_dir
    data.rename(tmp_path / "moved")
    registry = str(tmp_path / "reg.sqlite")
    code, _, err = run_cli(capsys, "evaluate", str(run), "--registry", registry)
    assert_one_line_error(code, err, "pass --data-dir")
    code, out, err = run_cli(capsys, "evaluate", str(run), "--json", "--registry", registry,
                             "--data-dir", str(tmp_path / "moved"))
    assert code == 0, err
    assert json.loads(out)["count"] == 64


def test_scoring_on_other_data_is_labelled_and_never_the_runs_score(capsys, tmp_path: Path,
                                                                    tiny_data_dir_shared: Path) -> None:
    """evaluate --data-dir with files other than the run's: said in every output and kept out of runs list."""
    from mnistlab.cli import main
    from mnistlab.registry import Registry
    from tests.conftest import write_dataset_dir

    registry = tmp_path / "registry.sqlite"
    run = tmp_path / "run"
    assert main(["train", "softmax", "--epochs", "1", "--device", "cpu", "--data-dir", str(tiny_data_dir_shared),
                 "--out", str(run), "--registry", str(registry)]) == 0
    capsys.readouterr()
    other = write_dataset_dir(tmp_path / "other", seed=5)          # same format, other images
    assert main(["evaluate", str(run), "--device", "cpu", "--data-dir", str(other), "--registry", str(registry),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["same_data"] is False
    assert main(["evaluate", str(run), "--device", "cpu", "--data-dir", str(other), "--registry",
                 str(registry)]) == 0
    out = capsys.readouterr().out
    assert "other data:" in out and "(matches)" not in out
    [other_folder] = (run / "eval").glob("test-other-*")        # never over the run's own evaluation
    assert "OTHER DATA" in (other_folder / "report.html").read_text()
    assert main(["evaluate", str(run), "--device", "cpu", "--registry", str(registry), "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["same_data"] is True and own["html"] == str(run / "eval" / "test" / "report.html")
    assert "OTHER DATA" not in (run / "eval" / "test" / "report.html").read_text()
    assert main(["runs", "show", str(run), "--registry", str(registry)]) == 0
    shown = capsys.readouterr().out
    assert "OTHER" in shown and " own " in shown
    with Registry.open(registry) as opened:
        [record] = opened.list_runs()
    assert record.latest_evaluation("test").accuracy == own["accuracy"]
    assert record.figures()["test_accuracy"] == json.loads((run / "metrics.json").read_text())["test_accuracy"]



def test_an_interrupted_run_scored_on_other_data_is_labelled_too(tmp_path: Path, tiny_data_dir: Path) -> None:
    from mnistlab.callbacks import Callback
    from mnistlab.data import load_dataset
    from mnistlab.errors import TrainingInterrupted
    from tests.conftest import write_dataset_dir

    class CtrlC(Callback):
        def on_epoch_end(self, record):
            raise KeyboardInterrupt

    run_dir = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        fit(TrainConfig.for_model("softmax", epochs=3, device="cpu"), run_dir=run_dir,
            dataset=load_dataset(data_dir=tiny_data_dir), callbacks=[CtrlC()])
    assert set(json.loads((run_dir / "metrics.json").read_text())["data_sha256"]) == {"train", "test"}
    other = load_dataset(data_dir=write_dataset_dir(tmp_path / "other", seed=9))
    assert evaluate_report(run_dir, device="cpu", dataset=other).evaluation.same_data is False
