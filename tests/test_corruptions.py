"""The MNIST-C-style corruptions (each seeded, shape- and dtype-keeping, and changing the image by its stated
amount, measured on synthetic images) and the robustness report (CLI end to end, numbers recomputed by hand)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mnistlab import corruptions as C
from mnistlab.errors import MnistlabError
from tests.clitools import assert_one_line_error, run_cli
from tests.conftest import make_digits

ROWS, COLS = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")


def centroid(image: np.ndarray) -> np.ndarray:
    """(row, col) centre of mass of one image."""
    w = image.astype(np.float64)
    return np.array([(w * ROWS).sum(), (w * COLS).sum()]) / w.sum()


def second_moments(image: np.ndarray) -> tuple[float, float, float]:
    """(var row, var col, cov row-col) of one image's ink."""
    w = image.astype(np.float64) / image.astype(np.float64).sum()
    r, c = centroid(image)
    return (float((w * (ROWS - r) ** 2).sum()), float((w * (COLS - c) ** 2).sum()),
            float((w * (ROWS - r) * (COLS - c)).sum()))


def orientation(image: np.ndarray) -> float:
    """The principal axis's angle (radians, counter-clockwise as displayed from the +col axis)."""
    vr, vc, cov = second_moments(image)
    # Displayed y = -row, so cov(x, y) = -cov(col, row).
    return 0.5 * math.atan2(2 * -cov, vc - vr)


