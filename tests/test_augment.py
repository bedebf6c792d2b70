"""mnistlab.augment: batched, seeded augmentation. Geometry is checked on synthetic images whose answer is
known (a dot moved by a translation, a bar grown by a scale), not against the code's own matrices."""

from __future__ import annotations

import pytest
import torch

from mnistlab.augment import (
    LEVELS,
    AugmentSpec,
    affine_grid,
    augment_batch,
    change_photometry,
    change_strokes,
    elastic_field,
    spec_for,
    warp,
)
from mnistlab.errors import MnistlabError


def dot_image(row: int, col: int) -> torch.Tensor:
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, row - 1:row + 2, col - 1:col + 2] = 1.0      # a 3x3 dot centred at (row, col)
    return image


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    values = image[0, 0]
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    total = values.sum()
    return float((values * rows).sum() / total), float((values * cols).sum() / total)


def params(b: int = 1, **given: torch.Tensor) -> dict[str, torch.Tensor]:
    base = {"rotation": torch.zeros(b), "scale": torch.ones(b), "shear": torch.zeros(b),
            "translate": torch.zeros(b, 2)}
    return {**base, **given}


def test_identity_warp_returns_the_image() -> None:
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(warp(images, **params(4)), images, atol=1e-5, rtol=0)
    generator = torch.Generator().manual_seed(0)
    assert augment_batch(images, spec=AugmentSpec(), generator=generator) is images   # zero strength: untouched


def test_a_translated_dot_lands_where_it_should() -> None:
    moved = warp(dot_image(10, 12), **params(translate=torch.tensor([[3.0, -2.0]])))   # +3 columns, -2 rows
    row, col = centre_of_mass(moved)
    assert (row, col) == (pytest.approx(8.0, abs=1e-4), pytest.approx(15.0, abs=1e-4))


def test_scaling_about_the_centre_moves_a_dot_away_from_it() -> None:
    # A dot 6 px right of the centre (13.5, 13.5 in pixel units) goes to 6 * 1.5 = 9 px right.
    grown = warp(dot_image(13, 19) + dot_image(14, 19), **params(scale=torch.tensor([1.5])))
    _, col = centre_of_mass(grown)
    assert col == pytest.approx(13.5 + 1.5 * (19 - 13.5), abs=0.15)


def test_a_quarter_turn_moves_a_dot_to_the_next_side() -> None:
    """Clockwise as displayed (rows grow downward): a dot right of the centre goes below it. The centre of a
    28 px field is 13.5; the dot at offset (+0.5, +6.5) goes to (+6.5, -0.5), i.e. pixel (20, 13)."""
    turned = warp(dot_image(14, 20), **params(rotation=torch.tensor([90.0])))
    row, col = centre_of_mass(turned)
    assert (row, col) == (pytest.approx(20.0, abs=1e-3), pytest.approx(13.0, abs=1e-3))


def test_augmentation_is_seeded_batched_and_keeps_shape_dtype_and_range() -> None:
    # one image, sixteen times: any difference between the outputs comes from the per-image transforms
    images = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)).expand(16, 1, 28, 28).contiguous(
        memory_format=torch.channels_last)
    for name in ("light", "strong", "robust"):
        a = augment_batch(images, spec=spec_for(name), generator=torch.Generator().manual_seed(7))
        b = augment_batch(images, spec=spec_for(name), generator=torch.Generator().manual_seed(7))
        c = augment_batch(images, spec=spec_for(name), generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)                 # same seed, same batch
        assert a.shape == images.shape and a.dtype == torch.float32
        assert a.is_contiguous(memory_format=torch.channels_last)          # the layout the convnets expect
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
        # Each image gets its own transform: no two copies of the same image come out alike.
        apart = torch.cdist(a.flatten(1), a.flatten(1), p=1) + torch.eye(16) * 1e9
        assert float(apart.min()) > 1.0


