"""ONNX export: every network and the linear baselines export, onnxruntime matches torch on all 10,000 test
images, the torch-free runtime (predict/serve) never loads torch, bad files are one line, metadata and the
model card say what they should, and the card's onnxruntime example runs."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnistlab.errors import MnistlabError
from tests.clitools import assert_one_line_error, run_cli

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SRC = Path(__file__).resolve().parents[1] / "src"
README = Path(__file__).resolve().parents[1] / "README.md"


def _env() -> dict[str, str]:
    """The child's environment: this checkout's sources first (as the parent test process has them)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def _slice(mnist, n: int):
    """MNIST with only the first ``n`` training images (the test split stays whole, for parity)."""
    from mnistlab.data import Split

    train = Split(mnist.train.images[:n], mnist.train.labels[:n])
    return dataclasses.replace(mnist, splits={**mnist.splits, "train": train})


def _fit(model: str, run_dir: Path, dataset, **settings) -> Path:
    from mnistlab.config import TrainConfig
    from mnistlab.training import fit

    fit(TrainConfig.for_model(model, device="cpu", **settings), run_dir=run_dir, dataset=dataset)
    return run_dir


def tiny_custom(num_classes: int = 10):
    """A registered custom network (LayerNorm and GELU: ops the built-in models do not use)."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.LayerNorm(784), nn.Linear(784, 32), nn.GELU(), nn.Linear(32, num_classes))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mnist, trained_cnn_run: Path, trained_mlp_run: Path
         ) -> dict[str, Path]:
    """One trained run per network kind: the session's cnn and mlp, and 1-epoch softmax, fast, best and custom
    runs on 6,000 training images."""
    from mnistlab.models import register_model

    register_model("tiny_custom", replace=True, epochs=1, batch_size=128)(tiny_custom)
    root = tmp_path_factory.mktemp("export-runs")
    small = _slice(mnist, 6000)
    return {
        "cnn": trained_cnn_run, "mlp": trained_mlp_run,
        "softmax": _fit("softmax", root / "softmax", small, epochs=1),
        "fast": _fit("fast", root / "fast", small, epochs=1, precision="fp32"),
        "best": _fit("best", root / "best", small, epochs=1, precision="fp32"),
        "tiny_custom": _fit("tiny_custom", root / "custom", small, epochs=1),
    }


@pytest.fixture(scope="module")
def exported(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each run exported (with its model card) into its own folder."""
    import mnistlab

    out = tmp_path_factory.mktemp("exported")
    files = {}
    for name, run_dir in runs.items():
        (out / name).mkdir()
        files[name] = mnistlab.load(run_dir).export(out / name / "model.onnx").path
    return files


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", ["softmax", "mlp", "cnn", "fast", "best", "tiny_custom"])
def test_onnxruntime_matches_torch_on_every_test_image(name: str, runs, exported, mnist) -> None:
    """max |ORT - torch fp32| <= 1e-4 on all 10,000 test logits and the same argmax on every image; for an fp32
    run that is also the accuracy recorded at training."""
    from mnistlab.inference import predict_logits
    from mnistlab.predict import OnnxPredictor, Predictor

    loaded = Predictor(runs[name])
    torch_logits = predict_logits(loaded.model, mnist.test.images, precision="fp32").numpy()
    onnx_logits = OnnxPredictor(exported[name]).logits(mnist.test.images)
    assert onnx_logits.shape == torch_logits.shape == (10_000, 10)
    assert float(np.max(np.abs(onnx_logits - torch_logits))) <= 1e-4
    assert np.array_equal(onnx_logits.argmax(1), torch_logits.argmax(1))
    if loaded.precision == "fp32":
        metrics = json.loads((runs[name] / "metrics.json").read_text())
        accuracy = float(np.mean(onnx_logits.argmax(1) == mnist.test.labels))
        assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-12)


