"""The stored real-handwriting set (benchmarks/handwriting/data, issue 13 item 5) is intact and reproducible.

* every file matches SHA256SUMS, and SHA256SUMS names every file in the folder;
* both parts are balanced over the digits, image ``i`` shows digit ``i % 10``, uint8 of the stated shapes;
* the generator is deterministic: font images made again from their seed are byte-identical to the stored ones
  (when this machine has the same font files and Pillow/FreeType), and drawings made again through the page in
  Chromium give the stored canvases (byte for byte with the same Chromium; close shapes and 28x28 inputs
  with another);
* no image, once prepared as `mnistlab predict` prepares it, is byte-identical to an MNIST image.

No training here; the Chromium check draws a handful of digits.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "handwriting" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))  # `handwriting` is a folder of benchmark tools, not installed

from handwriting import make_set  # noqa: E402
from handwriting.fonts import file_sha256  # noqa: E402

SHAPES = {"drawn": (280, 280), "fonts": (80, 80)}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((DATA / make_set.MANIFEST).read_text())


@pytest.fixture(scope="module")
def parts() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {part: make_set.read_part(DATA, part) for part in make_set.FILES}


def test_every_file_matches_sha256sums() -> None:
    listed = {}
    for line in (DATA / make_set.SUMS).read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    assert set(listed) == {p.name for p in DATA.iterdir()} - {make_set.SUMS}
    for name, digest in listed.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


def test_parts_are_balanced_uint8_of_the_stated_shapes(parts, manifest) -> None:
    total = 0
    for part, (images, labels) in parts.items():
        count = manifest[part]["count"]
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        assert images.shape == (count, *SHAPES[part]) and labels.shape == (count,)
        assert count % 10 == 0 and np.bincount(labels, minlength=10).tolist() == [count // 10] * 10
        assert (labels == np.arange(count) % 10).all()  # the documented order: image i shows digit i % 10
        assert manifest[part]["items"]["digit"] == labels.tolist()
        # Every image holds a digit: ink differs from the background by far more than noise.
        spread = images.reshape(count, -1).max(axis=1).astype(int) - images.reshape(count, -1).min(axis=1)
        assert spread.min() >= 80
        total += count
    assert 1000 <= total <= 3000
    assert sum((DATA / name).stat().st_size for name in (DATA.iterdir())) < 2_200_000  # a small set


def _same_renderer(manifest: dict) -> str | None:
    """Why font renders may differ here (another Pillow or FreeType than the set was made with), else None."""
    import PIL
    from PIL import features

    made = manifest["versions"]
    here = {"pillow": PIL.__version__, "freetype": str(features.version("freetype2"))}
    for key, value in here.items():
        if made[key] != value:
            return f"the set was rendered with {key} {made[key]}, this machine has {value}"
    return None


def test_font_images_are_made_again_byte_for_byte(parts, manifest) -> None:
    reason = _same_renderer(manifest)
    if reason:
        pytest.skip(f"font renders are compared byte for byte only with the same renderer: {reason}")
    fonts = []
    for entry in manifest["fonts"]["fonts_used"]:
        path = Path(entry["path"])
        if not path.exists() or file_sha256(path) != entry["sha256"]:
            pytest.skip(f"font {entry['file']} with SHA-256 {entry['sha256'][:12]}... is not on this machine")
        fonts.append(path)
    images, _ = parts["fonts"]
    styles = manifest["fonts"]["items"]["style"]
    indices = [0, 1, 7, 38 * 10 + 3, len(images) - 1]
    indices += [i for i, s in enumerate(styles) if s == "photo"][:3]  # the photo style's noise too
    for index in indices:
        again = make_set.font_image(index, seed=manifest["seed"], fonts=fonts)
        assert again.font == manifest["fonts"]["items"]["font"][index]
        assert again.pixels.tobytes() == images[index].tobytes(), f"font image {index}"


def test_font_generator_depends_only_on_seed_and_index(manifest) -> None:
    fonts = [Path(e["path"]) for e in manifest["fonts"]["fonts_used"] if Path(e["path"]).exists()]
    if not fonts:
        pytest.skip("none of the set's fonts is on this machine")
    first = make_set.font_image(5, seed=0, fonts=fonts)
    make_set.font_image(6, seed=0, fonts=fonts)  # another image in between changes nothing
    assert make_set.font_image(5, seed=0, fonts=fonts).pixels.tobytes() == first.pixels.tobytes()
    assert make_set.font_image(5, seed=1, fonts=fonts).pixels.tobytes() != first.pixels.tobytes()


@pytest.mark.browser
def test_drawings_are_made_again_through_the_page(parts, manifest) -> None:
    """A handful of drawings redrawn on the page in Chromium give the stored canvases.

    With the Chromium version the set was made with, byte for byte (measured: identical, even on a loaded
    machine). Another version may anti-alias stroke edges differently, so there the shapes (ink masks) and the
    28x28 model input must agree closely instead.
    """
    from handwriting.browser import canvas_gray, chromium_version, open_pad
    from mnistlab.imaging import encode_png, prepare_image

    images, _ = parts["drawn"]
    indices = [0, 3, 8, 11, 24, len(images) - 1]
    with open_pad() as pad:
        redrawn = [canvas_gray(pad.draw(make_set.drawing_for(i, seed=manifest["seed"]))) for i in indices]
    same_chromium = chromium_version() == manifest["versions"]["chromium"]
    for index, canvas in zip(indices, redrawn, strict=True):
        stored = images[index]
        if same_chromium:
            assert canvas.tobytes() == stored.tobytes(), f"drawing {index}: another canvas"
            continue
        ink_here, ink_stored = canvas < 128, stored < 128
        assert (ink_here != ink_stored).sum() <= 0.01 * ink_stored.sum(), f"drawing {index}: another shape"
        a = prepare_image(encode_png(canvas)).pixels.astype(int)
        b = prepare_image(encode_png(stored)).pixels.astype(int)
        assert np.abs(a - b).max() <= 8, f"drawing {index}: prepares differently"


def test_no_prepared_image_is_an_mnist_image(parts, mnist) -> None:
    """Prepared as `mnistlab predict` prepares a file, no image is byte-identical to an MNIST train/test image.

    A meaningful check: an MNIST digit saved as a PNG prepares back to itself exactly (45 of the first 50
    training images do), so a digit copied from MNIST into the set would be caught here.
    """
    from mnistlab.imaging import encode_png, prepare_image

    known = {hashlib.sha256(image.tobytes()).digest() for image in mnist.train.images}
    known |= {hashlib.sha256(image.tobytes()).digest() for image in mnist.test.images}
    assert len(known) > 69_000
    for part, (images, _) in parts.items():
        for index, image in enumerate(images):
            pixels = prepare_image(encode_png(image)).pixels
            assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
            assert hashlib.sha256(pixels.tobytes()).digest() not in known, f"{part} image {index} is in MNIST"


def test_benchmark_paired_gain_matches_the_per_image_differences() -> None:
    """The benchmark's paired standard error is the standard error of the per-image differences (numpy)."""
    import handwriting_accuracy as bench

    rng = np.random.default_rng(3)
    a = rng.random(500) < 0.8
    o = np.where(rng.random(500) < 0.15, ~a, a)  # the second run disagrees on about 15% of the images
    as_text = lambda v: "".join("1" if x else "0" for x in v)  # noqa: E731
    mask = np.ones(500, dtype=bool)
    mask[:50] = False
    got = bench.paired({"correct": as_text(a)}, {"correct": as_text(o)}, mask)
    diff = o[mask].astype(float) - a[mask].astype(float)
    assert got["n"] == 450
    assert got["difference"] == pytest.approx(diff.mean(), abs=1e-12)
    assert got["stderr"] == pytest.approx(diff.std() / np.sqrt(diff.size), rel=1e-9)
    assert bench.rate(a)["stderr"] == pytest.approx(np.sqrt(a.mean() * (1 - a.mean()) / a.size))
