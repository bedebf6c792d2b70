"""Batch augmentation on the device: random affine warps (rotation, scale, shear, translation), optional
elastic distortion and stroke-width changes, and optional photometric changes (a grey background, faded ink,
sensor noise), applied to a whole float batch in a few batched ops.

Users draw digits that MNIST never shows: slanted, thicker or thinner, smaller, off-centre. Training on
randomly warped copies makes a model robust to that. Everything here is batched tensor work (one
``affine_grid`` + ``grid_sample`` per batch; the elastic field is one blurred noise tensor; stroke changes are
one max-pool), seeded through a ``torch.Generator`` so a run is reproducible, and no per-image Python loop.

Geometry: :func:`warp` moves image *content*: a translation of ``(+2, 0)`` pixels moves the ink 2 columns to
the right; ``scale`` 1.1 makes it 10% larger around the centre; ``rotation`` is in degrees, positive
turning the digit clockwise as displayed (rows grow downward).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mnistlab.config import AUGMENT_NAMES
from mnistlab.errors import MnistlabError


@dataclass(frozen=True)
class AugmentSpec:
    """Ranges of the random transforms; each image draws its own values uniformly within them."""

    rotation: float = 0.0            # degrees, drawn in [-rotation, rotation]
    scale: float = 0.0               # relative, drawn in [1 - scale, 1 + scale]
    shear: float = 0.0               # degrees of horizontal shear, in [-shear, shear]
    translate: float = 0.0           # pixels in each direction, in [-translate, translate]
    elastic_alpha: float = 0.0       # pixels of elastic displacement (0: off)
    elastic_sigma: float = 3.0       # smoothness of the elastic field, pixels
    stroke: float = 0.0              # probability of thickening or thinning an image's strokes (half each)
    photometric: float = 0.0         # probability that an image gets the three changes below (0: off)
    brightness: float = 0.0          # grey background: level drawn in [0, brightness], ink scaled to fit above it
    contrast: float = 0.0            # faded ink: the ink's strength scaled by a factor in [1 - contrast, 1]
    noise: float = 0.0               # sensor noise: Gaussian with a standard deviation drawn in [0, noise]

    def __post_init__(self) -> None:
        values = (self.rotation, self.scale, self.shear, self.translate, self.elastic_alpha, self.stroke,
                  self.photometric, self.brightness, self.contrast, self.noise)
        if (any(not math.isfinite(v) or v < 0 for v in values) or self.scale >= 1 or self.stroke > 1
                or self.photometric > 1 or self.brightness >= 1 or self.contrast >= 1 or self.noise > 1):
            raise MnistlabError("augmentation ranges must be finite and >= 0, with scale, brightness and contrast "
                                f"< 1 and stroke, photometric and noise <= 1; got {self}")
        if self.elastic_sigma <= 0:
            raise MnistlabError(f"augmentation elastic_sigma must be > 0, got {self.elastic_sigma}")

    @property
    def has_geometry(self) -> bool:
        """True when the spec moves pixels (a warp, an elastic field or a stroke change)."""
        return any((self.rotation, self.scale, self.shear, self.translate, self.elastic_alpha, self.stroke))

    @property
    def has_photometric(self) -> bool:
        """True when the spec changes pixel values in place (background, ink strength or noise)."""
        return self.photometric > 0 and any((self.brightness, self.contrast, self.noise))

    @property
    def is_identity(self) -> bool:
        """True when nothing would change: no geometry, and no photometric change that is ever applied."""
        return not (self.has_geometry or self.has_photometric)


# light: what a careful writer varies (slant, size, position); strong: adds elastic wobble and pen width.
# The elastic field is 1 px RMS: at 2 px (sigma 3) an unaugmented `best` run misread 14.5% of the warped
# *training* digits (1 px: 0.9%, light: 0.8%), i.e. the warp changed what many digits are.
# robust: light's geometry, and half the images as a photograph of paper shows them: a grey background up to
# 40% (ink rescaled into what is left), ink faded to half strength at most, sensor noise up to 0.1 RMS. MNIST
# itself is clean white-on-black, so a model trained on it reads any grey background as ink. These ranges were
# fixed from that description, not tuned on the corruption benchmark. Clean accuracy drops a little: on the
# validation split `best` scored 0.02-0.03 point below light (within noise), and a 3-epoch `cnn` lost 0.6
# point on the test set (benchmarks/RESULTS.md).
LEVELS: dict[str, AugmentSpec] = {
    "none": AugmentSpec(),
    "light": AugmentSpec(rotation=10.0, scale=0.1, shear=8.0, translate=2.0),
    "strong": AugmentSpec(rotation=15.0, scale=0.15, shear=12.0, translate=3.0, elastic_alpha=1.0,
                          elastic_sigma=3.0, stroke=0.3),
    "robust": AugmentSpec(rotation=10.0, scale=0.1, shear=8.0, translate=2.0, photometric=0.5,
                          brightness=0.4, contrast=0.5, noise=0.1),
}


# Each level's revision, bumped whenever its transform's *code* changes what it draws or does for the same
# ranges (the ranges are recorded beside it). strong 2: its stroke change became a 2x2 element at a random
# corner (from 3x3; it also draws one more number per batch); strong 3: its elastic field 2 px -> 1 px RMS.
REVISIONS: dict[str, int] = {"none": 1, "light": 1, "strong": 3, "robust": 1}


def augment_record(name: str) -> dict[str, Any]:
    """What a run's config.json records of its augmentation level: its revision and its ranges."""
    return {"revision": REVISIONS[name], **dataclasses.asdict(spec_for(name))}


