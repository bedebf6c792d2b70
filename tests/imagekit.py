"""Image makers shared by the prediction, server and browser tests (independent of mnistlab.predict).

Digits are described as strokes in a unit square (x right, y down), so the same "3" can be rendered with
Pillow for the preprocessing tests and drawn with mouse events in the browser test.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, r: float, start_deg: float, end_deg: float, n: int = 24) -> Stroke:
    """Points along a circle arc; degrees with y pointing down (increasing = clockwise on screen)."""
    return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a)))
            for a in np.linspace(start_deg, end_deg, n)]


def digit_strokes(digit: int) -> list[Stroke]:
    """Hand-drawn-style strokes of a digit in the unit square."""
    if digit == 0:
        angles = np.linspace(0, 2 * math.pi, 40)
        return [[(0.5 + 0.24 * math.cos(t), 0.5 + 0.36 * math.sin(t)) for t in angles]]
    if digit == 1:
        return [[(0.42, 0.28), (0.55, 0.14), (0.55, 0.86)]]
    if digit == 3:
        # Two bowls: over the top and down to the middle, then round the right and out to the lower left.
        return [_arc(0.5, 0.32, 0.18, 200, 450) + _arc(0.5, 0.68, 0.18, 270, 520)[1:]]
    if digit == 4:
        return [[(0.62, 0.14), (0.22, 0.62), (0.80, 0.62)], [(0.62, 0.30), (0.62, 0.88)]]
    if digit == 7:
        return [[(0.22, 0.18), (0.78, 0.18), (0.44, 0.88)]]
    raise ValueError(f"no strokes for {digit}")


def render_strokes(strokes: list[Stroke], *, canvas: tuple[int, int], box: tuple[int, int, int],
                   width: int, ink: int | tuple[int, ...] = 0, paper: int | tuple[int, ...] = 255,
                   mode: str = "L") -> Image.Image:
    """Draw strokes scaled into a square of ``box=(left, top, side)`` px on a ``canvas=(w, h)`` image."""
    img = Image.new(mode, canvas, paper)
    draw = ImageDraw.Draw(img)
    left, top, side = box
    for stroke in strokes:
        points = [(left + x * side, top + y * side) for x, y in stroke]
        draw.line(points, fill=ink, width=width, joint="curve")
        r = width / 2
        for x, y in (points[0], points[-1]):  # round caps
            draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
    return img


def encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """An image's bytes in ``fmt``."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def mnist_on_paper(image: np.ndarray, *, scale: int = 4, canvas: tuple[int, int] = (360, 300),
                   at: tuple[int, int] = (30, 150)) -> Image.Image:
    """A white-on-black MNIST image as black ink on white paper, ``scale`` times larger, pasted off-centre."""
    big = Image.fromarray(255 - np.asarray(image, dtype=np.uint8)).resize(
        (28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    paper = Image.new("L", canvas, 255)
    paper.paste(big, at)
    return paper


def photo_of(image: np.ndarray, *, seed: int, scale: int = 8, canvas: tuple[int, int] = (640, 480),
             at: tuple[int, int] = (250, 120)) -> bytes:
    """A crude 'phone photo': dark pen on grey paper, uneven light, sensor noise, a dust speck, JPEG."""
    rng = np.random.default_rng(seed)
    height, width = canvas[1], canvas[0]
    yy, xx = np.mgrid[0:height, 0:width]
    paper = 150.0 + 50.0 * (xx / width) + 15.0 * (yy / height)          # light falls off to the left/top
    ink = np.zeros((height, width))
    big = np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize(
        (28 * scale, 28 * scale), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    ink[at[1]:at[1] + 28 * scale, at[0]:at[0] + 28 * scale] = big
    pixels = paper * (1.0 - 0.7 * ink) + rng.normal(0.0, 4.0, size=paper.shape)
    pixels[40:43, 40:43] = 60.0                                        # a speck of dust far from the digit
    rgb = np.clip(np.stack([pixels, pixels * 0.97, pixels * 0.9], axis=-1), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(rgb), "JPEG", quality=85)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb if anyone decoded it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def ink_box(pixels: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of the nonzero pixels."""
    rows = np.flatnonzero(pixels.any(axis=1))
    cols = np.flatnonzero(pixels.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