def test_bf16_run_exports_its_fp32_master_weights(runs, exported, tmp_path: Path, mnist) -> None:
    """A bf16-trained run exports the fp32 master weights: the file's metadata says so, and the run's own
    bf16-autocast scoring differs from the file (and from torch fp32) by bf16 rounding (8 significant bits),
    by far more than the 1e-4 the parity test allows, yet agrees on almost every argmax."""
    from mnistlab.predict import OnnxPredictor, Predictor

    run_dir, path = runs["mlp"], exported["mlp"]
    scored = Predictor(run_dir)
    if scored.precision != "bf16":  # the session's MLP trains in bf16 where the CPU has it natively
        run_dir = _fit("mlp", tmp_path / "bf16", _slice(mnist, 6000), epochs=1, precision="bf16")
        scored = Predictor(run_dir)
        if scored.precision != "bf16":
            pytest.skip("this CPU has no native bf16: runs train in fp32")
        import mnistlab

        path = mnistlab.load(run_dir).export(tmp_path / "bf16.onnx", card=False).path
    onnx_model = OnnxPredictor(path)
    assert (onnx_model.metadata["trained_precision"], onnx_model.metadata["exported_precision"]) == ("bf16", "fp32")
    ort = onnx_model.logits(mnist.test.images)
    bf16 = scored.network.logits(mnist.test.images).numpy()
    gap = np.abs(ort - bf16)
    assert float(gap.max()) > 1e-3
    assert float(np.max(gap / np.maximum(np.abs(ort), 1.0))) < 0.05
    assert float(np.mean(ort.argmax(1) == bf16.argmax(1))) > 0.99


# --------------------------------------------------------------------------------------- classical models
@pytest.fixture(scope="module")
def classical_runs(tmp_path_factory: pytest.TempPathFactory, mnist) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classical")
    return {name: _fit(name, root / name, mnist, options={"max_train": 3000})
            for name in ("sgd", "logreg", "knn")}


@pytest.mark.parametrize("name", ["sgd", "logreg"])
def test_linear_baselines_export_as_matmul_add(name: str, classical_runs, tmp_path: Path, mnist) -> None:
    """sgd/logreg: a Flatten + MatMul + Add graph whose logits are the model's decision values (to 1e-4) and
    whose argmax is the class mnistlab's numpy scorer predicts, on all 10,000 test images."""
    from mnistlab.baselines import flatten_scaled, linear_scores, load_classical_model
    from mnistlab.export import export_run
    from mnistlab.predict import OnnxPredictor

    path = export_run(classical_runs[name], out=tmp_path / f"{name}.onnx").path
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "Fitted with scikit-learn" in card and "| 9 |" in card and "max_train=3000" in card
    assert [node.op_type for node in onnx.load(str(path)).graph.node] == ["Flatten", "MatMul", "Add"]
    model, _ = load_classical_model(classical_runs[name])
    decision = linear_scores(flatten_scaled(mnist.test.images), model.arrays["coef"], model.arrays["intercept"])
    got = OnnxPredictor(path).logits(mnist.test.images)
    assert float(np.max(np.abs(got - decision))) <= 1e-4
    assert np.array_equal(got.argmax(1), model.scores(mnist.test.images).argmax(1))


def test_other_classical_models_refuse_in_one_line(classical_runs, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "export", str(classical_runs["knn"]), "--out", str(tmp_path / "k.onnx"))
    assert_one_line_error(code, err, "knn", "cannot be exported")
    assert not (tmp_path / "k.onnx").exists()


# ----------------------------------------------------------------------------------------- the command
def test_export_command_defaults_and_flags(runs, tmp_path: Path, capsys) -> None:
    """Default path RUN/export/model.onnx; --opset is written into the file; bad flags are one line."""
    from mnistlab import api
    from mnistlab.export import read_metadata

    record = api.record_runs([runs["softmax"]], source="train")[0]  # given by path, the file names its id
    code, out, err = run_cli(capsys, "export", str(runs["softmax"]), "--opset", "15")
    assert code == 0, err
    target = runs["softmax"] / "export" / "model.onnx"
    assert str(target) in out and "MODEL_CARD.md" in out
    assert onnx.load(str(target)).opset_import[0].version == 15
    assert read_metadata(target)["run_id"] == str(record.id)
    assert "Trained 1 epoch, batch" in target.with_name("MODEL_CARD.md").read_text()
    code, _, err = run_cli(capsys, "export", str(runs["softmax"]), "--opset", "5")
    assert_one_line_error(code, err, "--opset", "13..20")
    code, _, err = run_cli(capsys, "export", str(runs["softmax"]), "--out", str(tmp_path))
    assert_one_line_error(code, err, "--out", "is a folder")
    code, _, err = run_cli(capsys, "export", str(runs["softmax"]), "--out", str(tmp_path / "x.pt"))
    assert_one_line_error(code, err, ".onnx")