def test_stroke_changes_thicken_and_thin() -> None:
    bar = torch.zeros(2, 1, 28, 28)
    bar[:, 0, 4:24, 12:15] = 1.0                                          # a 3 px wide vertical bar
    thick = change_strokes(bar, probability=1.0, generator=torch.Generator().manual_seed(0))
    widths = (thick[:, 0, 14] > 0.5).sum(1).tolist()
    assert all(w in (2, 4) for w in widths)                               # eroded to 2 px or dilated to 4 px
    assert thick.shape == bar.shape


def test_thinning_keeps_real_digits_readable() -> None:
    """On real MNIST digits (training split), thinning must not erase them: they keep about half their ink (a
    tenth at least) and contrast (a 3x3 erosion failed this on about a fifth of the digits); thickening
    widens by one pixel per axis, not two; and the anchor corner is random, so the ink does not drift one way."""
    from mnistlab.augment import change_strokes as strokes
    from mnistlab.data import load_dataset

    images = torch.tensor(load_dataset("mnist", splits=("train",)).train.images[:500]).float().div(255).unsqueeze(1)
    out = strokes(images, probability=1.0, generator=torch.Generator().manual_seed(0))
    thinner = out.sum((1, 2, 3)) < images.sum((1, 2, 3))
    assert 150 < int(thinner.sum()) < 350                                 # about half thinned, half thickened
    kept = out[thinner].sum((1, 2, 3)) / images[thinner].sum((1, 2, 3))
    assert kept.min() >= 0.1 and float(kept.median()) >= 0.4            # 3x3: median 0.12
    assert (out[thinner].amax((1, 2, 3)) >= 0.5).float().mean() >= 0.99
    grown = out[~thinner].sum((1, 2, 3)) / images[~thinner].sum((1, 2, 3))
    assert 1.2 < float(grown.median()) < 1.8                              # 3x3 dilation doubles the ink

    def column_mass(x: torch.Tensor) -> torch.Tensor:
        return (x.sum(2).squeeze(1) * torch.arange(28.0)).sum(1) / x.sum((1, 2, 3))

    shift = column_mass(out) - column_mass(images)
    assert shift.abs().mean() > 0.1 and abs(float(shift.mean())) < 0.1   # moved, but not all one way


def test_the_elastic_field_has_the_requested_size_and_smoothness() -> None:
    field = elastic_field(8, 28, 28, alpha=2.0, sigma=3.0, generator=torch.Generator().manual_seed(0),
                          device=torch.device("cpu"))
    assert field.shape == (8, 28, 28, 2)
    rms = field.pow(2).mean(dim=(1, 2)).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, 2.0), atol=1e-4, rtol=0)
    # Smooth: neighbouring pixels move alike (a white-noise field would not).
    step = (field[:, 1:] - field[:, :-1]).abs().mean()
    assert step < 0.5 * field.abs().mean()


def test_levels_and_bad_specs() -> None:
    assert LEVELS["none"].is_identity and not LEVELS["light"].is_identity
    with pytest.raises(MnistlabError, match="`augment` 'heavy' is not one of none, light, strong, robust"):
        spec_for("heavy")
    with pytest.raises(MnistlabError, match="scale, brightness and contrast < 1"):
        AugmentSpec(scale=1.5)
    for bad in ({"brightness": 1.0}, {"contrast": 1.0}, {"photometric": 1.5}, {"noise": -0.1},
                {"noise": float("nan")}):
        with pytest.raises(MnistlabError, match="augmentation ranges"):
            AugmentSpec(**bad)
    # A photometric probability with no change, or changes that are never applied, is still the identity.
    assert AugmentSpec(photometric=0.5).is_identity and AugmentSpec(brightness=0.3).is_identity
    assert not AugmentSpec(photometric=0.5, noise=0.1).is_identity
    assert LEVELS["robust"].has_geometry and LEVELS["robust"].has_photometric
    assert not LEVELS["light"].has_photometric


