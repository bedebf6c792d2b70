"""Synthetic phone photos of a digit written on a sheet of paper that lies on a darker desk.

Independent of mnistlab (numpy, scipy and Pillow only), so it can serve as a test oracle. A real MNIST digit
(white on black) becomes dark ink on a light page; the page has paper texture and a brightness gradient; it is
rotated a little and placed on a dark, plain or wood-grained desk at some offset and size; the whole frame gets
an exposure level, lens blur, sensor noise, a colour cast and JPEG compression.

:func:`clean_reference` renders the same digit, at the same rotation and scale, as plain black ink on white
paper that fills the frame: what the photo shows once the desk, paper texture and light are taken away.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass(frozen=True)
class PhotoSpec:
    """How one synthetic photo is made (all sizes are fractions, so specs work at any frame size)."""

    frame: tuple[int, int] = (640, 480)        # (width, height) of the photo
    page_side: float = 0.7                      # page's shorter side / frame's shorter side
    page_aspect: float = 1.3                    # page's longer side / shorter side (A4 is 1.41, a note ~1)
    page_centre: tuple[float, float] = (0.5, 0.5)  # page centre as a fraction of the frame (x, y)
    digit_side: float = 0.5                     # digit's 28x28 square / page's shorter side
    digit_at: tuple[float, float] = (0.5, 0.5)  # where the digit sits on the page (fraction of the free room)
    rotation: float = 0.0                       # degrees, counter-clockwise: page and digit together
    paper: float = 215.0                        # paper gray level in the brightest part
    gradient: float = 40.0                      # how much darker the paper gets across the page
    desk: float = 60.0                          # desk gray level
    grain: bool = False                         # wood-grain texture on the desk
    exposure: float = 1.0                       # multiplies the whole frame (under/over-exposed photos)
    ink: float = 0.75                           # how much light the ink absorbs (1 = black)
    seed: int = 0


def _digit_ink(digit: np.ndarray, side: int) -> np.ndarray:
    """The MNIST digit as ink coverage in [0, 1], ``side`` px square (bicubic, as a pen stroke is smooth)."""
    big = Image.fromarray(np.asarray(digit, dtype=np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float64) / 255.0


def _rotate(values: np.ndarray, degrees: float, fill: float) -> np.ndarray:
    """Rotate a float image about its centre (expanded so nothing is cut), bicubic."""
    if degrees == 0.0:
        return values
    img = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(img.rotate(degrees, Image.Resampling.BICUBIC, expand=True, fillcolor=fill),
                      dtype=np.float64)


def _page(digit: np.ndarray, spec: PhotoSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """(page gray levels, page coverage 0..1, digit side in px), the page not yet rotated."""
    short = min(spec.frame)
    page_h = max(8, round(spec.page_side * short))
    page_w = max(8, round(page_h * spec.page_aspect))
    if spec.frame[1] > spec.frame[0]:
        page_w, page_h = page_h, page_w  # a portrait frame holds a portrait page
    yy, xx = np.mgrid[0:page_h, 0:page_w]
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * xx / page_w + np.sin(direction) * yy / page_h)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
    # Paper: a light gradient, blotchy fibres (blurred noise) and fine grain.
    fibres = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (page_h, page_w)), 6.0)
    fibres *= 4.0 / max(float(fibres.std()), 1e-9)
    paper = spec.paper - spec.gradient * ramp + fibres + rng.normal(0.0, 2.0, (page_h, page_w))
    side = max(8, round(spec.digit_side * min(page_h, page_w)))
    ink = np.zeros((page_h, page_w))
    free_x, free_y = page_w - side, page_h - side
    left, top = round(spec.digit_at[0] * free_x), round(spec.digit_at[1] * free_y)
    ink[top:top + side, left:left + side] = _digit_ink(digit, side)
    return paper * (1.0 - spec.ink * ink), np.ones((page_h, page_w)), side


def _desk(spec: PhotoSpec, rng: np.random.Generator) -> np.ndarray:
    width, height = spec.frame
    desk = np.full((height, width), spec.desk)
    if spec.grain:
        yy, xx = np.mgrid[0:height, 0:width]
        warp = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (height, width)), 20.0)
        warp *= 30.0 / max(float(warp.std()), 1e-9)
        angle = rng.uniform(-0.3, 0.3)
        phase = (yy * np.cos(angle) + xx * np.sin(angle) + warp) / rng.uniform(6.0, 14.0)
        desk += 0.25 * spec.desk * np.sin(phase) + 0.1 * spec.desk * np.sin(2.7 * phase)
        desk += ndimage.gaussian_filter(rng.normal(0.0, 6.0, (height, width)), 1.5)
    return desk


def page_photo(digit: np.ndarray, spec: PhotoSpec) -> bytes:
    """JPEG bytes of a photo of ``digit`` (28x28 MNIST, white on black) written on a page lying on a desk."""
    rng = np.random.default_rng(spec.seed)
    page, coverage, _ = _page(digit, spec, rng)
    page = _rotate(page, spec.rotation, spec.paper)
    coverage = np.clip(_rotate(coverage, spec.rotation, 0.0), 0.0, 1.0)
    frame = _desk(spec, rng)
    height, width = frame.shape
    ph, pw = page.shape
    top = round(spec.page_centre[1] * height - ph / 2)
    left = round(spec.page_centre[0] * width - pw / 2)
    # Paste the (possibly larger than the frame) page, clipped to the frame.
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + ph, height), min(left + pw, width)
    if y1 > y0 and x1 > x0:
        m = coverage[y0 - top:y1 - top, x0 - left:x1 - left]
        p = page[y0 - top:y1 - top, x0 - left:x1 - left]
        frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1.0 - m) + p * m
    frame = ndimage.gaussian_filter(frame * spec.exposure, 0.8)  # lens blur
    frame += rng.normal(0.0, 3.0, frame.shape)                     # sensor noise
    tint = rng.uniform(0.9, 1.0, 3)
    rgb = np.clip(np.stack([frame * tint[0], frame * tint[1], frame * tint[2]], axis=-1), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def clean_reference(digit: np.ndarray, spec: PhotoSpec) -> bytes:
    """PNG bytes of the same digit, same size and rotation, as black ink on white paper filling the frame."""
    rng = np.random.default_rng(spec.seed)
    _, _, side = _page(digit, spec, rng)
    ink = _rotate(_digit_ink(digit, side), spec.rotation, 0.0)
    canvas = np.zeros((ink.shape[0] + 40, ink.shape[1] + 40))
    canvas[20:-20, 20:-20] = ink
    buffer = io.BytesIO()
    Image.fromarray(np.clip(255.0 * (1.0 - canvas), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def photo_specs(count: int, *, seed: int) -> list[PhotoSpec]:
    """``count`` varied, deterministic specs: offsets, page and digit sizes, rotations, light, desks."""
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(count):
        portrait = i % 5 == 4
        frame = (480, 640) if portrait else (640, 480)
        page_side = float(rng.uniform(0.35, 0.9))
        digit_side = float(rng.uniform(0.3, 0.7))
        # The page may run off one edge (a close-up), but the digit stays in the frame.
        cx, cy = (float(v) for v in rng.uniform(0.3, 0.7, 2))
        paper = float(rng.uniform(175, 245))
        spec = PhotoSpec(
            frame=frame, page_side=page_side, page_aspect=float(rng.choice([1.0, 1.2, 1.41])),
            page_centre=(cx, cy), digit_side=digit_side, digit_at=(float(rng.uniform()), float(rng.uniform())),
            rotation=float(rng.uniform(-10, 10)), paper=paper, gradient=float(rng.uniform(0, 45)),
            desk=float(rng.uniform(20, min(110.0, paper - 70))), grain=bool(i % 2),
            exposure=float(rng.uniform(0.7, 1.1)), ink=float(rng.uniform(0.65, 0.9)), seed=seed * 1000 + i)
        specs.append(_digit_in_frame(spec))
    return specs


def _digit_in_frame(spec: PhotoSpec) -> PhotoSpec:
    """Move the page so the digit's square (plus a margin for the rotation) lies inside the frame."""
    width, height = spec.frame
    short = min(spec.frame)
    page_short = spec.page_side * short
    page_w, page_h = page_short * spec.page_aspect, page_short
    if height > width:
        page_w, page_h = page_h, page_w
    side = spec.digit_side * page_short
    # Digit centre relative to the page centre (before rotation; rotation moves it by a few percent).
    dx = spec.digit_at[0] * (page_w - side) + side / 2 - page_w / 2
    dy = spec.digit_at[1] * (page_h - side) + side / 2 - page_h / 2
    margin = 0.75 * side
    cx = min(max(spec.page_centre[0] * width + dx, margin), width - margin) - dx
    cy = min(max(spec.page_centre[1] * height + dy, margin), height - margin) - dy
    return replace(spec, page_centre=(cx / width, cy / height))
