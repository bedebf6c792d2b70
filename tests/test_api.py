"""mnistlab's Python API: train -> Run, load by path or registry id, history, evaluate, predict, callbacks,
users' own models. Oracles are independent of the code under test: a plain torch forward of the weights read
from the safetensors file, numpy accuracy, the registry's own rows, files on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import mnistlab
from mnistlab.data import load_dataset
from mnistlab.errors import MnistlabError


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-registry") / "registry.sqlite"


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir_shared: Path, registry: Path) -> mnistlab.Run:
    """An MLP trained 3 epochs through the API on the tiny synthetic dataset, in fp32 on the CPU."""
    out = tmp_path_factory.mktemp("api") / "mlp"
    return mnistlab.train("mlp", epochs=3, batch_size=32, data_dir=tiny_data_dir_shared, val_split=0.25,
                          device="cpu", precision="fp32", run_dir=out, registry=registry, progress=False)


def plain_forward(run_path: Path, images: np.ndarray) -> np.ndarray:
    """Logits from a hand-written MLP forward of the weights in model.safetensors (not mnistlab's model)."""
    weights = load_file(str(run_path / "model.safetensors"))
    x = torch.tensor(images, dtype=torch.float32).reshape(len(images), -1) / 255.0
    for i, layer in enumerate(("1", "3", "5")):
        x = x @ weights[f"{layer}.weight"].T + weights[f"{layer}.bias"]
        if i < 2:
            x = torch.relu(x)
    return x.numpy()


def test_train_returns_a_run_with_keras_style_history(api_run: mnistlab.Run, tiny_data_dir_shared: Path) -> None:
    assert api_run.path.is_dir() and api_run.status == "completed" and api_run.name == "mlp"
    history = api_run.history
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(values) == 3 for values in history.values())
    assert history["lr"] == [pytest.approx(1e-3)] * 3          # RMSprop's Keras default, constant schedule
    assert [record.epoch for record in api_run.epochs] == [1, 2, 3]
    # The recorded test accuracy is what a plain forward of the saved weights gives on the test split.
    test = load_dataset(data_dir=tiny_data_dir_shared).test
    oracle = float(np.mean(plain_forward(api_run.path, test.images).argmax(1) == test.labels))
    assert api_run.metrics["test_accuracy"] == pytest.approx(oracle, abs=1e-12)
    assert api_run.config.epochs == 3 and api_run.config.batch_size == 32
    assert isinstance(api_run.model, nn.Module)


def test_the_run_is_in_the_registry_and_loads_by_id(api_run: mnistlab.Run, registry: Path) -> None:
    from mnistlab.registry import Registry

    assert api_run.id is not None
    with Registry.open(registry, create=False) as opened:
        record = opened.get(api_run.id)
    assert Path(record.path) == api_run.path.resolve()
    assert record.metrics["test_accuracy"] == api_run.metrics["test_accuracy"]
    again = mnistlab.load(api_run.id, registry=registry)
    assert again.path == Path(record.path) and again.history == api_run.history
    assert mnistlab.load(str(api_run.id), registry=registry).path == again.path
    with pytest.raises(MnistlabError, match="no run with id 999"):
        mnistlab.load(999, registry=registry)
    with pytest.raises(MnistlabError, match="no such run directory"):
        mnistlab.load(api_run.path / "missing")


def test_evaluate_and_predict_agree_with_the_plain_forward(api_run: mnistlab.Run, tiny_data_dir_shared: Path,
                                                             registry: Path) -> None:
    test = load_dataset(data_dir=tiny_data_dir_shared).test
    evaluation = api_run.evaluate(registry=registry)
    oracle_logits = plain_forward(api_run.path, test.images)
    assert evaluation.accuracy == pytest.approx(float(np.mean(oracle_logits.argmax(1) == test.labels)), abs=1e-12)
    assert evaluation.confusion.sum() == len(test) and evaluation.registry_ids is not None
    page = evaluation.to_html()
    assert page.startswith("<!DOCTYPE html>") and "mlp" in page
    # predict takes one array, a stack of arrays, or a list; 28x28 uint8 arrays are used as they are.
    predictions = api_run.predict(test.images[:5])
    assert [p.label for p in predictions] == oracle_logits[:5].argmax(1).tolist()
    assert api_run.predict(test.images[0])[0].label == predictions[0].label
    assert [p.label for p in api_run.predict(list(test.images[:2]))] == [p.label for p in predictions[:2]]
    shifted = oracle_logits[:5] - oracle_logits[:5].max(1, keepdims=True)
    oracle_probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    np.testing.assert_allclose([p.probabilities for p in predictions], oracle_probs, rtol=1e-5, atol=1e-7)