def bar_image(b: int) -> torch.Tensor:
    """Black images with a white bar: pixels are exactly 0 (paper) or 1 (full ink)."""
    images = torch.zeros(b, 1, 28, 28)
    images[:, :, 8:20, 12:16] = 1.0
    return images


def test_photometry_greys_the_paper_and_fades_the_ink_within_its_ranges() -> None:
    images = bar_image(2000)
    out = change_photometry(images, probability=1.0, brightness=0.4, contrast=0.5, noise=0.0,
                            generator=torch.Generator().manual_seed(0))
    paper, ink = out[:, 0, 0, 0], out[:, 0, 10, 13]
    # Every image has one flat background and one flat ink level (no noise asked for) ...
    assert torch.equal(out[:, 0, :8].amin((1, 2)), paper) and torch.equal(out[:, 0, :8].amax((1, 2)), paper)
    assert torch.equal(out[:, 0, 8:20, 12:16].amin((1, 2)), ink)
    # ... the paper within [0, 0.4], uniformly drawn (mean 0.2), the ink's strength above it in [0.5, 1].
    assert paper.min() >= 0 and paper.max() <= 0.4 and paper.mean() == pytest.approx(0.2, abs=0.01)
    strength = (ink - paper) / (1 - paper)
    assert strength.min() >= 0.5 - 1e-6 and strength.max() <= 1 + 1e-6
    assert strength.mean() == pytest.approx(0.75, abs=0.01)
    assert (ink > paper).all()                                   # the ink stays brighter than the paper


def test_photometry_applies_to_its_share_of_images_and_adds_noise_of_its_size() -> None:
    images = bar_image(4000)
    out = change_photometry(images, probability=0.5, brightness=0.0, contrast=0.0, noise=0.2,
                            generator=torch.Generator().manual_seed(1))
    changed = (out != images).flatten(1).any(1)
    assert changed.float().mean() == pytest.approx(0.5, abs=0.03)   # half the images, the rest untouched
    # Each chosen image's deviation is drawn uniformly in [0, 0.2]: measured per image over its 784 pixels,
    # the deviations spread evenly over that range (mean 0.1, none above it), with zero-mean noise.
    noise = (out - images)[changed].flatten(1)
    deviation = noise.std(1)
    assert noise.mean().abs() < 2e-3
    assert deviation.max() <= 0.2 * 1.2 and deviation.mean() == pytest.approx(0.1, abs=0.005)
    assert (deviation < 0.05).float().mean() == pytest.approx(0.25, abs=0.04)
    same = change_photometry(images, probability=0.5, brightness=0.0, contrast=0.0, noise=0.2,
                             generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, same)                                   # seeded


