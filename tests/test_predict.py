"""mnistlab.predict: any image -> MNIST-style 28x28 -> probabilities; and `mnistlab predict`.

Geometry is checked with independent oracles (scipy's centre_of_mass, numpy bounding boxes) against MNIST's
own statistics: ink within a 20x20 box whose longer side is 20 px, centre of mass at (14, 14).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mnistlab.cli import INVERT_CHOICES as CLI_INVERT_CHOICES
from mnistlab.cli import main
from mnistlab.errors import MnistlabError
from mnistlab.imaging import (
    INVERT_CHOICES,
    BadPixels,
    BlankImage,
    ImageTooLarge,
    UnreadableImage,
    expand_image_paths,
    prepare_image,
)
from mnistlab.predict import Predictor
from tests.imagekit import bomb_png, digit_strokes, encode, ink_box, mnist_on_paper, photo_of, render_strokes


def assert_mnist_layout(pixels: np.ndarray, *, tolerance: float = 1.0) -> None:
    """MNIST's layout: uint8 28x28, ink within 20x20 (longer side 19-20 px), centre of mass ~ (14, 14)."""
    assert pixels.dtype == np.uint8 and pixels.shape == (28, 28)
    height, width = ink_box(pixels)
    assert height <= 20 and width <= 20
    assert max(height, width) >= 19
    row, col = ndimage.center_of_mass(pixels.astype(np.float64))
    assert abs(row - 14.0) <= tolerance and abs(col - 14.0) <= tolerance, (row, col)
    assert pixels.max() == 255  # full contrast, like 90% of MNIST's digits


def seven(**kwargs: object) -> Image.Image:
    defaults: dict[str, object] = {"canvas": (400, 300), "box": (10, 10, 160), "width": 14}
    defaults.update(kwargs)
    return render_strokes(digit_strokes(7), **defaults)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- geometry
def test_off_centre_digit_is_centred_and_scaled() -> None:
    prepared = prepare_image(encode(seven()))
    assert prepared.inverted  # black ink on white paper
    assert prepared.source_size == (400, 300)
    assert_mnist_layout(prepared.pixels)


@pytest.mark.parametrize("canvas, box, width", [
    ((64, 48), (40, 30, 12), 1),         # tiny: a 12 px digit with a 1 px pen, near a corner
    ((3000, 2200), (900, 100, 1900), 140),  # huge: 6.6 Mpx, reduced to the working size first
    ((500, 500), (180, 180, 140), 3),    # a thin pen: strokes are thickened towards MNIST's
])
def test_tiny_huge_and_thin_digits(canvas: tuple[int, int], box: tuple[int, int, int], width: int) -> None:
    assert_mnist_layout(prepare_image(encode(seven(canvas=canvas, box=box, width=width))).pixels)


def test_polarity_is_detected_both_ways() -> None:
    dark_on_light = seven()
    light_on_dark = Image.eval(dark_on_light, lambda v: 255 - v)
    a, b = prepare_image(encode(dark_on_light)), prepare_image(encode(light_on_dark))
    assert a.inverted and not b.inverted
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_invert_can_be_forced_and_a_wrong_force_is_a_clear_error() -> None:
    data = encode(seven())
    np.testing.assert_array_equal(prepare_image(data, invert="yes").pixels, prepare_image(data).pixels)
    with pytest.raises(BlankImage, match="invert=no"):
        prepare_image(data, invert="no")  # white paper taken as ink: nothing stands out
    with pytest.raises(MnistlabError, match="invert must be one of"):
        prepare_image(data, invert="sometimes")  # type: ignore[arg-type]


def test_alpha_is_composited_whatever_the_ink_colour() -> None:
    reference = prepare_image(encode(seven())).pixels
    black_on_clear = seven(mode="RGBA", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0))      # a canvas export
    white_on_clear = seven(mode="RGBA", ink=(255, 255, 255, 255), paper=(255, 255, 255, 0))
    hidden_paper = seven(mode="LA", ink=(40, 255), paper=(200, 0))  # a colour hidden under alpha 0
    for img in (black_on_clear, white_on_clear, hidden_paper):
        np.testing.assert_array_equal(prepare_image(encode(img)).pixels, reference)


def test_formats_and_modes_give_the_same_digit() -> None:
    base = seven()
    reference = prepare_image(encode(base)).pixels
    variants = {
        "BMP": encode(base, "BMP"),
        "GIF": encode(base.convert("P"), "GIF"),
        "TIFF": encode(base, "TIFF"),
        "PPM": encode(base.convert("RGB"), "PPM"),
        "16-bit PNG": encode(Image.fromarray(np.asarray(base, dtype=np.uint16) * 257), "PNG"),
        "bilevel": encode(base.convert("1", dither=Image.Dither.NONE), "PNG"),
        "palette+transparency": encode(seven(mode="RGBA", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0))
                                       .convert("P"), "PNG"),
    }
    for name, data in variants.items():
        pixels = prepare_image(data).pixels
        # Same ink, same layout; bilevel/palette conversions may move an edge pixel's gray level a little.
        assert np.abs(pixels.astype(int) - reference.astype(int)).mean() < 2.0, name