def test_int8_quantization_is_smaller_and_close(runs, exported, tmp_path: Path, mnist) -> None:
    """--quantize int8 (onnxruntime's dynamic quantization): a smaller file within 1 point of fp32's accuracy."""
    from mnistlab.export import export_run
    from mnistlab.predict import OnnxPredictor

    result = export_run(runs["mlp"], out=tmp_path / "q.onnx", quantize="int8", card=False)
    assert result.size_bytes < 0.5 * exported["mlp"].stat().st_size
    quantized = OnnxPredictor(result.path)
    assert quantized.precision == "int8"
    labels = mnist.test.labels
    acc_q = float(np.mean(quantized.logits(mnist.test.images).argmax(1) == labels))
    acc_f = float(np.mean(OnnxPredictor(exported["mlp"]).logits(mnist.test.images).argmax(1) == labels))
    assert abs(acc_q - acc_f) <= 0.01


# ----------------------------------------------------------------------------------------------- metadata
def test_metadata_round_trip(runs, exported, mnist) -> None:
    """What export wrote is what onnx (independently of mnistlab) and mnistlab's reader find in the file."""
    from mnistlab.data import dataset_spec
    from mnistlab.export import read_metadata

    path = exported["cnn"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props == read_metadata(path)
    metrics = json.loads((runs["cnn"] / "metrics.json").read_text())
    assert float(props["test_accuracy"]) == metrics["test_accuracy"]
    assert json.loads(props["class_names"]) == [str(d) for d in range(10)]
    assert (props["input_name"], props["input_shape"], props["input_dtype"]) == ("images", "N,1,28,28", "float32")
    assert "20x20" in props["preprocessing"] and "centre of mass" in props["preprocessing"]
    assert props["weights_sha256"] == hashlib.sha256((runs["cnn"] / "model.safetensors").read_bytes()).hexdigest()
    assert json.loads(props["data_sha256"]) == dict(dataset_spec("mnist").sha256 or {})
    assert Path(props["run_path"]) == runs["cnn"].resolve()
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 1, 28, 28]  # a dynamic batch: the graph names it instead of fixing it


# ---------------------------------------------------------------------------------------- bad files
@pytest.fixture()
def bad_files(exported, tmp_path: Path) -> dict[str, Path]:
    good = exported["mlp"].read_bytes()
    plain = onnx.load(str(exported["mlp"]))
    del plain.metadata_props[:]
    files = {"truncated": good[: len(good) // 2], "garbage": b"\x00not an onnx model" * 100, "empty": b"",
             "foreign": plain.SerializeToString()}
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.onnx"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "foreign"])
def test_bad_onnx_file_is_one_line(kind: str, bad_files, mnist, tmp_path: Path, capsys) -> None:
    from mnistlab.imaging import encode_png

    image = tmp_path / "digit.png"
    image.write_bytes(encode_png(mnist.test.images[0]))
    code, _, err = run_cli(capsys, "predict", str(bad_files[kind]), str(image))
    assert_one_line_error(code, err, str(bad_files[kind]), "export")


def test_server_refuses_to_start_on_a_bad_file(bad_files) -> None:
    """A real `mnistlab serve` process on a truncated file: one line, exit 2, nothing listening."""
    port = _free_port()
    done = subprocess.run([sys.executable, "-m", "mnistlab", "serve", str(bad_files["truncated"]), "--port",
                           str(port)], capture_output=True, text=True, timeout=120, env=_env(), check=False)
    assert_one_line_error(done.returncode, done.stderr, "truncated.onnx", "not a readable ONNX model")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


# ----------------------------------------------------------------------------------------- torch-free
def test_predict_on_onnx_never_imports_torch(exported, mnist, tmp_path: Path) -> None:
    """`predict MODEL.onnx` and `predict --backend onnx RUN` (exporting in a child process, then from the
    cache) in a fresh interpreter: right answers, and torch is never in sys.modules."""
    from mnistlab.imaging import encode_png
    from mnistlab.predict import OnnxPredictor

    images = []
    for i in range(3):
        images.append(tmp_path / f"d{i}.png")
        images[-1].write_bytes(encode_png(mnist.test.images[i]))
    run_dir = tmp_path / "run"  # a copy: the session's run stays as other modules expect it
    source = Path(OnnxPredictor(exported["mlp"]).metadata["run_path"])
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("export", "eval"))
    script = ("import sys, json\nfrom mnistlab.cli import main\nrc = main(sys.argv[1:])\n"
              "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n")
    expected = [int(p.label) for p in OnnxPredictor(exported["mlp"]).predict(mnist.test.images[:3])]
    for model, extra in ((exported["mlp"], []), (run_dir, ["--backend", "onnx"]), (run_dir, ["--backend", "onnx"])):
        done = subprocess.run([sys.executable, "-c", script, "predict", str(model), *map(str, images), "--json",
                               *extra], capture_output=True, text=True, timeout=300, env=_env(), check=False)
        assert done.returncode == 0, done.stderr
        answer, status = done.stdout.rsplit("\n{", 1)[0], json.loads("{" + done.stdout.rsplit("\n{", 1)[1])
        assert status == {"rc": 0, "torch": False}
        assert [r["prediction"] for r in json.loads(answer)["results"]] == expected
    assert (run_dir / "export" / "model.onnx").is_file()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_on_onnx_answers_without_torch(exported, mnist) -> None:
    """A real `mnistlab serve MODEL.onnx` process answers JSON and PNG requests as OnnxPredictor does, and
    never maps libtorch into its memory (/proc/PID/maps)."""
    from mnistlab.imaging import encode_png
    from mnistlab.predict import OnnxPredictor

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(exported["cnn"]), "--port", str(port),
                               "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        predictor = OnnxPredictor(exported["cnn"])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(5):
            for content_type, body in (("application/json", json.dumps({"pixels": mnist.test.images[i].tolist()})),
                                       ("image/png", encode_png(mnist.test.images[i]))):
                connection.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                answer = json.loads(response.read())
                assert response.status == 200, answer
                pixels = np.asarray(answer["input"], dtype=np.uint8)
                want = predictor.predict(pixels[None])[0]
                assert answer["prediction"] == want.label
                assert answer["probabilities"] == [round(p, 6) for p in want.probabilities]
        connection.request("GET", "/api/model")
        info = json.loads(connection.getresponse().read())
        assert (info["backend"], info["model"]) == ("onnx", "cnn")
        maps = Path(f"/proc/{server.pid}/maps")
        if maps.exists():
            assert "libtorch" not in maps.read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_torch_backend_refuses_an_onnx_file(exported) -> None:
    from mnistlab.predict import open_predictor

    with pytest.raises(MnistlabError, match="backend onnx"):
        open_predictor(exported["mlp"], backend="torch")


