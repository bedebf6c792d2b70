"""Digits rendered from the machine's TrueType fonts with Pillow, in varied weights, sizes, slants and rotations.

Each image is made from its own seed (``numpy.random.default_rng([seed, index])``), so any one image can be
made again alone (the tests do). A render: the digit's glyph at a random size, with an extra outline of
0-3 px (``ImageDraw.text(stroke_width=...)``: heavier than the font's own weight), sheared (slant) and rotated
by small random amounts, placed at a random position in an 80x80 field, as either

* ``ink``: white ink on black, the way MNIST stores digits, or
* ``photo``: dark ink on light paper, like a crop of a phone photo: a paper level with a light gradient,
  ink that is not quite black, a slight blur and sensor noise.

Fonts whose digit glyphs are missing (tofu boxes) or not distinct are skipped (:func:`usable_fonts`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Style = Literal["ink", "photo"]
FIELD = 80  # side of a stored font image, pixels
FONT_DIRS = (Path("/usr/share/fonts"),)


@dataclass(frozen=True)
class FontJitter:
    """Ranges of the random variations (uniform); the defaults made the stored set."""

    size: tuple[float, float] = (26.0, 64.0)    # font size in px (the glyph's height is about 0.73 of it)
    outline: tuple[int, ...] = (0, 0, 0, 1, 1, 2, 3)  # extra stroke width in px (weight)
    shear: tuple[float, float] = (-0.35, 0.35)  # horizontal shear (slant)
    rotation_deg: tuple[float, float] = (-12.0, 12.0)
    photo_share: float = 0.25                   # fraction rendered as dark-on-light photos
    noise_sigma: tuple[float, float] = (0.0, 0.8)  # a photo's sensor noise, gray levels (noise is costly to store)


FONT_JITTER = FontJitter()


@dataclass(frozen=True)
class FontRender:
    """One rendered digit (uint8, FIELD x FIELD) and how it was made."""

    digit: int
    font: str              # the font file's name
    style: Style
    pixels: np.ndarray
    params: dict[str, float]


def find_fonts(dirs: tuple[Path, ...] = FONT_DIRS) -> list[Path]:
    """TrueType/OpenType font files under ``dirs``, sorted by name (the order the generator draws from)."""
    found = {p for d in dirs if d.is_dir() for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf")}
    return sorted(found, key=lambda p: (p.name, str(p)))


def _glyph(path: Path, digit: int, size: int = 40) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(path), size)
    img = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(img).text((size // 2, size // 4), str(digit), fill=255, font=font)
    return np.asarray(img)


def usable_fonts(paths: list[Path]) -> list[Path]:
    """The fonts that render ten distinct, non-empty digit glyphs (others are math or symbol fonts, or tofu)."""
    usable = []
    for path in paths:
        try:
            glyphs = [_glyph(path, d) for d in range(10)]
        except OSError:  # not a font Pillow/FreeType can open
            continue
        digests = {hashlib.sha256(g.tobytes()).hexdigest() for g in glyphs}
        if all(g.max() > 0 for g in glyphs) and len(digests) == 10:
            usable.append(path)
    return usable


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file (the manifest records each font's, so a different version is detected)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render(digit: int, *, font_path: Path, rng: np.random.Generator, jitter: FontJitter | None = None
           ) -> FontRender:
    """Render ``digit`` in ``font_path`` with random size, weight, slant, rotation, position and style."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    jitter = FONT_JITTER if jitter is None else jitter
    size = round(rng.uniform(*jitter.size))
    # A thick outline on a small glyph fills its counters (a 9 becomes a blob): at most 6% of the size.
    outline = min(int(rng.choice(jitter.outline)), int(0.06 * size))
    shear = float(rng.uniform(*jitter.shear))
    rotation = float(rng.uniform(*jitter.rotation_deg))
    style: Style = "photo" if rng.random() < jitter.photo_share else "ink"
    font = ImageFont.truetype(str(font_path), size)
    work = 3 * FIELD
    glyph = Image.new("L", (work, work), 0)
    ImageDraw.Draw(glyph).text((work / 2, work / 2), str(digit), fill=255, font=font, anchor="mm",
                               stroke_width=outline, stroke_fill=255)
    # Shear about the centre: x' = x + shear * (y - c); Pillow's affine maps output to input coordinates.
    centre = work / 2
    glyph = glyph.transform((work, work), Image.Transform.AFFINE,
                            (1.0, shear, -shear * centre, 0.0, 1.0, 0.0), resample=Image.Resampling.BICUBIC)
    glyph = glyph.rotate(rotation, resample=Image.Resampling.BICUBIC, center=(centre, centre))
    ink = np.asarray(glyph)
    rows, cols = np.flatnonzero(ink.max(axis=1)), np.flatnonzero(ink.max(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = ink[top:bottom, left:right]
    longer = max(crop.shape)
    if longer > FIELD - 4:  # a large glyph after shear/rotation: shrink it into the field
        scale = (FIELD - 4) / longer
        crop = np.asarray(Image.fromarray(crop).resize(
            (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
            Image.Resampling.LANCZOS))
    height, width = crop.shape
    row = int(rng.integers(2, FIELD - 2 - height + 1))
    col = int(rng.integers(2, FIELD - 2 - width + 1))
    field = np.zeros((FIELD, FIELD), dtype=np.float64)
    field[row:row + height, col:col + width] = crop / 255.0
    params = {"size": float(size), "outline": float(outline), "shear": round(shear, 4),
              "rotation_deg": round(rotation, 3)}
    if style == "ink":
        pixels = np.rint(field * 255.0).astype(np.uint8)
    else:
        paper = float(rng.uniform(170.0, 235.0))
        ink_level = float(rng.uniform(10.0, 80.0))
        angle = float(rng.uniform(0.0, 2 * math.pi))
        light = float(rng.uniform(0.0, 30.0))  # the paper brightens by up to this across the field
        yy, xx = np.mgrid[0:FIELD, 0:FIELD] / (FIELD - 1)
        gradient = light * (math.cos(angle) * (xx - 0.5) + math.sin(angle) * (yy - 0.5))
        blurred = np.asarray(Image.fromarray(np.rint(field * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0)))), dtype=np.float64) / 255.0
        levels = (paper + gradient) * (1.0 - blurred) + ink_level * blurred
        noise_sigma = float(rng.uniform(*jitter.noise_sigma))
        levels += rng.normal(0.0, noise_sigma, size=levels.shape)
        pixels = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
        params |= {"paper": round(paper, 2), "ink": round(ink_level, 2), "light": round(light, 2),
                   "noise_sigma": round(noise_sigma, 3)}
    return FontRender(digit=digit, font=font_path.name, style=style, pixels=pixels, params=params)