def test_gif_first_frame_is_used() -> None:
    first, second = seven(), render_strokes(digit_strokes(0), canvas=(400, 300), box=(100, 50, 200), width=14)
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second], duration=100)
    expected = prepare_image(encode(first)).pixels
    np.testing.assert_array_equal(prepare_image(buffer.getvalue()).pixels, expected)


def test_exif_orientation_is_applied() -> None:
    upright = seven()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores a photo taken sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    oriented = prepare_image(encode(stored, "PNG", exif=exif)).pixels
    np.testing.assert_array_equal(oriented, prepare_image(encode(upright)).pixels)


def test_array_is_taken_as_is(mnist) -> None:
    image = mnist.test.images[0]
    prepared = prepare_image(image)
    np.testing.assert_array_equal(prepared.pixels, image)
    assert not prepared.inverted
    np.testing.assert_array_equal(prepare_image(image.tolist()).pixels, image)  # nested lists too
    np.testing.assert_array_equal(prepare_image(255 - image, invert="yes").pixels, image)


def test_mnist_digits_survive_the_round_trip(mnist) -> None:
    """An MNIST digit drawn big on paper comes back close to the original (it already was MNIST-style).

    MNIST's own centring is to the nearest pixel, so the comparison allows a shift of one pixel; the mean
    absolute difference left is resampling (4x up, then down again): about 8/255 typical, 19/255 at worst
    over the first 200 test digits.
    """
    for index in range(20):
        original = mnist.test.images[index].astype(int)
        pixels = prepare_image(encode(mnist_on_paper(original))).pixels
        difference = min(np.abs(np.roll(pixels.astype(int), (dy, dx), axis=(0, 1)) - original).mean()
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        assert difference < 25, index
        assert_mnist_layout(pixels)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("data, error, message", [
    (b"", UnreadableImage, "empty"),
    (b"hello, this is not an image", UnreadableImage, "not an image"),
    (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", UnreadableImage, "not an image"),
    # EPS is refused before Pillow could run Ghostscript on it.
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", UnreadableImage, "not an image"),
    (bomb_png(50_000, 50_000), ImageTooLarge, "pixel limit"),
])
def test_bad_bytes_are_clear_errors(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        prepare_image(data, name="upload")


def test_truncated_images_are_clear_errors() -> None:
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        data = encode(seven().convert("RGB") if fmt == "JPEG" else seven(), fmt)
        with pytest.raises(UnreadableImage, match=r"truncated or corrupt|not a readable|not an image"):
            prepare_image(data[: len(data) // 2])


def test_size_limits_apply_before_decoding(tmp_path: Path) -> None:
    data = encode(seven())
    with pytest.raises(ImageTooLarge, match="byte limit"):
        prepare_image(data, max_bytes=len(data) - 1)
    with pytest.raises(ImageTooLarge, match="400x300 = 120,000 pixels"):
        prepare_image(data, max_pixels=119_999)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageTooLarge, match=r"big\.png"):
        prepare_image(path, max_bytes=100)


@pytest.mark.parametrize("img", [
    Image.new("L", (280, 280), 255),                                   # a blank white canvas
    Image.new("RGBA", (280, 280), (0, 0, 0, 0)),                       # a blank transparent canvas
    Image.new("L", (50, 50), 128),                                      # uniform gray
    Image.fromarray(np.random.default_rng(0).integers(120, 136, (90, 90), dtype=np.uint8)),  # faint noise
])
def test_blank_images_are_errors_not_guesses(img: Image.Image) -> None:
    with pytest.raises(BlankImage, match="blank"):
        prepare_image(encode(img))


@pytest.mark.parametrize("array, message", [
    (np.zeros((27, 28), dtype=np.uint8), "28x28"),
    ([[0] * 28] * 27, "28x28"),
    ([[0] * 28] * 27 + [[0] * 27], "28x28"),
    ([["0"] * 28] * 28, "only numbers"),
    ([[True] * 28] * 28, "only numbers"),
    ([[None] * 28] * 28, "only numbers"),
    ([[0] * 27 + [256]] + [[0] * 28] * 27, "0..255, got 0..256"),
    ([[-1] + [0] * 27] + [[0] * 28] * 27, "0..255, got -1..0"),
    ([[0.5] * 28] * 28, "whole numbers"),
    (np.full((28, 28), np.nan), "finite"),
    (np.zeros((28, 28), dtype=np.uint8), "blank"),
    (np.full((28, 28), 255, dtype=np.int64), "blank"),
])
def test_bad_arrays_are_clear_errors(array: object, message: str) -> None:
    with pytest.raises((BadPixels, BlankImage), match=message):
        prepare_image(array)  # type: ignore[arg-type]


def test_missing_files_and_folders(tmp_path: Path) -> None:
    with pytest.raises(MnistlabError, match="no such file"):
        prepare_image(tmp_path / "nope.png")
    with pytest.raises(MnistlabError, match="is a folder"):
        prepare_image(tmp_path)
    with pytest.raises(MnistlabError, match="holds no images"):
        expand_image_paths([tmp_path])


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