# ---------------------------------------------------------------------------------------- model card
def _python_block(text: str, after: str) -> str:
    section = text.split(after, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block after {after!r}"
    return match.group(1)


def test_model_card_figures_and_its_example_runs(runs, exported, mnist) -> None:
    """MODEL_CARD.md carries the evaluation's per-class F1, ECE and most confused pair, the digests, the
    contract; its five-line onnxruntime example runs as written beside the file."""
    from mnistlab.analysis import evaluate_scores, run_scores

    card_path = exported["cnn"].with_name("MODEL_CARD.md")
    card = card_path.read_text()
    evaluation = evaluate_scores(run_scores(runs["cnn"], device="cpu"))
    for k in range(10):
        assert f"| {k} | {evaluation.report.precision[k]:.4f} | {evaluation.report.recall[k]:.4f} | " \
               f"{evaluation.report.f1[k]:.4f} | {int(evaluation.report.support[k])} |" in card
    assert evaluation.calibration is not None
    assert f"ECE) {100 * evaluation.calibration.ece:.2f}%" in card
    worst = evaluation.pairs[0]
    assert f"- {worst.true} read as {worst.predicted}: {worst.count} images" in card
    assert "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7" in card  # t10k-images
    example = _python_block(card, "## Run it with onnxruntime")
    assert len(example.strip().splitlines()) == 5
    # The example's blank digit, then a real test digit put in its place: both answers as OnnxPredictor's.
    from mnistlab.predict import OnnxPredictor

    predictor = OnnxPredictor(exported["cnn"])
    blank = predictor.predict(np.zeros((1, 28, 28), np.uint8))[0].label
    real = example.replace("np.zeros((1, 28, 28), np.uint8)", f"np.array([{mnist.test.images[0].tolist()}], np.uint8)")
    for code, want in ((example, blank), (real, predictor.predict(mnist.test.images[:1])[0].label)):
        done = subprocess.run([sys.executable, "-c", code], cwd=card_path.parent, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"[{want}]"


def test_readme_onnxruntime_example_runs(exported) -> None:
    """The README's Export section example, run beside an exported model.onnx."""
    block = _python_block(README.read_text(), "## Export")
    folder = exported["softmax"].parent
    done = subprocess.run([sys.executable, "-c", block], cwd=folder, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\[\d\]", done.stdout.strip())


def test_backend_onnx_cache_is_reused_and_rebuilt(runs, tmp_path: Path) -> None:
    """RUN/export/model.onnx is reused while it matches the weights, and rebuilt when broken or stale."""
    from mnistlab.export import cached_onnx, file_sha256, read_metadata

    run_dir = tmp_path / "run"
    shutil.copytree(runs["softmax"], run_dir, ignore=shutil.ignore_patterns("export", "eval"))
    first = cached_onnx(run_dir)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(run_dir) == first and first.stat().st_mtime_ns == stamp  # reused, not rewritten
    first.write_bytes(b"broken")
    assert read_metadata(cached_onnx(run_dir))["weights_sha256"] == file_sha256(run_dir / "model.safetensors")
    # New weights (the bias shifted) make the cache stale: it is exported again, from them.
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(run_dir / "model.safetensors"))
    bias = next(key for key in tensors if key.endswith("bias"))
    tensors[bias] = tensors[bias] + np.float32(0.5)
    save_file(tensors, str(run_dir / "model.safetensors"), metadata={"format": "pt"})
    rebuilt = cached_onnx(run_dir)
    assert read_metadata(rebuilt)["weights_sha256"] == file_sha256(run_dir / "model.safetensors")


# ------------------------------------------------------------------------- the onnx backend, custom models
def tiny_linear(num_classes: int = 10):
    """A registered custom network small enough to train on the tiny dataset in a moment."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.Tanh(), nn.Linear(16, num_classes))


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir_shared: Path) -> Path:
    """A run of a model registered in this process with mnistlab.register_model, trained through the API."""
    import mnistlab

    mnistlab.register_model("tiny_linear_onnx", replace=True, epochs=1, batch_size=64)(tiny_linear)
    run_dir = tmp_path_factory.mktemp("custom-onnx") / "run"
    # fp32: the export is the fp32 function, so it matches the run's own scoring to rounding (bf16 would not)
    mnistlab.train("tiny_linear_onnx", data_dir=tiny_data_dir_shared, device="cpu", precision="fp32",
                   run_dir=run_dir, progress="none", registry=False)
    return run_dir


def test_onnx_backend_of_a_registered_custom_model_exports_in_this_process(custom_run: Path, mnist) -> None:
    """Run.predict(backend="onnx") on a custom model: the export (which a child process could not build, it lacks
    the registration) is made here, and onnxruntime gives torch's answers."""
    import mnistlab
    from mnistlab.export import read_metadata

    shutil.rmtree(custom_run / "export", ignore_errors=True)
    images = mnist.test.images[:64]
    run = mnistlab.load(custom_run)
    onnx_answers = run.predict(images, backend="onnx")
    torch_answers = mnistlab.load(custom_run).predict(images)
    assert read_metadata(custom_run / "export" / "model.onnx")["model"] == "tiny_linear_onnx"
    assert [a.label for a in onnx_answers] == [a.label for a in torch_answers]
    onnx_probs = np.array([a.probabilities for a in onnx_answers])
    torch_probs = np.array([a.probabilities for a in torch_answers])
    assert float(np.max(np.abs(onnx_probs - torch_probs))) <= 1e-5
    assert run._onnx is not None and run._onnx.info()["backend"] == "onnx"


def test_onnx_backend_of_a_custom_model_without_its_registration_says_how_to_export(custom_run: Path,
                                                                                    tmp_path: Path) -> None:
    """`mnistlab predict RUN --backend onnx` in a fresh process (no registration there): one line naming the fix,
    exit 2; once exported from the registering Python, the same command answers without torch."""
    from mnistlab.imaging import encode_png

    shutil.rmtree(custom_run / "export", ignore_errors=True)
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[6:22, 12:16] = 255
    image = tmp_path / "one.png"
    image.write_bytes(encode_png(digit))
    command = [sys.executable, "-m", "mnistlab", "predict", str(custom_run), str(image), "--backend", "onnx"]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300, check=False)
    assert_one_line_error(done.returncode, done.stderr, "tiny_linear_onnx", "register_model", ".export()",
                          str(custom_run / "export" / "model.onnx"))
    import mnistlab

    mnistlab.load(custom_run).export(card=False)  # what the message says to do, from this (registering) Python
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "%" in done.stdout
