"""Hand-designed stroke templates for the digits 0-9 and their seeded random jitter (no browser here).

A template is a digit written the way people write it: a list of strokes (pen down ... pen up), each stroke a
list of sections, each section either a smooth curve through its control points (Catmull-Rom) or straight
lines between them. Coordinates are in a unit square, x to the right, y down; the digit roughly fills
x 0.2..0.8, y 0.1..0.9. Several variants per digit (open and closed 4, crossed 7, flag-and-base 1, ...).

:func:`jittered` turns a template into pad coordinates (the page's 280x280 canvas pixels) with, all drawn
from one seeded ``numpy.random.Generator``: Gaussian noise on every control point, slant (shear), a small
rotation, scale and aspect, position on the pad, and extra passes of each stroke offset by a few pixels (the
page's pen is a fixed 20 px; a second pass beside the first makes a wider stroke). :class:`Drawing` also
carries the drawing speed (mouse steps per segment), which is how fast the browser moves the mouse.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Point = tuple[float, float]
SectionKind = Literal["curve", "lines"]
Section = tuple[SectionKind, tuple[Point, ...]]
Stroke = tuple[Section, ...]
Template = tuple[Stroke, ...]

PAD = 280.0  # the page's canvas side in canvas pixels (index.html: <canvas id="pad" width="280" height="280">)
PEN = 20.0   # the page's pen width (app.js PEN_WIDTH), in canvas pixels


def _c(*points: Point) -> Section:
    return ("curve", points)


def _l(*points: Point) -> Section:
    return ("lines", points)


def _ellipse(cx: float, cy: float, rx: float, ry: float, *, start: float = -90.0, sweep: float = 380.0,
             n: int = 10) -> Section:
    """A smooth arc of an ellipse through ``n`` control points (degrees, y down: clockwise on screen)."""
    angles = np.radians(np.linspace(start, start + sweep, n))
    return _c(*((cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles))


TEMPLATES: dict[int, tuple[Template, ...]] = {
    0: (
        (( _ellipse(0.5, 0.5, 0.24, 0.38),),),
        (( _ellipse(0.5, 0.5, 0.2, 0.4, start=-120, sweep=370),),),
        (( _c((0.55, 0.1), (0.3, 0.25), (0.27, 0.65), (0.45, 0.9), (0.7, 0.7), (0.72, 0.3), (0.52, 0.1),
              (0.4, 0.16)),),),
    ),
    1: (
        ((_l((0.5, 0.1), (0.5, 0.9)),),),
        ((_l((0.34, 0.3), (0.55, 0.1), (0.55, 0.9)),),),
        ((_l((0.36, 0.28), (0.54, 0.1), (0.54, 0.9)),), (_l((0.38, 0.9), (0.7, 0.9)),)),
    ),
    2: (
        ((_c((0.25, 0.3), (0.38, 0.12), (0.6, 0.12), (0.72, 0.3), (0.62, 0.52), (0.24, 0.88)),
          _l((0.24, 0.88), (0.78, 0.88))),),
        ((_c((0.26, 0.25), (0.5, 0.1), (0.72, 0.24), (0.6, 0.5), (0.3, 0.82)),
          _c((0.3, 0.82), (0.22, 0.9), (0.4, 0.86), (0.6, 0.9), (0.8, 0.86))),),
        ((_c((0.24, 0.32), (0.34, 0.12), (0.62, 0.1), (0.72, 0.32), (0.45, 0.65), (0.25, 0.88)),
          _c((0.25, 0.88), (0.3, 0.78), (0.42, 0.8), (0.55, 0.9), (0.78, 0.85))),),
    ),
    3: (
        ((_c((0.26, 0.2), (0.45, 0.1), (0.7, 0.2), (0.64, 0.42), (0.42, 0.48)),
          _c((0.42, 0.48), (0.7, 0.56), (0.72, 0.8), (0.5, 0.9), (0.24, 0.8))),),
        ((_l((0.26, 0.12), (0.72, 0.12), (0.45, 0.42)),
          _c((0.45, 0.42), (0.7, 0.52), (0.7, 0.8), (0.48, 0.9), (0.25, 0.82))),),
        ((_c((0.3, 0.22), (0.5, 0.1), (0.68, 0.25), (0.5, 0.46)),
          _c((0.5, 0.46), (0.36, 0.5), (0.5, 0.5), (0.72, 0.66), (0.6, 0.88), (0.3, 0.85))),),
    ),
    4: (
        ((_l((0.6, 0.1), (0.2, 0.62), (0.8, 0.62)),), (_l((0.62, 0.32), (0.62, 0.9)),)),
        ((_l((0.3, 0.1), (0.24, 0.55), (0.75, 0.55)),), (_l((0.66, 0.1), (0.64, 0.9)),)),
        ((_l((0.32, 0.12), (0.26, 0.56), (0.7, 0.52)),), (_l((0.7, 0.14), (0.68, 0.9)),)),
    ),
    5: (
        ((_l((0.7, 0.12), (0.32, 0.12), (0.28, 0.45)),
          _c((0.28, 0.45), (0.52, 0.4), (0.72, 0.6), (0.62, 0.85), (0.3, 0.86))),),
        ((_l((0.32, 0.12), (0.28, 0.46)), _c((0.28, 0.46), (0.5, 0.42), (0.72, 0.62), (0.6, 0.88), (0.26, 0.84))),
         (_l((0.32, 0.12), (0.72, 0.12)),)),
        ((_l((0.34, 0.14), (0.3, 0.48)), _c((0.3, 0.48), (0.62, 0.44), (0.7, 0.72), (0.5, 0.9), (0.28, 0.8))),
         (_c((0.34, 0.14), (0.5, 0.1), (0.74, 0.12)),)),
    ),
    6: (
        ((_c((0.65, 0.12), (0.4, 0.25), (0.28, 0.6), (0.42, 0.88), (0.68, 0.78), (0.64, 0.56), (0.4, 0.56),
             (0.3, 0.7)),),),
        ((_c((0.6, 0.1), (0.32, 0.45), (0.3, 0.8), (0.5, 0.9), (0.7, 0.72), (0.5, 0.55), (0.32, 0.68)),),),
        ((_c((0.7, 0.18), (0.5, 0.1), (0.3, 0.35), (0.3, 0.75), (0.5, 0.9), (0.7, 0.75), (0.6, 0.55),
             (0.36, 0.6)),),),
    ),
    7: (
        ((_l((0.22, 0.14), (0.78, 0.14), (0.42, 0.9)),),),
        ((_l((0.22, 0.16), (0.76, 0.14), (0.45, 0.9)),), (_l((0.36, 0.5), (0.72, 0.5)),)),
        ((_l((0.24, 0.22), (0.28, 0.14), (0.76, 0.14)), _c((0.76, 0.14), (0.6, 0.4), (0.5, 0.65), (0.46, 0.9))),),
    ),
    8: (
        ((_c((0.68, 0.22), (0.5, 0.1), (0.3, 0.22), (0.4, 0.42), (0.68, 0.62), (0.62, 0.86), (0.38, 0.88),
             (0.3, 0.66), (0.62, 0.4), (0.68, 0.22), (0.56, 0.12)),),),
        ((_ellipse(0.5, 0.3, 0.17, 0.18, start=90, sweep=360),), (_ellipse(0.5, 0.68, 0.21, 0.21, start=-90,
                                                                           sweep=370),)),
        ((_c((0.5, 0.48), (0.3, 0.32), (0.45, 0.1), (0.66, 0.24), (0.52, 0.46), (0.3, 0.66), (0.46, 0.9),
             (0.7, 0.72), (0.5, 0.48)),),),
    ),
    9: (
        ((_c((0.68, 0.28), (0.5, 0.12), (0.3, 0.28), (0.38, 0.48), (0.6, 0.44), (0.68, 0.28)),
          _l((0.68, 0.28), (0.66, 0.9))),),
        ((_c((0.66, 0.22), (0.46, 0.1), (0.3, 0.3), (0.46, 0.5), (0.68, 0.36), (0.68, 0.2)),
          _c((0.68, 0.2), (0.66, 0.55), (0.58, 0.78), (0.42, 0.9))),),
        ((_ellipse(0.48, 0.3, 0.19, 0.19, start=0, sweep=360),), (_l((0.67, 0.28), (0.64, 0.9)),)),
    ),
}


@dataclass(frozen=True)
class Jitter:
    """Ranges of the random variations (uniform unless said otherwise); the defaults made the stored set."""

    point_sigma: float = 0.025          # Gaussian noise on each control point (unit square)
    slant: tuple[float, float] = (-0.35, 0.35)  # horizontal shear: x += slant * (0.5 - y)
    rotation_deg: tuple[float, float] = (-10.0, 10.0)
    height: tuple[float, float] = (90.0, 250.0)  # the digit's height on the pad, canvas pixels
    aspect: tuple[float, float] = (0.75, 1.25)   # width scale relative to height
    passes: tuple[int, ...] = (1, 1, 1, 2, 2, 3)  # strokes drawn this many times (one picked at random)
    pass_offset: tuple[float, float] = (3.0, 7.0)  # distance of extra passes from the first, canvas pixels
    spacing: float = 10.0               # distance between the points the mouse is moved to, canvas pixels
    steps: tuple[int, ...] = (1, 1, 2, 3)   # mouse.move steps between those points (drawing speed)
    margin: float = 6.0                 # keep the ink this far (plus half the pen) inside the pad


JITTER = Jitter()


@dataclass(frozen=True)
class Drawing:
    """One jittered digit: strokes in pad coordinates (canvas pixels), in drawing order, and how it was made."""

    digit: int
    variant: int
    strokes: tuple[tuple[Point, ...], ...]
    steps: int                          # playwright mouse.move steps between consecutive points
    params: dict[str, float]


def _catmull_rom(points: np.ndarray, *, per_segment: int = 8) -> np.ndarray:
    """Points along a centripetal-free (uniform) Catmull-Rom spline through ``points`` (end tangents mirrored)."""
    if len(points) < 3:
        return points
    padded = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    out = [points[0]]
    t = np.linspace(0.0, 1.0, per_segment + 1)[1:, None]
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        out.extend(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    return np.asarray(out)


def _dense_lines(points: np.ndarray, *, spacing: float = 0.04) -> np.ndarray:
    """Straight segments between points, sampled every ``spacing`` (so jitter and warps bend them evenly)."""
    out = [points[0]]
    for a, b in itertools.pairwise(points):
        n = max(1, math.ceil(float(np.hypot(*(b - a))) / spacing))
        out.extend(a + (b - a) * (k / n) for k in range(1, n + 1))
    return np.asarray(out)


def _resample(path: np.ndarray, *, spacing: float) -> np.ndarray:
    """Points every ``spacing`` along a polyline (arc length), keeping both ends: what the mouse moves to."""
    lengths = np.hypot(*np.diff(path, axis=0).T)
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    total = float(along[-1])
    if total <= 0:
        return path[:1]
    where = np.linspace(0.0, total, max(2, math.ceil(total / spacing) + 1))
    return np.column_stack([np.interp(where, along, path[:, 0]), np.interp(where, along, path[:, 1])])


def jittered(digit: int, *, rng: np.random.Generator, jitter: Jitter | None = None) -> Drawing:
    """A random variant of ``digit`` with random jitter, as strokes on the 280x280 pad (seeded by ``rng``)."""
    jitter = JITTER if jitter is None else jitter
    variant = int(rng.integers(len(TEMPLATES[digit])))
    template = TEMPLATES[digit][variant]
    slant = float(rng.uniform(*jitter.slant))
    rotation = math.radians(float(rng.uniform(*jitter.rotation_deg)))
    height = float(rng.uniform(*jitter.height))
    aspect = float(rng.uniform(*jitter.aspect))
    passes = int(rng.choice(jitter.passes))
    steps = int(rng.choice(jitter.steps))
    unit_strokes: list[np.ndarray] = []
    for stroke in template:
        pieces: list[np.ndarray] = []
        shared: np.ndarray | None = None  # sections share endpoints: the noise of a joint is applied once
        for kind, raw in stroke:
            points = np.asarray(raw, dtype=np.float64)
            noisy = points + rng.normal(0.0, jitter.point_sigma, size=points.shape)
            if shared is not None:
                noisy[0] = shared
            shared = noisy[-1].copy()
            path = _catmull_rom(noisy) if kind == "curve" else _dense_lines(noisy)
            pieces.append(path if not pieces else path[1:])
        unit_strokes.append(np.vstack(pieces))
    # Geometry: centre on the template's box, slant, rotate, scale, then place on the pad.
    cos, sin = math.cos(rotation), math.sin(rotation)
    shaped = []
    for path in unit_strokes:
        x, y = path[:, 0] - 0.5, path[:, 1] - 0.5
        x = x - slant * y
        x, y = x * aspect * height / 0.8, y * height / 0.8
        shaped.append(np.column_stack([cos * x - sin * y, sin * x + cos * y]))
    every = np.vstack(shaped)
    low, high = every.min(axis=0), every.max(axis=0)
    reach = PEN / 2 + jitter.margin + (jitter.pass_offset[1] if passes > 1 else 0.0)
    span = high - low
    fit = min(1.0, float(np.min((PAD - 2 * reach) / np.maximum(span, 1e-9))))
    shaped = [path * fit for path in shaped]  # a digit too large for the pad after rotation is shrunk to fit
    low, high = low * fit, high * fit
    first, last = reach - low, np.maximum(reach - low, PAD - reach - high)  # equal when the digit fills the pad
    origin = np.array([rng.uniform(first[0], last[0]), rng.uniform(first[1], last[1])])
    strokes: list[tuple[Point, ...]] = []
    for path in shaped:
        placed = path + origin
        offsets = [np.zeros(2)]
        for _ in range(passes - 1):
            angle = rng.uniform(0.0, 2 * math.pi)
            offsets.append(rng.uniform(*jitter.pass_offset) * np.array([math.cos(angle), math.sin(angle)]))
        for offset in offsets:
            moved = _resample(np.clip(placed + offset, 1.0, PAD - 1.0), spacing=jitter.spacing)
            strokes.append(tuple((float(px), float(py)) for px, py in np.round(moved, 2)))
    params = {"slant": round(slant, 4), "rotation_deg": round(math.degrees(rotation), 3),
              "height_px": round(height * fit, 2), "aspect": round(aspect, 4), "passes": float(passes),
              "steps": float(steps)}
    return Drawing(digit=digit, variant=variant, strokes=tuple(strokes), steps=steps, params=params)