def test_predict_reads_image_files_and_pil_images(api_run: mnistlab.Run, tmp_path: Path) -> None:
    from PIL import Image

    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255                  # a "1": white on black, already MNIST-like
    path = tmp_path / "one.png"
    Image.fromarray(digit).save(path)
    from_file = api_run.predict(path)[0]
    from_pil = api_run.predict(Image.fromarray(digit))[0]
    assert from_file.probabilities == pytest.approx(from_pil.probabilities)
    with pytest.raises(MnistlabError, match="no such file"):
        api_run.predict(tmp_path / "missing.png")


def test_a_callback_can_stop_the_run_and_sees_every_epoch(tmp_path: Path, tiny_data_dir_shared: Path) -> None:
    seen: list[int] = []

    def stop_after_two(record: mnistlab.EpochRecord) -> bool:
        seen.append(record.epoch)
        return record.epoch == 2

    history = mnistlab.History()
    run = mnistlab.train("softmax", epochs=5, data_dir=tiny_data_dir_shared, device="cpu", run_dir=tmp_path / "r",
                         callbacks=[mnistlab.LambdaCallback(on_epoch_end=stop_after_two), history],
                         progress=False, registry=False)
    assert seen == [1, 2] and run.status == "stopped" and run.metrics["stopped_after_epoch"] == 2
    assert len(run.history["loss"]) == 2 and run.metrics["epochs_completed"] == 2
    assert history.history["loss"] == run.history["loss"]            # the callback got the same records
    assert run.id is None                                            # registry=False: not recorded
    assert "test_accuracy" in run.metrics                            # a stopped run is scored like a finished one