def record_differences(recorded: object, name: str) -> list[str]:
    """How a recorded :func:`augment_record` differs from level ``name`` today, one ``"key old -> new"`` each.

    A field missing from the record (added after it was written) counts as its default, so a new transform
    that is off by default does not make older runs different; a record that is not a mapping is refused.
    """
    if not isinstance(recorded, dict):
        raise MnistlabError(f"the run's recorded augmentation is not an object ({type(recorded).__name__}); "
                            "its config.json was edited or damaged; train a new run")
    today = augment_record(name)
    before = {**dataclasses.asdict(AugmentSpec()), "revision": 0, **recorded}
    return [f"{key} {before.get(key)!r} -> {today.get(key)!r}"
            for key in sorted(set(today) | set(before)) if before.get(key) != today.get(key)]


def spec_for(name: str) -> AugmentSpec:
    """The :class:`AugmentSpec` of a level name (one of :data:`mnistlab.config.AUGMENT_NAMES`)."""
    if name not in LEVELS:
        raise MnistlabError(f"`augment` {name!r} is not one of {', '.join(AUGMENT_NAMES)}")
    return LEVELS[name]


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, [B, 1, h, w], align_corners=False)`` (B, h, w, 2), computed by broadcasting.

    torch's version multiplies a (h*w, 3) grid by every (3, 2) matrix through a batched matmul, which on the CPU
    took 1.6 ms for a batch of 200 (70% of light augmentation); two multiply-adds per coordinate take a tenth of
    that. Pixel centres in normalised coordinates, as align_corners=False places them: (2i + 1) / n - 1.
    """
    xs = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1                  # (W,)
    ys = (torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1                  # (H,)
    t = theta.unsqueeze(-1).unsqueeze(-1)                                                            # (B, 2, 3, 1, 1)
    grid = t[:, :, 0] * xs + t[:, :, 1] * ys.unsqueeze(-1) + t[:, :, 2]                              # (B, 2, H, W)
    return grid.permute(0, 2, 3, 1)                                                                  # (B, H, W, 2)


def warp(batch: torch.Tensor, *, rotation: torch.Tensor, scale: torch.Tensor, shear: torch.Tensor,
         translate: torch.Tensor, displacement: torch.Tensor | None = None) -> torch.Tensor:
    """Apply per-image affine transforms (and an optional elastic field) to ``batch`` (B, 1, H, W) float.

    ``rotation``/``shear`` in degrees (B,), ``scale`` (B,), ``translate`` (B, 2) pixels as (columns, rows);
    ``displacement`` (B, H, W, 2) in pixels, added to the sampling grid. Outside the image is black (0).
    """
    b, _, h, w = batch.shape
    angle, skew = torch.deg2rad(rotation), torch.deg2rad(shear)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Forward map of the content, in normalised coordinates: rotate(scale(shear(p))). affine_grid wants the
    # inverse (output position -> where to sample), so invert the 2x2 part and the translation.
    forward = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)           # (B, 2, 2)
    shear_m = torch.stack([torch.stack([torch.ones_like(skew), torch.tan(skew)], -1),
                           torch.stack([torch.zeros_like(skew), torch.ones_like(skew)], -1)], -2)
    forward = forward @ shear_m * scale.view(b, 1, 1)
    inverse = torch.linalg.inv(forward)
    shift = torch.stack([2.0 * translate[:, 0] / w, 2.0 * translate[:, 1] / h], -1)                 # (B, 2)
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], dim=2)                            # (B, 2, 3)
    grid = affine_grid(theta.to(batch.dtype), h, w)                                                  # (B, H, W, 2)
    if displacement is not None:
        grid = grid + displacement * torch.tensor([2.0 / w, 2.0 / h], device=batch.device, dtype=batch.dtype)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return kernel / kernel.sum()


def elastic_field(b: int, h: int, w: int, *, alpha: float, sigma: float, generator: torch.Generator,
                  device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A smooth random displacement field (B, H, W, 2) in pixels (Simard et al. 2003): noise blurred by a
    Gaussian of ``sigma`` pixels, scaled so its RMS is about ``alpha`` pixels."""
    noise = torch.rand((b * 2, 1, h, w), generator=generator, device=device, dtype=dtype) * 2 - 1
    kernel = _gaussian_kernel(sigma, device, dtype)
    k = kernel.numel()
    smooth = F.conv2d(F.pad(noise, (k // 2, k // 2, 0, 0), mode="reflect"), kernel.view(1, 1, 1, k))
    smooth = F.conv2d(F.pad(smooth, (0, 0, k // 2, k // 2), mode="reflect"), kernel.view(1, 1, k, 1))
    rms = smooth.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-8)
    return (smooth / rms * alpha).view(b, 2, h, w).permute(0, 2, 3, 1)


def change_strokes(batch: torch.Tensor, *, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Thicken (grey dilation) or thin (grey erosion) the strokes of a random share of the images by one pixel.

    The structuring element is 2x2, one pixel wider or narrower along each axis, not 3x3 (two pixels): MNIST's
    strokes are 2-3 px wide, and a 3x3 erosion keeps a median 12% of a digit's ink and leaves about a fifth of
    the digits below half contrast, training on near-blank images (measured on the training split; a 2x2
    erosion keeps about half and fades almost none). A 2x2 element has no centre, so each image draws which
    corner anchors it: the ink's centre moves half a pixel in a random direction, not always up-left.
    """
    b = batch.shape[0]
    draw = torch.rand((b,), generator=generator, device=batch.device)
    corner = torch.randint(0, 4, (b,), generator=generator, device=batch.device).view(b, 1, 1, 1)
    thicker = (draw < probability / 2).view(b, 1, 1, 1)
    thinner = ((draw >= probability / 2) & (draw < probability)).view(b, 1, 1, 1)
    # grow[:, :, i, j] = max of the 2x2 window whose top-left is (i - 1, j - 1) in the input; each corner's
    # window around pixel (i, j) is one crop of it.
    grow = F.max_pool2d(F.pad(batch, (1, 1, 1, 1)), 2, stride=1)               # (B, 1, H + 1, W + 1)
    shrink = -F.max_pool2d(F.pad(-batch, (1, 1, 1, 1)), 2, stride=1)   # outside the image is background
    h, w = batch.shape[-2:]

    def crop(values: torch.Tensor) -> torch.Tensor:
        corners = [values[..., dr:dr + h, dc:dc + w] for dr in (0, 1) for dc in (0, 1)]
        out = corners[0]
        for index in range(1, 4):
            out = torch.where(corner == index, corners[index], out)
        return out

    dilated, eroded = crop(grow), crop(shrink)
    return torch.where(thicker, dilated, torch.where(thinner, eroded, batch))


def change_photometry(batch: torch.Tensor, *, probability: float, brightness: float, contrast: float, noise: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Make a random share of the images look photographed: grey paper, faded ink, sensor noise.

    Each chosen image draws a background level ``b`` in [0, brightness], an ink factor ``g`` in
    [1 - contrast, 1] and a noise deviation ``s`` in [0, noise]; a pixel ``x`` (0 background, 1 ink) becomes
    ``b + (1 - b) g x + s n`` with ``n`` standard normal, so the background reads ``b`` and full ink
    ``b + (1 - b) g``: the ink stays brighter than the paper. The other images are returned unchanged (the
    caller clamps to [0, 1]).
    """
    b = batch.shape[0]
    device, dtype = batch.device, batch.dtype
    draws = torch.rand((4, b, 1, 1, 1), generator=generator, device=device, dtype=dtype)
    chosen = (draws[0] < probability).to(dtype)
    background = draws[1] * (brightness * chosen)
    gain = 1.0 - draws[2] * (contrast * chosen)
    out = background + (1.0 - background) * gain * batch
    if noise > 0:
        sigma = draws[3] * (noise * chosen)
        out = out + sigma * torch.randn(batch.shape, generator=generator, device=device, dtype=dtype)
    return out


def augment_batch(batch: torch.Tensor, *, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """A randomly transformed copy of ``batch`` (B, 1, 28, 28) float in [0, 1], drawn from ``generator``."""
    if spec.is_identity:
        return batch
    b, _, h, w = batch.shape
    device, dtype = batch.device, batch.dtype

    def uniform(*shape: int, bound: float) -> torch.Tensor:
        return (torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2 - 1) * bound

    out = batch.contiguous()
    if spec.has_geometry:
        displacement = None
        if spec.elastic_alpha > 0:
            displacement = elastic_field(b, h, w, alpha=spec.elastic_alpha, sigma=spec.elastic_sigma,
                                         generator=generator, device=device, dtype=dtype)
        out = warp(out, rotation=uniform(b, bound=spec.rotation), scale=1 + uniform(b, bound=spec.scale),
                   shear=uniform(b, bound=spec.shear), translate=uniform(b, 2, bound=spec.translate),
                   displacement=displacement)
        if spec.stroke > 0:
            out = change_strokes(out, probability=spec.stroke, generator=generator)
    if spec.has_photometric:
        # After the geometry: the paper is grey everywhere, including where the warp brought in black.
        out = change_photometry(out, probability=spec.photometric, brightness=spec.brightness,
                                contrast=spec.contrast, noise=spec.noise, generator=generator)
    return out.clamp_(0.0, 1.0).contiguous(memory_format=torch.channels_last
                                             if batch.is_contiguous(memory_format=torch.channels_last)
                                             else torch.contiguous_format)
