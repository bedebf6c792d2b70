"""mnistlab.predict: prepared 28x28 images -> probabilities with a trained model; and `mnistlab predict`.

The image preparation itself is tested in tests/test_imaging.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistlab.cli import INVERT_CHOICES as CLI_INVERT_CHOICES
from mnistlab.cli import main
from mnistlab.config import TrainConfig
from mnistlab.data import load_dataset
from mnistlab.imaging import INVERT_CHOICES, prepare_image
from mnistlab.predict import Predictor
from mnistlab.training import fit
from tests.clitools import assert_one_line_error, run_cli
from tests.imagekit import digit_strokes, encode, mnist_on_paper, photo_of, render_strokes
from tests.photokit import page_photo, photo_specs
from tests.test_imaging import seven


# --------------------------------------------------------------------------------------- the trained model
@pytest.fixture(scope="module")
def predictor(trained_cnn_run: Path) -> Predictor:
    return Predictor(trained_cnn_run)


def test_predictor_probabilities_are_the_softmax_of_the_logits(predictor: Predictor, mnist) -> None:
    import torch
    from safetensors.torch import load_file

    from mnistlab.models import build_model

    # Independent oracle: a fresh network with the weights read straight from the run's safetensors file,
    # run in the precision the run recorded (bf16 autocast for a bf16 run), as plain torch.
    images = mnist.test.images[:64]
    probs = predictor.probabilities(images)
    network = build_model("cnn")
    network.load_state_dict(load_file(str(predictor.run.path / "model.safetensors")))
    network.eval()
    bf16 = predictor.run.model["precision"] == "bf16"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = network(torch.tensor(images, dtype=torch.float32)[:, None] / 255.0).float().double().numpy()
    oracle = np.exp(logits - logits.max(axis=1, keepdims=True))
    oracle /= oracle.sum(axis=1, keepdims=True)
    # bf16: the oracle runs the default memory layout, the predictor channels-last, and bf16 kernels of the
    # two layouts round differently (measured up to 4e-7 here); fp32 agrees to rounding.
    np.testing.assert_allclose(probs, oracle, rtol=1e-6, atol=2e-6 if bf16 else 1e-9)
    predictions = predictor.predict(images)
    assert [p.label for p in predictions] == oracle.argmax(axis=1).tolist()
    top = predictions[0].top(3)
    assert [p for _, _, p in top] == sorted((p for _, _, p in top), reverse=True)
    assert top[0][0] == predictions[0].label


def test_predictor_info_reports_the_recorded_accuracy(predictor: Predictor, trained_cnn_run: Path) -> None:
    recorded = json.loads((trained_cnn_run / "metrics.json").read_text())["test_accuracy"]
    info = predictor.info()
    assert info["model"] == "cnn" and info["dataset"] == "mnist"
    assert info["test_accuracy"] == recorded
    assert info["class_names"] == [str(i) for i in range(10)]


def test_canonical_mnist_images_as_paper_pngs_are_read(predictor: Predictor, mnist) -> None:
    """Criterion fixed before looking: first 20 test digits, 4x, black on white, off-centre: >= 18 right."""
    images, labels = mnist.test.images[:20], mnist.test.labels[:20]
    prepared = np.stack([prepare_image(encode(mnist_on_paper(image))).pixels for image in images])
    correct = sum(p.label == int(y) for p, y in zip(predictor.predict(prepared), labels, strict=True))
    assert correct >= 18, correct


def test_photos_of_digits_are_read(predictor: Predictor, mnist) -> None:
    """Criterion fixed before looking: 10 noisy, shaded, JPEG 'photos' of test digits 20..29: >= 9 right."""
    images, labels = mnist.test.images[20:30], mnist.test.labels[20:30]
    prepared = np.stack([prepare_image(photo_of(image, seed=i)).pixels for i, image in enumerate(images)])
    correct = sum(p.label == int(y) for p, y in zip(predictor.predict(prepared), labels, strict=True))
    assert correct >= 9, correct


def test_photos_of_a_page_on_a_desk_are_read(predictor: Predictor, mnist) -> None:
    """40 synthetic photos of a digit on a page lying on a desk (tests/photokit.py): >= 34 read right.

    Measured on 100 photos of another seed with this 1-epoch CNN: 9/100 before pages were found (the desk was
    taken as the background), 95/100 after, the same as the clean black-on-white references (95/100).
    """
    digits, labels = mnist.test.images[400:440], mnist.test.labels[400:440]
    prepared = np.stack([prepare_image(page_photo(digit, spec)).pixels
                         for digit, spec in zip(digits, photo_specs(40, seed=12), strict=True)])
    correct = sum(p.label == int(y) for p, y in zip(predictor.predict(prepared), labels, strict=True))
    assert correct >= 34, correct


@pytest.mark.parametrize("digit", [0, 1, 3, 4, 7])
def test_drawn_strokes_are_read(predictor: Predictor, digit: int) -> None:
    """The stroke shapes the browser test draws, rendered as a 280x280 canvas would: read as their digit."""
    img = render_strokes(digit_strokes(digit), canvas=(280, 280), box=(40, 40, 200), width=20)
    assert predictor.predict(prepare_image(encode(img)).pixels[None])[0].label == digit


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_predict_text_json_and_show_input(trained_cnn_run: Path, mnist, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    labels = [int(y) for y in mnist.test.labels[:3]]
    for i in range(3):
        mnist_on_paper(mnist.test.images[i]).save(folder / f"digit{i}.png")
    (folder / "notes.txt").write_text("not an image; ignored when a folder is expanded")

    assert main(["predict", str(trained_cnn_run), str(folder / "digit0.png"), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{folder / 'digit0.png'}  {labels[0]}   ({labels[0]} ")

    show = tmp_path / "seen.png"
    assert main(["predict", str(trained_cnn_run), str(folder), "--json", "--top", "10",
                 "--show-input", str(show)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["prediction"] for r in report["results"]] == labels
    assert [Path(r["image"]).name for r in report["results"]] == ["digit0.png", "digit1.png", "digit2.png"]
    for i, result in enumerate(report["results"]):
        assert len(result["top"]) == 10 and abs(sum(result["probabilities"]) - 1) < 1e-4
        assert result["inverted"] is True
        saved = np.asarray(Image.open(tmp_path / f"seen-{i + 1}.png"))
        assert result["input_png"] == str(tmp_path / f"seen-{i + 1}.png")
        np.testing.assert_array_equal(saved, prepare_image(folder / f"digit{i}.png").pixels)

    assert main(["predict", str(trained_cnn_run), str(folder / "digit1.png"), "--show-input", str(show)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(show)), prepare_image(folder / "digit1.png").pixels)


@pytest.mark.parametrize("make_args, message", [
    (lambda run, d: ["predict", str(run), str(d / "bad.png")], "bad.png: not an image"),
    (lambda run, d: ["predict", str(run), str(d / "blank.png")], "blank.png: blank"),
    (lambda run, d: ["predict", str(run), str(d / "missing.png")], "no such file"),
    (lambda run, d: ["predict", str(d), str(d / "blank.png")], "no such run directory|not a run directory"),
    (lambda run, d: ["predict", str(run), str(d / "blank.png"), "--top", "0"], "--top must be >= 1"),
    (lambda run, d: ["predict", str(run), str(d / "ok.png"), "--top", "11"], "--top must be at most 10"),
    (lambda run, d: ["predict", str(run), str(d / "ok.png"), "--show-input", str(d / "no/x.png")],
     "does not exist"),
])
def test_cli_predict_bad_input_exits_2(trained_cnn_run: Path, tmp_path: Path, capsys, make_args,
                                       message: str) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    seven().save(tmp_path / "ok.png")
    assert main(make_args(trained_cnn_run, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnistlab: error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err


def test_cli_invert_flag_matches_the_library() -> None:
    assert CLI_INVERT_CHOICES == INVERT_CHOICES
    with pytest.raises(SystemExit) as exc:
        main(["predict", "run", "x.png", "--invert", "maybe"])
    assert exc.value.code == 2


def test_predict_and_serve_help_import_no_heavy_modules() -> None:
    code = ("import sys\nfrom mnistlab.cli import main\nfor cmd in ('predict', 'serve'):\n"
            "    try:\n        main([cmd, '--help'])\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'fastapi', 'PIL', 'uvicorn', 'numpy') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: mnistlab serve" in out
    assert out.strip().splitlines()[-1] == "HEAVY=", out


def test_one_bad_file_in_a_folder_does_not_hide_the_others(capsys, trained_cnn_run: Path, tmp_path: Path,
                                                           mnist) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(mnist.test.images[i]).save(folder / f"good-{i}.png")
    (folder / "broken.png").write_bytes(b"not a png at all")
    code = main(["predict", str(trained_cnn_run), str(folder)])
    out, err = capsys.readouterr()
    assert code == 2
    assert sorted(line.split()[0].rsplit("/", 1)[-1] for line in out.splitlines()) == [
        "good-0.png", "good-1.png", "good-2.png"]
    labels = [int(line.split()[1]) for line in sorted(out.splitlines())]
    assert labels == [int(x) for x in mnist.test.labels[:3]]
    assert "broken.png: not an image" in err and "1 of 4 images could not be read" in err
    code = main(["predict", str(trained_cnn_run), str(folder), "--json"])
    out, _ = capsys.readouterr()
    document = json.loads(out)
    assert code == 2 and document["failed"] == 1
    errors = [r for r in document["results"] if "error" in r]
    assert len(errors) == 1 and errors[0]["image"].endswith("broken.png")
    assert sum("prediction" in r for r in document["results"]) == 3


def test_show_input_never_overwrites_an_input(capsys, tmp_path: Path, mlp_run: Path) -> None:
    image = tmp_path / "digit.png"
    Image.fromarray(np.pad(np.full((10, 10), 255, np.uint8), 9)).save(image)
    before = image.read_bytes()
    code, _, err = run_cli(capsys, "predict", str(mlp_run), str(image), "--show-input", str(image))
    assert_one_line_error(code, err, "would overwrite the input image")
    assert image.read_bytes() == before
    code, _, err = run_cli(capsys, "predict", str(mlp_run), str(image), "--show-input", str(tmp_path / "seen"))
    assert_one_line_error(code, err, "name a .png file")


def test_classical_run_in_predict_says_what_to_do(capsys, tmp_path: Path, tiny_data_dir_shared: Path) -> None:
    run = fit(TrainConfig.for_model("logreg", device="cpu"), run_dir=tmp_path / "lr",
              dataset=load_dataset(data_dir=tiny_data_dir_shared)).run_dir
    image = tmp_path / "digit.png"
    Image.fromarray(np.pad(np.full((10, 10), 255, np.uint8), 9)).save(image)
    code, _, err = run_cli(capsys, "predict", str(run), str(image))
    assert_one_line_error(code, err, "classical logreg model", "network run")