def test_robust_is_light_then_photometry_and_greys_the_black_a_warp_brings_in() -> None:
    import dataclasses

    images = bar_image(256)
    light = augment_batch(images, spec=spec_for("light"), generator=torch.Generator().manual_seed(3))
    # robust with its photometric step never taken draws and warps exactly as light does (same stream order).
    never = dataclasses.replace(spec_for("robust"), photometric=1e-12)
    assert torch.equal(augment_batch(images, spec=never, generator=torch.Generator().manual_seed(3)), light)
    robust = augment_batch(images, spec=spec_for("robust"), generator=torch.Generator().manual_seed(3))
    untouched = (robust == light).flatten(1).all(1)
    # Half the images are chosen (binomial, 256 draws: 0.5 +- 0.09 at 3 sigma); the others are light's exactly.
    assert 0.4 < untouched.float().mean() < 0.6
    # A chosen image's corner, black after light's warp, is the grey paper (noise aside): greyed in most of
    # them (a background drawn near 0 with negative noise clamps back to 0), never above 0.4 + noise.
    corners = robust[~untouched, 0, 0, 0]
    assert (light[~untouched, 0, 0, 0] == 0).all()
    assert (corners > 0).float().mean() > 0.8 and corners.max() <= 0.4 + 0.5
    assert robust.min() >= 0 and robust.max() <= 1                # clamped back into the pixel range
    # A spec with no geometry applies photometry alone: the bar stays where it was (a warp would move its
    # edges), and every pixel is b + (1 - b) g x with each image's own b and g, as change_photometry draws them.
    photometric_only = AugmentSpec(photometric=1.0, brightness=0.3, contrast=0.5)
    bars = bar_image(64)
    changed = augment_batch(bars, spec=photometric_only, generator=torch.Generator().manual_seed(3))
    expected = change_photometry(bars, probability=1.0, brightness=0.3, contrast=0.5, noise=0.0,
                                 generator=torch.Generator().manual_seed(3)).clamp(0, 1)
    torch.testing.assert_close(changed, expected)
    paper, ink = changed[:, 0, 0, 0], changed[:, 0, 10, 13]           # (64,): b and b + (1 - b) g per image
    assert (changed[:, 0] == paper[:, None, None]).sum((1, 2)).eq(28 * 28 - 12 * 4).all()  # the bar alone differs
    assert (ink > paper).all() and paper.max() <= 0.3 and paper.std() > 0.05


def test_a_record_from_before_the_photometric_fields_is_the_same_level() -> None:
    """Runs trained before `robust` existed recorded light/strong without the four new fields: they resume."""
    import dataclasses

    from mnistlab.augment import augment_record, record_differences

    for name in ("light", "strong"):
        old = {k: v for k, v in augment_record(name).items()
               if k not in ("photometric", "brightness", "contrast", "noise")}
        assert record_differences(old, name) == []
    changed = {**augment_record("robust"), "brightness": 0.2}
    assert record_differences(changed, "robust") == ["brightness 0.2 -> 0.4"]
    assert dataclasses.asdict(spec_for("robust"))["noise"] == 0.1


def test_record_differences_name_each_change_and_fill_fields_the_record_lacks() -> None:
    from mnistlab.augment import REVISIONS, augment_record, record_differences

    strong = "strong"
    REVISION = REVISIONS[strong]
    record = augment_record(strong)
    assert REVISION == 3 and record["elastic_alpha"] == 1.0 and record["rotation"] == 15.0
    assert record_differences(record, strong) == []
    assert record_differences({**record, "elastic_alpha": 2.0, "revision": 2}, strong) == [
        "elastic_alpha 2.0 -> 1.0", f"revision 2 -> {REVISION}"]
    # A field added later, off by default, makes no difference; one of today's not at its default does.
    assert record_differences({k: v for k, v in record.items() if k != "elastic_sigma"}, strong) == []
    assert record_differences({k: v for k, v in record.items() if k != "stroke"}, strong) == ["stroke 0.0 -> 0.3"]
    # A key the record has and today's transform no longer knows is named too (never an empty list of changes).
    assert record_differences({**record, "blur": 1.0}, strong) == ["blur 1.0 -> None"]
    # Levels have their own revisions: strong's code changes do not refuse `none` or `light` runs.
    assert record_differences(augment_record("light"), "light") == []
    assert record_differences({}, "none") == ["revision 0 -> 1"]
    with pytest.raises(MnistlabError, match="recorded augmentation is not an object"):
        record_differences("strong", strong)


@pytest.mark.parametrize("h, w", [(28, 28), (28, 20), (7, 11)])
def test_the_broadcast_affine_grid_is_torchs(h: int, w: int) -> None:
    """Oracle: F.affine_grid (align_corners=False), which the warp used before; the same grid to fp32 rounding,
    so a run that resumes across the change continues with the same transform."""
    import torch.nn.functional as F

    theta = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(0))
    want = F.affine_grid(theta, [16, 1, h, w], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, h, w), want, rtol=0, atol=2e-6)