def mnist_like(n: int = 64, seed: int = 0) -> np.ndarray:
    """Blobs of ink on black, enough texture for every corruption to act on."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        r, c = rng.integers(8, 20, size=2)
        images[i, r - 4:r + 4, c - 2:c + 2] = 255
        images[i, r - 1:r + 1, c - 6:c + 6] = rng.integers(128, 256)
    return images


@pytest.mark.parametrize("name", [c.value for c in C.CORRUPTIONS])
def test_each_corruption_is_seeded_and_keeps_shape_and_dtype(name: str) -> None:
    images = mnist_like()
    before = images.copy()
    out = C.corrupt(images, name=name, seed=3)
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(images, before)               # the input is never written
    np.testing.assert_array_equal(out, C.corrupt(images, name=name, seed=3))
    other = C.corrupt(images, name=name, seed=4)
    if C.Corruption(name) in C.DETERMINISTIC:
        np.testing.assert_array_equal(out, other)
    else:
        assert not np.array_equal(out, other)
    assert not np.array_equal(out, images)                      # it does corrupt
    # One image alone gets a corruption of the same kind (the batch path has no per-batch coupling of shape).
    assert C.corrupt(images[:1], name=name, seed=3).shape == (1, 28, 28)


def test_corruptions_draw_independent_streams() -> None:
    """Each corruption has its own random stream: rotate's per-image signs are not shear's."""
    flat, upright = bar(64), bar(64, horizontal=False)
    turn = np.sign([orientation(img) - orientation(flat[0]) for img in C.corrupt(flat, name="rotate", seed=0)])
    slant = np.sign([second_moments(img)[2] for img in C.corrupt(upright, name="shear", seed=0)])
    # (a shared stream would give identical or exactly opposite sign sequences; independent ones agree ~half)
    assert 8 < (turn == slant).sum() < 56


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(MnistlabError, match="uint8 of shape"):
        C.corrupt(np.zeros((2, 28, 28), np.float32), name="fog")
    with pytest.raises(MnistlabError, match="uint8 of shape"):
        C.corrupt(np.zeros((28, 28), np.uint8), name="fog")
    with pytest.raises(MnistlabError, match="choose one of shot_noise"):
        C.corrupt(np.zeros((1, 28, 28), np.uint8), name="blur")
    assert C.corrupt(np.zeros((0, 28, 28), np.uint8), name="zigzag").shape == (0, 28, 28)


# ------------------------------------------------------------------------------------------ geometry
def bar(n: int, *, horizontal: bool = True) -> np.ndarray:
    images = np.zeros((n, 28, 28), np.uint8)
    if horizontal:
        images[:, 13:15, 4:24] = 255
    else:
        images[:, 4:24, 13:15] = 255
    return images


def test_rotate_turns_a_bar_by_the_stated_angle_either_way() -> None:
    images = bar(40)
    out = C.corrupt(images, name="rotate", seed=0)
    before = orientation(images[0])
    turns = np.array([orientation(img) - before for img in out])
    np.testing.assert_allclose(np.abs(turns), 0.4, atol=0.02)
    assert (turns > 0).any() and (turns < 0).any()
    assert abs(math.degrees(0.4) - 22.9) < 0.05     # the documented figure


def test_shear_slants_a_vertical_bar_by_the_stated_factor() -> None:
    images = bar(40, horizontal=False)
    out = C.corrupt(images, name="shear", seed=0)
    slopes = []
    for img in out:
        vr, _, cov = second_moments(img)
        slopes.append(cov / vr)                      # d col / d row of the bar's axis
    slopes_arr = np.array(slopes)
    np.testing.assert_allclose(np.abs(slopes_arr), 0.4, atol=0.02)
    assert (slopes_arr > 0).any() and (slopes_arr < 0).any()
    for img in out:                                  # about the centre: the bar's middle stays put
        np.testing.assert_allclose(centroid(img), centroid(images[0]), atol=0.05)


def test_translate_moves_a_dot_by_the_stated_pixels() -> None:
    images = np.zeros((40, 28, 28), np.uint8)
    images[:, 12:15, 11:14] = 255
    out = C.corrupt(images, name="translate", seed=0)
    moves = np.array([centroid(img) - centroid(images[0]) for img in out])
    np.testing.assert_allclose(np.abs(moves), 3, atol=1e-9)
    assert len({tuple(np.sign(m)) for m in moves}) == 4              # all four diagonal directions occur
    assert all(img.sum() == images[0].sum() for img in out)          # whole-pixel shifts lose no ink


def test_scale_shrinks_distances_from_the_centre_to_the_stated_fraction() -> None:
    images = np.zeros((1, 28, 28), np.uint8)
    images[0, 20:22, 20:22] = 255          # a dot 7 px right of and below the centre 13.5
    images2 = np.zeros((1, 28, 28), np.uint8)
    images2[0, 4:6, 5:7] = 255
    for img in (images, images2):
        offset = centroid(img[0]) - 13.5
        moved = centroid(C.corrupt(img, name="scale")[0]) - 13.5
        np.testing.assert_allclose(moved, 0.7 * offset, atol=0.1)
    # the digit's ink scales with the area: 0.7^2 of it survives
    square = np.zeros((1, 28, 28), np.uint8)
    square[0, 8:20, 8:20] = 255
    ratio = C.corrupt(square, name="scale").astype(np.float64).sum() / square.astype(np.float64).sum()
    assert abs(ratio - 0.7 ** 2) < 0.03


def test_motion_blur_smears_a_dot_along_a_direction_within_45_degrees() -> None:
    images = np.zeros((60, 28, 28), np.uint8)
    images[:, 13:15, 13:15] = 255
    out = C.corrupt(images, name="motion_blur", seed=1)
    # The stated trail: weights exp(-d^2 / 18) for d = 0..10, so the centre of mass moves by their mean.
    d = np.arange(11.0)
    w = np.exp(-d ** 2 / (2 * 3.0 ** 2))
    expected_shift = float((d * w).sum() / w.sum())
    angles = []
    for img in out:
        shift = centroid(img) - centroid(images[0])
        assert abs(np.hypot(*shift) - expected_shift) < 0.1
        angles.append(math.degrees(math.atan2(-shift[0], shift[1])))
        assert abs(img.astype(np.float64).sum() / images[0].astype(np.float64).sum() - 1) < 0.03
    assert max(np.abs(angles)) <= 45.5 and np.ptp(angles) > 30     # directions vary, within +-45 degrees


def test_glass_blur_spreads_a_dot_locally() -> None:
    images = np.zeros((30, 28, 28), np.uint8)
    images[:, 12:16, 12:16] = 255
    out = C.corrupt(images, name="glass_blur", seed=0)
    reach = 1 * 2
    vr0, vc0, _ = second_moments(images[0])
    for img in out:
        assert np.abs(centroid(img) - centroid(images[0])).max() < reach
        vr, vc, _ = second_moments(img)
        # two blurs of sigma 0.7 alone add 2 * 0.49 to each variance; the shuffle only adds more
        assert vr - vr0 > 0.8 and vc - vc0 > 0.8
        far = np.hypot(ROWS - 13.5, COLS - 13.5) > 2 + reach + 3 * 0.7 * 2
        assert img[far].max() <= 1


# ------------------------------------------------------------------------------------------ noise and intensity
def test_shot_noise_has_the_stated_poisson_statistics() -> None:
    from scipy import stats

    level = 51                                   # x = 0.2: Poisson(0.6) photons
    images = np.full((200, 28, 28), level, np.uint8)
    out = C.corrupt(images, name="shot_noise", seed=0).astype(np.float64).ravel()
    k = np.arange(0, 40)
    p = stats.poisson.pmf(k, 3.0 * level / 255)
    values = np.rint(np.clip(k / 3.0, 0, 1) * 255)
    mean = float((p * values).sum())
    var = float((p * (values - mean) ** 2).sum())
    n = out.size
    assert abs(out.mean() - mean) < 5 * math.sqrt(var / n)
    assert abs(out.var() - var) / var < 0.03
    assert abs(var / 255 ** 2 - 0.2 / 3) < 0.01        # the stated variance x/3 (clipping barely bites)
    # and a full-ink pixel stays at full ink or drops to a multiple of 1/3
    assert set(np.unique(C.corrupt(np.full((5, 28, 28), 255, np.uint8), name="shot_noise"))) <= {0, 85, 170, 255}


def test_impulse_noise_replaces_the_stated_fraction_with_salt_and_pepper() -> None:
    images = np.full((100, 28, 28), 128, np.uint8)
    out = C.corrupt(images, name="impulse_noise", seed=0)
    changed = out != 128
    n = changed.size
    fraction = changed.mean()
    assert abs(fraction - 0.17) < 5 * math.sqrt(0.17 * 0.83 / n)
    assert set(np.unique(out[changed])) == {0, 255}
    assert abs((out[changed] == 255).mean() - 0.5) < 5 * math.sqrt(0.25 / changed.sum())


def test_brightness_adds_half_of_full_scale() -> None:
    images = mnist_like(16)
    out = C.corrupt(images, name="brightness").astype(np.float64)
    expected = np.minimum(images.astype(np.float64) + 127.5, 255)
    assert np.abs(out - expected).max() <= 0.5
    assert out.mean() - images.mean() > 100


def test_stripe_inverts_the_outer_columns_exactly() -> None:
    images = mnist_like(8)
    expected = images.copy()
    expected[:, :, :7] = 255 - expected[:, :, :7]
    expected[:, :, 21:] = 255 - expected[:, :, 21:]
    np.testing.assert_array_equal(C.corrupt(images, name="stripe"), expected)


def test_fog_keeps_a_quarter_of_the_contrast_under_a_cloud() -> None:
    a = np.zeros((20, 28, 28), np.uint8)
    a[:, 0, 0] = 255                          # both images have full ink somewhere, so the same rescaling
    b = a.copy()
    b[:, 14, 14] = 255
    fa = C.corrupt(a, name="fog", seed=5).astype(np.float64)
    fb = C.corrupt(b, name="fog", seed=5).astype(np.float64)
    # the same cloud on both: the one ink pixel differs by 255 / (1 + 3) = 63.75
    assert np.abs(fb[:, 14, 14] - fa[:, 14, 14] - 255 / (1 + 3)).max() <= 1
    same = np.ones((28, 28), bool)
    same[14, 14] = False
    np.testing.assert_array_equal(fa[:, same], fb[:, same])
    # the cloud itself spans much of the image's range (it is not a constant offset)
    assert np.mean([img.max() - np.sort(img.ravel())[1] for img in fa]) > 60


def test_spatter_paints_grey_mud_blobs() -> None:
    black = np.zeros((50, 28, 28), np.uint8)
    white = np.full((50, 28, 28), 255, np.uint8)
    out_black = C.corrupt(black, name="spatter", seed=2)
    out_white = C.corrupt(white, name="spatter", seed=2)
    mud = out_black > 0
    assert 0.005 < mud.mean() < 0.3                             # some blobs, not a coat
    assert out_black[mud].min() >= math.floor(0.8 * 63) and out_black.max() <= 63
    np.testing.assert_array_equal(out_white != 255, mud)        # the same blobs on any image
    assert out_white[mud].max() <= math.ceil(0.2 * 255 + 0.8 * 63) and out_white[mud].min() >= 63
    from scipy import ndimage

    sizes = [np.bincount(ndimage.label(m)[0].ravel())[1:] for m in mud if m.any()]
    assert np.median(np.concatenate(sizes)) >= 4                # blobs, not single pixels


def test_dotted_line_is_a_straight_dashed_line_across() -> None:
    blank = np.zeros((30, 28, 28), np.uint8)
    out = C.corrupt(blank, name="dotted_line", seed=0)
    on = (np.arange(28) // 2) % 2 == 1
    assert out[:, :, ~on].max() == 0                  # gaps: columns 0-1, 4-5, ...
    for img in out:
        ink = img.astype(np.float64)
        cols = np.flatnonzero(on)
        assert (ink[:, cols].max(axis=0) >= 200).all()     # every dash drawn, at full strength
        rows = (ink[:, cols] * ROWS[:, :1]).sum(axis=0) / ink[:, cols].sum(axis=0)
        fit = np.polyfit(cols, rows, 1)
        assert np.abs(np.polyval(fit, cols) - rows).max() < 0.35   # one straight line


def test_zigzag_oscillates_by_the_stated_amplitude_about_its_line() -> None:
    blank = np.zeros((30, 28, 28), np.uint8)
    out = C.corrupt(blank, name="zigzag", seed=0)
    assert out[:, :, :1].max() == 0 and out[:, :, 27:].max() == 0     # from column 2 to 25 (1.5 px of stroke)
    for img in out:
        ink = img.astype(np.float64)
        # the base line: least squares through all the ink, then each fully inked pixel's signed distance to it
        rows_, cols_ = np.nonzero(ink > 0)
        slope, intercept = np.polyfit(cols_, rows_, 1, w=ink[rows_, cols_])
        full_r, full_c = np.nonzero(img == 255)
        side = (full_r - (slope * full_c + intercept)) / math.hypot(1.0, slope)
        # vertices sit 2 px either side of the line; full ink reaches within 0.5 px of the zigzag's path
        assert side.max() >= 2.0 - 0.5 and side.min() <= -(2.0 - 0.5)
        assert np.abs(side).max() <= 2.0 + 1.2
        # it swings from side to side along its length (a turn every 2 px: many crossings, not one bend)
        order = np.argsort(full_c)
        signs = np.sign(side[order][np.abs(side[order]) > 1.0])
        assert (np.diff(signs) != 0).sum() >= 6


def test_canny_edges_outline_a_square() -> None:
    square = np.zeros((1, 28, 28), np.uint8)
    square[0, 9:19, 9:19] = 255
    out = C.corrupt(square, name="canny_edges")[0]
    assert set(np.unique(out)) == {0, 255}
    edge = out == 255
    # distance of every pixel to the square's boundary (between pixels 8|9 and 18|19)
    inside = (ROWS >= 9) & (ROWS <= 18) & (COLS >= 9) & (COLS <= 18)
    from scipy import ndimage

    distance = np.where(inside, ndimage.distance_transform_edt(inside), ndimage.distance_transform_edt(~inside))
    assert distance[edge].max() <= 1.5
    # each of the four sides is found along (nearly) its whole length
    assert edge[9:19, 8:10].any(axis=1).mean() > 0.8 and edge[9:19, 18:20].any(axis=1).mean() > 0.8
    assert edge[8:10, 9:19].any(axis=0).mean() > 0.8 and edge[18:20, 9:19].any(axis=0).mean() > 0.8
    assert not edge[12:16, 12:16].any() and not edge[:5, :5].any()
    # and a blank image has no edges at all
    assert C.corrupt(np.zeros((2, 28, 28), np.uint8), name="canny_edges").max() == 0


def test_canny_edges_of_an_image_do_not_depend_on_its_neighbours_in_the_batch() -> None:
    # A deterministic corruption of one image is a function of that image alone: the batch's edge maps are the
    # ones of each image corrupted by itself (a 3-D Sobel over the stack mixed neighbouring images' gradients).
    images, _ = make_digits(24, seed=5)
    batch = C.corrupt(images, name="canny_edges")
    alone = np.concatenate([C.corrupt(images[i:i + 1], name="canny_edges") for i in range(len(images))])
    np.testing.assert_array_equal(batch, alone)


@pytest.mark.parametrize(("contrast", "edges"), [(0.8, True), (0.06, False)])
def test_canny_thresholds_apply_to_the_2d_sobel_magnitude(contrast: float, edges: bool) -> None:
    # The oracle: scipy's 2-D Sobel of the blurred 2-D image (what skimage's canny thresholds at 0.1 / 0.2).
    from scipy import ndimage

    square = np.zeros((28, 28), np.float64)
    square[9:19, 9:19] = contrast
    smooth = ndimage.gaussian_filter(square, sigma=C.CANNY_SIGMA, mode="constant")
    peak = np.hypot(ndimage.sobel(smooth, axis=0, mode="constant"), ndimage.sobel(smooth, axis=1, mode="constant"))
    assert bool(peak.max() >= C.CANNY_HIGH) is edges  # the case is what its name says
    assert peak.max() > C.CANNY_HIGH / 2                # and a doubled magnitude would pass the high threshold
    found = C.canny(square[None].astype(np.float32))[0]
    assert bool(found.any()) is edges


# ------------------------------------------------------------------------------------------ the report
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir_shared: Path) -> Path:
    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset
    from mnistlab.training import fit

    run_dir = tmp_path_factory.mktemp("corrupt") / "mlp"
    # fp32: the by-hand forward pass below is plain fp32 (a bf16 run would need the same autocast)
    fit(TrainConfig.for_model("mlp", epochs=2, batch_size=64, device="cpu", precision="fp32"), run_dir=run_dir,
        dataset=load_dataset(data_dir=tiny_data_dir_shared))
    return run_dir


def by_hand(run_dir: Path) -> tuple[float, dict[str, float]]:
    """Clean and per-corruption test accuracy: read the test IDX, corrupt, a plain torch forward pass."""
    import torch

    from mnistlab.data import load_run_dataset
    from mnistlab.models import load_trained_model
    from mnistlab.runs import read_run

    model, _ = load_trained_model(run_dir, device="cpu")
    model.eval()
    test = load_run_dataset(read_run(run_dir).config, splits=("test",)).split("test")

    def accuracy(images: np.ndarray) -> float:
        with torch.no_grad():
            logits = model(torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1))
        return float((logits.argmax(1).numpy() == test.labels).mean())

    return accuracy(test.images), {c.value: accuracy(C.corrupt(test.images, name=c, seed=0)) for c in C.CORRUPTIONS}


def test_cli_evaluate_corruptions_end_to_end(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "evaluate", str(tiny_run), "--corruptions", "--json", "--device", "cpu",
                             "--registry", str(tiny_run.parent / "reg.sqlite"))
    assert code == 0, err
    data = json.loads(out)
    clean, expected = by_hand(tiny_run)
    assert data["count"] == 64 and data["seed"] == 0
    assert data["clean_accuracy"] == pytest.approx(clean, abs=1e-12)
    got = {row["name"]: row for row in data["corruptions"]}
    assert list(got) == [c.value for c in C.CORRUPTIONS]
    for name, acc in expected.items():
        assert got[name]["accuracy"] == pytest.approx(acc, abs=1e-12), name
        assert got[name]["error"] == pytest.approx(1 - acc, abs=1e-12)
        if clean < 1:
            assert got[name]["error_ratio"] == pytest.approx((1 - acc) / (1 - clean))
    mean_acc = float(np.mean(list(expected.values())))
    assert data["mean_accuracy"] == pytest.approx(mean_acc)
    assert data["mean_error"] == pytest.approx(1 - mean_acc)
    if clean < 1:
        assert data["mean_error_ratio"] == pytest.approx((1 - mean_acc) / (1 - clean))
    # files: in the run's eval folder, the JSON round-trips, the strip is a PNG, the page shows the table
    folder = tiny_run / "eval" / "test"
    assert {Path(p).name for p in data["files"].values()} == {"corruptions.json", "corruptions.png",
                                                              "corruptions.html"}
    saved = json.loads((folder / "corruptions.json").read_text())
    report = C.RobustnessReport.from_dict(saved)
    assert report.to_dict() == saved
    assert report.mean_accuracy == pytest.approx(mean_acc)
    assert (folder / "corruptions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (folder / "corruptions.html").read_text()
    assert "canny_edges" in page and "data:image/png;base64," in page
    assert not list(folder.glob("*.tmp*"))                      # atomic writes leave no temporaries

    code, out, err = run_cli(capsys, "evaluate", str(tiny_run), "--corruptions", "--device", "cpu",
                             "--registry", str(tiny_run.parent / "reg.sqlite"))
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("corruption"))
    assert lines[header].split() == ["corruption", "accuracy", "error", "x", "clean", "error"]
    names = [line.split()[0] for line in lines[header + 1:header + 18]]
    assert names == ["clean", *(c.value for c in C.CORRUPTIONS), "mean"]
    mean_row = lines[header + 17].split()
    assert mean_row[:2] == ["mean", "(corrupted)"] and float(mean_row[2]) == pytest.approx(mean_acc, abs=5e-5)
    assert f"files: {folder}/" in out


def test_api_report_matches_the_library_and_bad_flags_are_refused(tiny_run: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from mnistlab import api

    run = api.load(tiny_run, registry=False)
    zero = run.evaluate_corruptions(seed=0, device="cpu")
    again = C.evaluate_corruptions(tiny_run, seed=0, device="cpu")
    assert [s.accuracy for s in zero.scores] == [s.accuracy for s in again.scores]
    assert zero.files is not None and again.files is None       # the library call writes nothing
    code, _, err = run_cli(capsys, "evaluate", str(tiny_run), "--corruptions", "--split", "val",
                           "--registry", str(tiny_run.parent / "reg.sqlite"))
    assert_one_line_error(code, err, "--corruptions", "--split val")