def test_progress_can_be_switched_off_or_printed_as_lines(tmp_path: Path, tiny_data_dir_shared: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    common = {"epochs": 2, "data_dir": tiny_data_dir_shared, "device": "cpu", "registry": False}
    mnistlab.train("softmax", run_dir=tmp_path / "quiet", progress=False, **common)
    assert capsys.readouterr().out == ""
    mnistlab.train("softmax", run_dir=tmp_path / "lines", progress="lines", **common)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out


def test_a_custom_model_trains_reloads_evaluates_and_predicts(tmp_path: Path, tiny_data_dir_shared: Path) -> None:
    def tiny_convnet(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6,
                                                                                                      num_classes))

    run = mnistlab.train(tiny_convnet, epochs=2, data_dir=tiny_data_dir_shared, device="cpu", lr=3e-3,
                         run_dir=tmp_path / "custom", progress=False, registry=False)
    assert run.name == "tiny_convnet" and run.metrics["params"] == 4 * 9 + 4 + 144 * 10 + 10
    reloaded = mnistlab.load(run.path)
    assert reloaded.summary().total_params == run.metrics["params"]
    assert reloaded.score().accuracy == pytest.approx(run.metrics["test_accuracy"], abs=1e-12)
    test = load_dataset(data_dir=tiny_data_dir_shared).test
    assert len(reloaded.predict(test.images[:3])) == 3
    # A fresh process that has not registered the model gets one line saying how to fix it.
    code = ("import mnistlab, sys\n"
            "try:\n    mnistlab.load(sys.argv[1]).model\n"
            "except mnistlab.MnistlabError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code, str(run.path)], capture_output=True, text=True, check=True)
    assert "register_model" in out.stdout and "tiny_convnet" in out.stdout


def test_register_model_refuses_builtin_names_and_non_modules() -> None:
    with pytest.raises(MnistlabError, match="built-in"):
        mnistlab.register_model("cnn")(lambda num_classes=10: nn.Linear(784, num_classes))

    @mnistlab.register_model("not_a_module", replace=True)
    def broken(num_classes: int = 10) -> nn.Module:
        return "nope"  # type: ignore[return-value]

    with pytest.raises(MnistlabError, match=r"not a torch nn\.Module"):
        mnistlab.models.build("not_a_module")


def test_models_build_and_summary_from_the_api() -> None:
    summary = mnistlab.models.summary("cnn")
    assert summary.total_params == 61_514
    text = str(summary)
    assert "Total params: 61,514" in text and "conv2d_1 (Conv2d)" in text
    a, b = mnistlab.models.build("mlp", seed=3), mnistlab.models.build("mlp", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_datasets_load_gives_uint8_arrays(tiny_data_dir_shared: Path) -> None:
    mnist = mnistlab.datasets.load("mnist")
    assert mnist.train.images.shape == (60_000, 28, 28) and mnist.train.images.dtype == np.uint8
    assert mnist.test.labels.shape == (10_000,) and mnist.checksums == "verified"
    tiny = mnistlab.datasets.load(data_dir=tiny_data_dir_shared)
    assert len(tiny.train) == 256 and len(tiny.test) == 64


def test_a_failed_train_leaves_no_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MnistlabError):
        mnistlab.train("mlp", epochs=1, data_dir=tmp_path / "no-such-folder", registry=False, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_import_mnistlab_is_lazy() -> None:
    code = ("import sys, json, mnistlab\n"
            "before = 'torch' in sys.modules\n"
            "mnistlab.datasets\n"
            "print(json.dumps([before, 'torch' in sys.modules, sorted(mnistlab.__all__)[:3]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after_datasets, _ = json.loads(out)
    assert before is False and after_datasets is False
    with pytest.raises(AttributeError):
        mnistlab.no_such_name  # noqa: B018


def test_digits_always_mean_a_registry_id(api_run: mnistlab.Run, registry: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`evaluate 1` and `runs rm 1` mean the same run even when a folder called 1 exists; ./1 is the folder."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(api_run.path, tmp_path / str(api_run.id))
    assert mnistlab.load(str(api_run.id), registry=registry).path == api_run.path.resolve()
    assert mnistlab.load(f"./{api_run.id}", registry=registry).path == Path(f"./{api_run.id}")
    with pytest.raises(MnistlabError, match="no run with id"):
        mnistlab.load(987, registry=registry)
    with pytest.raises(MnistlabError, match="no such run directory"):
        mnistlab.load("²")                    # a Unicode digit is not an id: a path, and there is none
    with pytest.raises(MnistlabError, match="registry=False"):
        mnistlab.load(1, registry=False)


def test_ctrl_c_is_not_swallowed_by_except_exception(tmp_path: Path, tiny_data_dir_shared: Path) -> None:
    def interrupt(record: mnistlab.EpochRecord) -> None:
        raise KeyboardInterrupt

    caught = None
    try:
        mnistlab.train("softmax", epochs=3, data_dir=tiny_data_dir_shared, device="cpu", run_dir=tmp_path / "r",
                       callbacks=[mnistlab.LambdaCallback(on_epoch_end=interrupt)], progress=False, registry=False)
    except Exception:
        caught = "swallowed"
    except KeyboardInterrupt as stop:
        caught = stop
    assert isinstance(caught, mnistlab.TrainingInterrupted) and caught.epochs_completed == 1


def test_a_run_that_fails_after_an_epoch_says_so_and_is_recorded(tmp_path: Path, tiny_data_dir_shared: Path,
                                                                 registry: Path) -> None:
    def broken(record: mnistlab.EpochRecord) -> None:
        if record.epoch == 2:
            raise ValueError("a bug in the user's callback")

    with pytest.raises(ValueError, match="user's callback"):
        mnistlab.train("softmax", epochs=3, data_dir=tiny_data_dir_shared, device="cpu", run_dir=tmp_path / "f",
                       callbacks=[mnistlab.LambdaCallback(on_epoch_end=broken)], progress=False, registry=registry)
    run = mnistlab.load(tmp_path / "f")
    assert run.status == "failed" and run.metrics["epochs_completed"] == 2
    assert run.metrics["device"] == "cpu" and run.metrics["precision"] in ("fp32", "bf16")
    from mnistlab.registry import Registry

    with Registry.open(registry, create=False) as opened:
        assert any(Path(r.path) == run.path.resolve() and r.status == "failed" for r in opened.all_runs())


def test_the_model_of_a_fresh_run_is_the_saved_one_in_eval_mode(api_run: mnistlab.Run) -> None:
    model = api_run.model
    assert not model.training and next(model.parameters()).device.type == "cpu"


def test_bad_arguments_refused_before_any_folder_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tiny_data_dir_shared: Path, api_run: mnistlab.Run) -> None:
    monkeypatch.chdir(tmp_path)
    for kwargs, message in (({"progress": "bogus"}, "progress 'bogus'"),
                            ({"callbacks": [print]}, "must be mnistlab.Callback objects")):
        with pytest.raises(MnistlabError, match=message):
            mnistlab.train("softmax", data_dir=tiny_data_dir_shared, registry=False, **kwargs)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MnistlabError, match="not int"):
        api_run.predict(3)
    as_tensor = api_run.predict(torch.zeros(28, 28, dtype=torch.uint8) + torch.eye(28, dtype=torch.uint8) * 255)
    assert len(as_tensor) == 1                 # a torch tensor is read like its numpy array


def test_re_running_a_notebook_cell_re_registers_the_same_model() -> None:
    for _ in range(2):   # the same definition evaluated twice, as a re-run cell does
        exec("from torch import nn\n@mnistlab.register_model('rerun_cell')\n"
             "def rerun_cell(num_classes=10):\n    return nn.Linear(784, num_classes)\n",
             {"mnistlab": mnistlab, "__name__": "__main__"})


def test_a_new_run_in_a_deleted_runs_folder_gets_a_new_registry_row(tmp_path: Path, tiny_data_dir_shared: Path
                                                                       ) -> None:
    """The folder of run A is deleted and run B is trained at the same path: B must not inherit A's id (and A's
    evaluations), or `runs show ID` would describe a training that never happened."""
    import shutil

    registry = tmp_path / "registry.db"
    out = tmp_path / "run"
    first = mnistlab.train("softmax", epochs=1, batch_size=128, data_dir=tiny_data_dir_shared, device="cpu",
                           precision="fp32", run_dir=out, registry=registry, progress=False)
    first.evaluate(registry=registry)
    shutil.rmtree(out)
    second = mnistlab.train("mlp", epochs=1, batch_size=128, data_dir=tiny_data_dir_shared, device="cpu",
                            precision="fp32", run_dir=out, registry=registry, progress=False)
    assert first.id is not None and second.id is not None and second.id != first.id
    with pytest.raises(mnistlab.MnistlabError):
        mnistlab.load(first.id, registry=registry)
    from mnistlab.registry import Registry

    with Registry.open(registry) as opened:
        record = opened.get(second.id)
        assert record.model == "mlp" and record.evaluations == ()
        assert opened.count() == 1


# ------------------------------------------------------------------------------------ --weights best|last
@pytest.fixture(scope="module")
def early_stopped(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir_shared: Path) -> mnistlab.Run:
    """A run whose best epoch (by val_accuracy) is not its last, so best and last weights differ."""
    out = tmp_path_factory.mktemp("es") / "mlp"
    return mnistlab.train("mlp", epochs=12, batch_size=32, data_dir=tiny_data_dir_shared, val_split=0.25,
                          device="cpu", precision="fp32", run_dir=out, registry=False, progress=False, early_stop=2,
                          monitor="val_accuracy")


def test_evaluate_and_predict_use_best_weights_by_default_and_last_on_request(early_stopped: mnistlab.Run,
                                                                              tiny_data_dir_shared: Path) -> None:
    from safetensors.torch import load_file

    path = early_stopped.path
    best_epoch = json.loads((path / "checkpoint" / "manifest.json").read_text())["epoch"]  # the stop epoch
    assert (path / "best.safetensors").is_file()
    by_default = mnistlab.load(path, registry=False)
    last = mnistlab.load(path, registry=False, weights="last")
    assert by_default.weights_used == "best" and last.weights_used == "last"
    test = mnistlab.datasets.load(data_dir=tiny_data_dir_shared).test

    def accuracy_of(file: str) -> float:  # oracle: a plain fp32 forward of that weights file
        model = mnistlab.models.build("mlp")
        model.load_state_dict(load_file(str(path / file)))
        with torch.no_grad():
            logits = model(torch.from_numpy(test.images).float().div(255).unsqueeze(1))
        return float((logits.argmax(1).numpy() == test.labels).mean())

    best_eval = by_default.evaluate(registry=False)
    last_eval = last.evaluate(registry=False)
    assert best_eval.weights_used == "best" and best_eval.best is not None and best_eval.best["epoch"] < best_epoch
    assert best_eval.accuracy == pytest.approx(accuracy_of("best.safetensors"), abs=1e-12)
    assert last_eval.accuracy == pytest.approx(accuracy_of("model.safetensors"), abs=1e-12)
    assert last_eval.weights_used == "last" and last_eval.accuracy == early_stopped.metrics["test_accuracy"]
    # Each choice has its own folder: neither overwrites the other.
    assert best_eval.files["json"].parent.name == "test" and last_eval.files["json"].parent.name == "test-last"
    from mnistlab.analysis import cached_evaluation

    assert cached_evaluation(path, "test")["weights_used"] == "best"
    assert cached_evaluation(path, "test", weights="last")["weights_used"] == "last"
    best_model = by_default.model
    reference = load_file(str(path / "best.safetensors"))
    assert all(torch.equal(best_model.state_dict()[k], reference[k]) for k in reference)
    pred = by_default.predict(test.images[:5])
    assert [p.label for p in pred] == [p.label for p in by_default.predictor().predict(test.images[:5])]
    assert by_default.predictor().run.weights_used == "best"


def test_weights_best_of_a_run_without_them_is_one_line(api_run: mnistlab.Run, capsys, tmp_path: Path) -> None:
    from tests.clitools import assert_one_line_error, run_cli

    with pytest.raises(MnistlabError, match="kept no best-epoch weights"):
        mnistlab.load(api_run.path, registry=False, weights="best")
    assert mnistlab.load(api_run.path, registry=False).weights_used == "last"   # auto falls back
    code, _, err = run_cli(capsys, "evaluate", str(api_run.path), "--weights", "best", "--registry",
                             str(tmp_path / "r.db"))
    assert_one_line_error(code, err, "kept no best-epoch weights", "--weights last")


def test_evaluate_cli_says_which_weights(early_stopped: mnistlab.Run, capsys, tmp_path: Path) -> None:
    from tests.clitools import run_cli

    registry = str(tmp_path / "r.db")
    code, out, err = run_cli(capsys, "evaluate", str(early_stopped.path), "--registry", registry)
    assert code == 0, err
    assert "weights: best (epoch" in out and "val_accuracy" in out and "recorded at training" not in out
    code, out, err = run_cli(capsys, "evaluate", str(early_stopped.path), "--weights", "last", "--registry", registry)
    assert code == 0, err
    assert "weights: last (epoch" in out and "recorded at training: accuracy" in out and "(matches)" in out


def test_predict_export_and_onnx_follow_the_weights_choice(early_stopped: mnistlab.Run, capsys, tmp_path: Path,
                                                           tiny_data_dir_shared: Path) -> None:
    from PIL import Image

    from mnistlab.export import read_metadata
    from mnistlab.predict import open_predictor
    from tests.clitools import run_cli

    path = early_stopped.path
    test = mnistlab.datasets.load(data_dir=tiny_data_dir_shared).test
    image = tmp_path / "digit.png"
    Image.fromarray(test.images[0]).save(image)
    registry = str(tmp_path / "r.db")
    code, out, err = run_cli(capsys, "predict", str(path), str(image), "--json", "--backend", "torch",
                             "--registry", registry)
    assert code == 0, err
    assert json.loads(out)["weights"] == "best"
    code, out, err = run_cli(capsys, "predict", str(path), str(image), "--json", "--backend", "torch",
                             "--weights", "last", "--registry", registry)
    assert code == 0, err
    assert json.loads(out)["weights"] == "last"
    code, out, err = run_cli(capsys, "predict", str(path), str(image), "--backend", "torch", "--registry", registry)
    assert code == 0 and "using the run's best weights" in err
    # The ONNX export of each choice holds those weights: its logits are those weights' fp32 forward.
    best_onnx = open_predictor(path, backend="onnx")
    last_onnx = open_predictor(path, backend="onnx", weights="last")
    assert best_onnx.path.name == "model-best.onnx" and last_onnx.path.name == "model.onnx"
    assert read_metadata(best_onnx.path)["weights_used"].startswith("best (epoch ")
    assert read_metadata(last_onnx.path)["weights_sha256"] == runs_sha(path / "model.safetensors")
    assert read_metadata(best_onnx.path)["weights_sha256"] == runs_sha(path / "best.safetensors")
    for file, onnx in (("best.safetensors", best_onnx), ("model.safetensors", last_onnx)):
        model = mnistlab.models.build("mlp")
        model.load_state_dict(load_file(str(path / file)))
        with torch.no_grad():
            expected = model(torch.from_numpy(test.images).float().div(255).unsqueeze(1)).numpy()
        assert np.abs(onnx.logits(test.images) - expected).max() <= 1e-4
    with pytest.raises(MnistlabError, match="weights fixed"):
        open_predictor(best_onnx.path, weights="last")


def runs_sha(file: Path) -> str:
    from mnistlab.runs import file_sha256

    return file_sha256(file)
