"""MNIST-C-style corruptions of uint8 digit batches, and the robustness report that scores a run under them.

The set and each one's strength follow Mu & Gilmer (2019), "MNIST-C: A Robustness Benchmark for Computer
Vision" (the severity the paper's dataset was built with), implemented here from their descriptions in
numpy/scipy, batched over N x 28 x 28 images:

=============  ============================================================================================
shot_noise     Poisson photon noise, 3 photons at full ink: a pixel x in [0, 1] becomes Poisson(3x)/3
               (variance x/3), clipped to 1.
impulse_noise  salt and pepper: 17% of the pixels, chosen at random, become 0 or 255 (half each).
glass_blur     Gaussian blur (sigma 0.7 px), then each pixel takes the value of a random neighbour at most
               1 px away (twice), then the blur again.
motion_blur    a one-sided trail: the image averaged with itself shifted 1..10 px along a random direction
               in [-45, 45] degrees, weights exp(-d^2 / (2 * 3^2)) (a Gaussian trail of sigma 3 px).
shear          horizontal shear about the centre: x' = x + k (y - 13.5), k = +-0.4 (sign random per image).
scale          the digit shrunk to 70% about the image centre.
rotate         rotation about the centre by +-0.4 rad (22.9 degrees; sign random per image).
translate      a shift of 3 px in x and 3 px in y (each sign random per image).
brightness     +0.5 (of full scale) added to every pixel, clipped: the background becomes 128 grey.
stripe         columns 0-6 and 21-27 inverted (255 - x).
fog            a fractal (1/f^1.5) cloud of strength 3 added, then rescaled to the ink's range:
               out = (x + 3 f) * max(x) / (max(x) + 3), so the digit keeps 1/4 of its contrast.
spatter        mud: smoothed random blobs (a threshold of smoothed noise) painted in grey 63 over the image.
dotted_line    a random straight line across the image (column 0 to 27), drawn in dashes of 2 px on, 2 off.
zigzag         a random zigzag from column 2 to 25: a line of amplitude 2 px, turning every 2 px.
canny_edges    the image replaced by its Canny edge map (Gaussian sigma 1, Sobel gradient, non-maximum
               suppression, hysteresis thresholds 0.1 / 0.2 of the gradient of the [0, 1] image): 0 or 255.
=============  ============================================================================================

Every corruption is a pure function of (images, seed): the same seed gives the same bytes, a different seed
different ones (brightness, stripe, scale and canny_edges involve no randomness, so they ignore the seed).
Each corruption draws from its own stream (the seed and the corruption's position in :data:`CORRUPTIONS`),
so adding one never changes another's bytes. scipy is imported inside the functions: ``import mnistlab``
stays light. The robustness report never feeds a training or selection decision.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from mnistlab.errors import MnistlabError

FORMAT = "mnistlab-corruptions/1"
CORRUPTIONS_JSON = "corruptions.json"
CORRUPTIONS_PNG = "corruptions.png"
CORRUPTIONS_HTML = "corruptions.html"
# Images corrupted at once: bounds the float32 temporaries (canny holds about ten N x 28 x 28 arrays).
CHUNK = 2048
SAMPLE_COUNT = 8
CENTRE = 13.5   # the rotation/scale/shear centre: the middle of the 28 x 28 grid

# The strengths (MNIST-C's severities), named so the tests check the same numbers the docstring states.
SHOT_PHOTONS = 3.0
IMPULSE_FRACTION = 0.17
GLASS_SIGMA, GLASS_DELTA, GLASS_ITERATIONS = 0.7, 1, 2
MOTION_LENGTH, MOTION_SIGMA, MOTION_MAX_ANGLE = 10, 3.0, 45.0
SHEAR = 0.4
SCALE = 0.7
ROTATE_RADIANS = 0.4
TRANSLATE_PIXELS = 3
BRIGHTNESS = 0.5
STRIPE_COLUMNS = ((0, 7), (21, 28))
FOG_STRENGTH = 3.0
FOG_SPECTRUM = 1.5   # amplitude ~ 1/f^1.5: smooth clouds with some detail, like MNIST-C's plasma fractal
SPATTER_GREY = 63.0 / 255.0
DASH = 2
ZIGZAG_AMPLITUDE, ZIGZAG_STEP = 2.0, 2.0
CANNY_SIGMA, CANNY_LOW, CANNY_HIGH = 1.0, 0.1, 0.2


class Corruption(StrEnum):
    """The corruptions, in MNIST-C's order (the order of the report's table)."""

    SHOT_NOISE = "shot_noise"
    IMPULSE_NOISE = "impulse_noise"
    GLASS_BLUR = "glass_blur"
    MOTION_BLUR = "motion_blur"
    SHEAR = "shear"
    SCALE = "scale"
    ROTATE = "rotate"
    TRANSLATE = "translate"
    BRIGHTNESS = "brightness"
    STRIPE = "stripe"
    FOG = "fog"
    SPATTER = "spatter"
    DOTTED_LINE = "dotted_line"
    ZIGZAG = "zigzag"
    CANNY_EDGES = "canny_edges"


CORRUPTIONS: tuple[Corruption, ...] = tuple(Corruption)
DETERMINISTIC = frozenset({Corruption.SCALE, Corruption.BRIGHTNESS, Corruption.STRIPE, Corruption.CANNY_EDGES})


def check_name(name: str | Corruption) -> Corruption:
    """``name`` as a :class:`Corruption`, or one clear error listing the choices."""
    try:
        return Corruption(name)
    except ValueError:
        raise MnistlabError(f"`name` {name!r} is not a corruption; choose one of "
                            f"{', '.join(c.value for c in CORRUPTIONS)}") from None


def corrupt(images: np.ndarray, *, name: str | Corruption, seed: int = 0) -> np.ndarray:
    """``images`` (uint8, N x 28 x 28) under corruption ``name``: uint8 of the same shape, a new array.

    The same ``seed`` gives the same bytes. Batches are corrupted :data:`CHUNK` images at a time from one
    random stream, so memory stays bounded and the result does not depend on anything but (images, seed).
    """
    corruption = check_name(name)
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (28, 28):
        raise MnistlabError(f"`images`: expected uint8 of shape (N, 28, 28), got {array.dtype} {array.shape}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, CORRUPTIONS.index(corruption)])
    function = _FUNCTIONS[corruption]
    out = np.empty_like(array)
    for start in range(0, len(array), CHUNK):
        x = array[start:start + CHUNK].astype(np.float32) / 255.0
        out[start:start + CHUNK] = _to_uint8(function(x, rng))
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------------------------ the corruptions
def _shot_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(x.astype(np.float64) * SHOT_PHOTONS).astype(np.float32) / SHOT_PHOTONS


def _impulse_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = x.copy()
    hit = rng.random(x.shape) < IMPULSE_FRACTION
    out[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float32)  # salt (1) or pepper (0), half each
    return out


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    # sigma 0 along the batch axis: each image is blurred on its own, all in one call.
    return np.asarray(ndimage.gaussian_filter(x, sigma=(0.0, sigma, sigma), mode="constant"), np.float32)


def _glass_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = _gaussian(x, GLASS_SIGMA)
    n = len(x)
    batch = np.arange(n)[:, None, None]
    rows, cols = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    for _ in range(GLASS_ITERATIONS):
        # Every pixel gathers from a random neighbour (a batched local shuffle; MNIST-C swaps pixel pairs in
        # a Python loop, which cannot be batched and moves pixels the same distance).
        dy = rng.integers(-GLASS_DELTA, GLASS_DELTA + 1, size=(n, 28, 28))
        dx = rng.integers(-GLASS_DELTA, GLASS_DELTA + 1, size=(n, 28, 28))
        out = out[batch, np.clip(rows + dy, 0, 27), np.clip(cols + dx, 0, 27)]
    return _gaussian(out, GLASS_SIGMA)


def _sample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of each image at (rows, cols) (both N x 28 x 28), zero outside: one batched call."""
    from scipy import ndimage

    batch = np.broadcast_to(np.arange(len(x), dtype=np.float64)[:, None, None], rows.shape)
    # The batch coordinate is an integer, so order-1 interpolation never mixes two images.
    return np.asarray(ndimage.map_coordinates(x, np.stack([batch, rows, cols]), order=1, mode="constant",
                                              cval=0.0), np.float32)


def _affine(x: np.ndarray, inverse: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """Each image moved by an affine map about the centre: output(p) = input(inverse @ (p - c - shift) + c).

    ``inverse``: (N, 2, 2) acting on (row, col); ``shift``: (N, 2) in pixels (row, col).
    """
    grid = np.stack(np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij"))  # (2, 28, 28) row, col
    offset = grid[None] - CENTRE                                                    # (1, 2, 28, 28)
    if shift is not None:
        offset = offset - shift[:, :, None, None]
    source = np.einsum("nij,njhw->nihw", inverse, np.broadcast_to(offset, (len(x), 2, 28, 28))) + CENTRE
    return _sample(x, source[:, 0], source[:, 1])


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), size=n)


def _shear(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = SHEAR * _signs(rng, len(x))
    inverse = np.zeros((len(x), 2, 2))
    inverse[:, 0, 0] = inverse[:, 1, 1] = 1.0
    inverse[:, 1, 0] = -k    # forward: col' = col + k (row - c); its inverse subtracts it
    return _affine(x, inverse)


def _scale(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    inverse = np.broadcast_to(np.eye(2) / SCALE, (len(x), 2, 2))
    return _affine(x, np.ascontiguousarray(inverse))


def _rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = ROTATE_RADIANS * _signs(rng, len(x))
    cos, sin = np.cos(angle), np.sin(angle)
    # Forward rotation by ``angle`` (counter-clockwise as displayed, rows pointing down) in (row, col):
    # [[cos, -sin], [sin, cos]] applied to (-row, col) -> its inverse in (row, col) is below.
    inverse = np.empty((len(x), 2, 2))
    inverse[:, 0, 0], inverse[:, 0, 1] = cos, sin
    inverse[:, 1, 0], inverse[:, 1, 1] = -sin, cos
    return _affine(x, inverse)


def _translate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shift = TRANSLATE_PIXELS * np.stack([_signs(rng, len(x)), _signs(rng, len(x))], axis=1)
    return _affine(x, np.ascontiguousarray(np.broadcast_to(np.eye(2), (len(x), 2, 2))), shift)


def motion_weights() -> np.ndarray:
    """The trail's weights for shifts 0..MOTION_LENGTH px (sum 1)."""
    d = np.arange(MOTION_LENGTH + 1, dtype=np.float64)
    w = np.exp(-d ** 2 / (2 * MOTION_SIGMA ** 2))
    return w / w.sum()


def _motion_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = np.deg2rad(rng.uniform(-MOTION_MAX_ANGLE, MOTION_MAX_ANGLE, size=len(x)))
    direction = np.stack([-np.sin(angle), np.cos(angle)], axis=1)   # (row, col): 0 degrees points right
    rows, cols = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")
    out = np.zeros_like(x)
    for d, weight in enumerate(motion_weights()):
        # output(p) gathers input(p - d * direction): ink is smeared d px along ``direction``.
        out += np.float32(weight) * _sample(x, rows[None] - d * direction[:, 0, None, None],
                                            cols[None] - d * direction[:, 1, None, None])
    return out


def _brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x + np.float32(BRIGHTNESS)


def _stripe(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = x.copy()
    for lo, hi in STRIPE_COLUMNS:
        out[:, :, lo:hi] = 1.0 - out[:, :, lo:hi]
    return out


def fractal_clouds(rng: np.random.Generator, n: int, size: int = 28) -> np.ndarray:
    """``n`` fractal (1/f^1.5 amplitude spectrum) cloud fields, each scaled to [0, 1], shape (n, size, size)."""
    side = 64    # synthesised larger than the crop, so the clouds are not periodic within it
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    freq = np.hypot(fy, fx)
    amplitude = np.where(freq > 0, np.maximum(freq, 1e-9) ** -FOG_SPECTRUM, 0.0)
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, side, side // 2 + 1))
    field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(side, side))[:, :size, :size]
    low = field.min(axis=(1, 2), keepdims=True)
    high = field.max(axis=(1, 2), keepdims=True)
    return ((field - low) / np.maximum(high - low, 1e-12)).astype(np.float32)


def _fog(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    peak = x.max(axis=(1, 2), keepdims=True)
    return (x + FOG_STRENGTH * fractal_clouds(rng, len(x))) * peak / (peak + FOG_STRENGTH)


def _spatter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    liquid = _gaussian(rng.normal(0.65, 0.3, size=x.shape).astype(np.float32), 1.0)
    wet = (liquid > 0.65).astype(np.float32)
    mud = _gaussian(wet, 1.5)
    mud[mud < 0.8] = 0.0   # only the cores of the blobs: mud covers in [0.8, 1] of full opacity
    return x * (1.0 - mud) + np.float32(SPATTER_GREY) * mud


def _segments(n: int, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Intensity of one anti-aliased 2-px-wide segment per image, start/end (n, 2) in (row, col)."""
    rows, cols = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")
    r0, c0 = start[:, 0, None, None], start[:, 1, None, None]
    dr, dc = (end - start)[:, 0, None, None], (end - start)[:, 1, None, None]
    length2 = np.maximum(dr ** 2 + dc ** 2, 1e-12)
    t = np.clip(((rows - r0) * dr + (cols - c0) * dc) / length2, 0.0, 1.0)
    distance = np.hypot(rows - (r0 + t * dr), cols - (c0 + t * dc))
    return np.clip(1.5 - distance, 0.0, 1.0).astype(np.float32)   # full within 0.5 px, none beyond 1.5 px


def _dotted_line(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    ends = rng.integers(0, 27, size=(n, 2)).astype(np.float64)
    line = _segments(n, np.stack([ends[:, 0], np.zeros(n)], 1), np.stack([ends[:, 1], np.full(n, 27.0)], 1))
    dashes = (np.arange(28) // DASH) % 2 == 1     # columns 0-1 off, 2-3 on, ...
    return np.maximum(x, line * dashes[None, None, :])


def zigzag_points(r0: np.ndarray, r1: np.ndarray) -> np.ndarray:
    """The zigzag's vertices (n, k, 2) in (row, col): along the line (r0, col 2) -> (r1, col 25), turning
    every :data:`ZIGZAG_STEP` px along it, alternately :data:`ZIGZAG_AMPLITUDE` px to either side."""
    c0, c1 = 2.0, 25.0
    theta = np.arctan2(r1 - r0, c1 - c0)                 # (n,)
    length = (c1 - c0) / np.cos(theta)
    steps = int(np.ceil(length.max() / ZIGZAG_STEP))
    along = np.minimum(np.arange(steps + 1)[None, :] * ZIGZAG_STEP, length[:, None])   # (n, k)
    side = np.where(np.arange(steps + 1) % 2 == 1, ZIGZAG_AMPLITUDE, -ZIGZAG_AMPLITUDE)[None, :]
    side = np.where(along >= length[:, None], 0.0, side) * (np.arange(steps + 1) > 0)[None, :]
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    cols = c0 + along * cos - side * sin
    rows = r0[:, None] + along * sin + side * cos
    return np.stack([rows, cols], axis=2)


def _zigzag(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    r0 = rng.integers(0, 27, size=n).astype(np.float64)
    r1 = r0 + rng.integers(-5, 5, size=n)
    points = zigzag_points(r0, r1)
    out = x
    for k in range(points.shape[1] - 1):   # a loop over the ~12 segments, each batched over the images
        out = np.maximum(out, _segments(n, points[:, k], points[:, k + 1]))
    return out


def canny(x: np.ndarray, *, sigma: float = CANNY_SIGMA, low: float = CANNY_LOW, high: float = CANNY_HIGH
          ) -> np.ndarray:
    """Canny edge maps (bool, N x 28 x 28) of float images in [0, 1], all images at once.

    Hysteresis is one connected-component labelling of the whole batch with a structure that joins pixels
    within an image only, so no per-image loop is needed.
    """
    from scipy import ndimage

    smooth = _gaussian(x, sigma)
    # The 2-D Sobel of each image (skimage's canny, whose 0.1/0.2 thresholds these are): derivative along one
    # image axis, [1, 2, 1] along the other. ndimage.sobel on the (N, 28, 28) stack would also smooth across
    # the batch axis, mixing each image's gradient with its neighbours' (and doubling a lone image's).
    gy = ndimage.correlate1d(ndimage.correlate1d(smooth, [-1.0, 0.0, 1.0], axis=1, mode="constant"),
                             [1.0, 2.0, 1.0], axis=2, mode="constant")
    gx = ndimage.correlate1d(ndimage.correlate1d(smooth, [-1.0, 0.0, 1.0], axis=2, mode="constant"),
                             [1.0, 2.0, 1.0], axis=1, mode="constant")
    magnitude = np.hypot(gx, gy)
    # Non-maximum suppression: keep a pixel only if it is the largest of its two neighbours along the gradient
    # (its direction rounded to 0, 45, 90 or 135 degrees).
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = (np.rint(angle / 45.0).astype(np.int64)) % 4
    padded = np.pad(magnitude, ((0, 0), (1, 1), (1, 1)))
    keep = np.zeros(magnitude.shape, bool)
    for s, (dr, dc) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead = padded[:, 1 + dr:29 + dr, 1 + dc:29 + dc]
        behind = padded[:, 1 - dr:29 - dr, 1 - dc:29 - dc]
        keep |= (sector == s) & (magnitude >= ahead) & (magnitude >= behind)
    weak = keep & (magnitude >= low)
    strong = keep & (magnitude >= high)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True     # 8-connected within an image, never across images
    labels, count = ndimage.label(weak, structure=structure)
    connected = np.zeros(count + 1, bool)
    connected[np.unique(labels[strong])] = True
    connected[0] = False
    return np.asarray(connected[labels], bool)


def _canny_edges(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return canny(x).astype(np.float32)


_FUNCTIONS: dict[Corruption, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    Corruption.SHOT_NOISE: _shot_noise, Corruption.IMPULSE_NOISE: _impulse_noise,
    Corruption.GLASS_BLUR: _glass_blur, Corruption.MOTION_BLUR: _motion_blur, Corruption.SHEAR: _shear,
    Corruption.SCALE: _scale, Corruption.ROTATE: _rotate, Corruption.TRANSLATE: _translate,
    Corruption.BRIGHTNESS: _brightness, Corruption.STRIPE: _stripe, Corruption.FOG: _fog,
    Corruption.SPATTER: _spatter, Corruption.DOTTED_LINE: _dotted_line, Corruption.ZIGZAG: _zigzag,
    Corruption.CANNY_EDGES: _canny_edges,
}


# ------------------------------------------------------------------------------------------ the robustness report
@dataclass(frozen=True)
class CorruptionScore:
    """A run's test accuracy under one corruption, and its error against the clean error."""

    name: str
    accuracy: float
    error: float
    error_ratio: float | None    # error / clean error; None when the clean error is 0


@dataclass(frozen=True)
class RobustnessReport:
    """A run scored on the test split clean and under every corruption (``corruptions.json`` holds it)."""

    run_dir: str
    model: str
    dataset: str
    count: int
    seed: int
    clean_accuracy: float
    scores: tuple[CorruptionScore, ...]
    weights_sha256: str
    data_sha256: str
    same_data: bool | None
    seconds: float
    files: dict[str, Path] | None = None   # where it was saved (not part of the JSON)

    @property
    def clean_error(self) -> float:
        """1 - clean accuracy."""
        return 1.0 - self.clean_accuracy

    @property
    def mean_accuracy(self) -> float:
        """The mean accuracy over the corruptions."""
        return float(np.mean([s.accuracy for s in self.scores])) if self.scores else float("nan")

    @property
    def mean_error(self) -> float:
        """The mean error over the corruptions (MNIST-C's headline figure)."""
        return 1.0 - self.mean_accuracy

    @property
    def mean_error_ratio(self) -> float | None:
        """Mean corrupted error / clean error (= the mean of the per-corruption ratios)."""
        return None if self.clean_error == 0 else self.mean_error / self.clean_error

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every figure, the means included (readers need not recompute them)."""
        return {
            "format": FORMAT, "run_dir": self.run_dir, "model": self.model, "dataset": self.dataset,
            "split": "test", "count": self.count, "seed": self.seed,
            "clean_accuracy": self.clean_accuracy, "clean_error": self.clean_error,
            "corruptions": [vars(s) for s in self.scores],
            "mean_accuracy": self.mean_accuracy, "mean_error": self.mean_error,
            "mean_error_ratio": self.mean_error_ratio,
            "weights_sha256": self.weights_sha256, "data_sha256": self.data_sha256, "same_data": self.same_data,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobustnessReport:
        """Rebuild a report from :meth:`to_dict` output (a corruptions.json)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise MnistlabError(f"not an mnistlab robustness report (format {FORMAT!r} expected)")
        return cls(run_dir=str(data["run_dir"]), model=str(data["model"]), dataset=str(data["dataset"]),
                   count=int(data["count"]), seed=int(data["seed"]), clean_accuracy=float(data["clean_accuracy"]),
                   scores=tuple(CorruptionScore(**s) for s in data["corruptions"]),
                   weights_sha256=str(data["weights_sha256"]), data_sha256=str(data["data_sha256"]),
                   same_data=data.get("same_data"), seconds=float(data["seconds"]))


def _scorer(run: Any, dataset: Any, *, device: str, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The run's scoring function, images -> scores, through the same paths ``evaluate`` uses."""
    if run.model.get("family") == "classical":
        from mnistlab.baselines import load_classical_model

        model, _ = load_classical_model(run.path, dataset=dataset)
        return lambda images: np.asarray(model.scores(images))
    from mnistlab.inference import load_network

    network = load_network(run.path, device=device, weights=run.weights_used)
    return lambda images: network.logits(images, batch_size=batch_size).cpu().numpy()


def evaluate_corruptions(run_dir: str | os.PathLike[str], *, seed: int = 0, device: str = "auto",
                         batch_size: int | None = None, dataset: Any = None, weights: str = "auto"
                         ) -> RobustnessReport:
    """Score ``run_dir`` (its ``weights``: auto, best or last) on its test split clean and under every corruption
    (seeded by ``seed``); writes nothing."""
    return _evaluate(run_dir, seed=seed, device=device, batch_size=batch_size, dataset=dataset, weights=weights)[0]


def _evaluate(run_dir: str | os.PathLike[str], *, seed: int, device: str, batch_size: int | None,
              dataset: Any, weights: str = "auto") -> tuple[RobustnessReport, list[tuple[str, np.ndarray]]]:
    from mnistlab.analysis import _load_split, _same_data, weights_sha256
    from mnistlab.config import EVAL_BATCH_SIZE
    from mnistlab.data import split_sha256
    from mnistlab.runs import read_run

    run = read_run(run_dir, weights=weights)  # type: ignore[arg-type]  # checked there
    dataset, images, labels, _, source = _load_split(run, "test", dataset)
    digest = split_sha256(dataset.split(source))
    score = _scorer(run, dataset, device=device, batch_size=batch_size or EVAL_BATCH_SIZE)
    started = time.perf_counter()

    def accuracy(batch: np.ndarray) -> float:
        scores = np.asarray(score(batch), np.float64)
        if not np.isfinite(scores).all():
            raise MnistlabError(f"{run.path}: the model outputs NaN or infinite scores (its weights diverged); "
                                "retrain it with a lower `lr`")
        return float(np.mean(scores.argmax(axis=1) == labels)) if len(labels) else float("nan")

    clean = accuracy(images)
    rows = []
    # The strip shows the scored images themselves: corrupting a slice again would draw other noise (the
    # random corruptions share one stream over the batch).
    shown = [("clean", images[:SAMPLE_COUNT])]
    for corruption in CORRUPTIONS:
        corrupted = corrupt(images, name=corruption, seed=seed)
        shown.append((corruption.value, corrupted[:SAMPLE_COUNT]))
        acc = accuracy(corrupted)
        ratio = None if clean == 1.0 else (1.0 - acc) / (1.0 - clean)
        rows.append(CorruptionScore(name=corruption.value, accuracy=acc, error=1.0 - acc, error_ratio=ratio))
    report = RobustnessReport(run_dir=str(run.path), model=str(run.model.get("name")), dataset=dataset.name,
                              count=len(labels), seed=int(seed), clean_accuracy=clean, scores=tuple(rows),
                              weights_sha256=weights_sha256(run.weights), data_sha256=digest,
                              same_data=_same_data(run, digest, source), seconds=time.perf_counter() - started)
    return report, shown


def plot_samples(images: np.ndarray | list[tuple[str, np.ndarray]], path: str | os.PathLike[str], *, seed: int = 0,
                 title: str = "") -> Path:
    """A strip per corruption (rows) of the same few test digits (columns), clean first; written atomically.
    ``images``: the clean digits (corrupted here), or the (name, batch) rows already corrupted."""
    from mnistlab.report import _pyplot, save_figure

    plt = _pyplot()
    if isinstance(images, np.ndarray):
        rows = [("clean", images)] + [(c.value, corrupt(images, name=c, seed=seed)) for c in CORRUPTIONS]
    else:
        rows = list(images)
    cols = max(1, len(rows[0][1]))
    fig, axes = plt.subplots(len(rows), cols, figsize=(0.8 * cols + 1.6, 0.8 * len(rows) + 0.4), squeeze=False)
    for r, (name, batch) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(batch):
                ax.imshow(batch[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=90)


def report_html(data: dict[str, Any], *, strip_png: bytes) -> str:
    """A self-contained page: the table (accuracy, error, x clean error per corruption, the mean) and the strip."""
    from mnistlab import htmlreport as h

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}x"

    rows = [["clean", h.pct(data["clean_accuracy"]), h.pct(data["clean_error"]), "1.0x"]]
    rows += [[s["name"], h.pct(s["accuracy"]), h.pct(s["error"]), ratio(s["error_ratio"])]
             for s in data["corruptions"]]
    rows.append(["mean (corrupted)", h.pct(data["mean_accuracy"]), h.pct(data["mean_error"]),
                 ratio(data["mean_error_ratio"])])
    body = (f"<h1>Robustness: {h.esc(data['model'])} on {h.esc(data['dataset'])} test</h1>"
            f"<p>{data['count']:,} test images under each of {len(data['corruptions'])} MNIST-C-style corruptions "
            f"(Mu &amp; Gilmer 2019; seed {data['seed']}). Never used for training or selection.</p>"
            + h.table(["corruption", "accuracy", "error", "× clean error"], rows)
            + "<h2>Samples</h2>" + h.data_uri_img(strip_png, "test digits under each corruption"))
    return h.page(f"robustness: {data['model']}", body)


def write_report(report: RobustnessReport, *, images: np.ndarray | list[tuple[str, np.ndarray]],
                 out_dir: str | os.PathLike[str]) -> RobustnessReport:
    """Write corruptions.json, corruptions.png (a sample strip: ``images``' first digits, or the scored rows
    :func:`robustness_report` passes) and corruptions.html atomically."""
    from mnistlab.runs import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MnistlabError(f"{out}: cannot create the evaluation folder ({exc.strerror})") from None
    data = report.to_dict()
    shown = images[:SAMPLE_COUNT] if isinstance(images, np.ndarray) else images
    png = plot_samples(shown, out / CORRUPTIONS_PNG, seed=report.seed,
                       title=f"{report.model}: test digits under each corruption")
    files = {"json": write_json_atomic(out / CORRUPTIONS_JSON, data), "png": png,
             "html": write_text_atomic(out / CORRUPTIONS_HTML, report_html(data, strip_png=png.read_bytes()))}
    return dataclasses.replace(report, files=files)


def robustness_report(run_dir: str | os.PathLike[str], *, seed: int = 0, device: str = "auto",
                      batch_size: int | None = None, dataset: Any = None, weights: str = "auto"
                      ) -> RobustnessReport:
    """:func:`evaluate_corruptions`, saved in ``RUN/eval/test/`` (``test-last`` for the last weights of a run that
    kept best ones; other data: ``...-other-<digest>``), the folders ``evaluate`` uses."""
    from mnistlab.analysis import _weights_folder, evaluation_dir
    from mnistlab.runs import read_run

    report, images = _evaluate(run_dir, seed=seed, device=device, batch_size=batch_size, dataset=dataset,
                               weights=weights)
    # Other data never overwrites the run's own report (the rule of ``evaluate``).
    folder = _weights_folder("test", read_run(run_dir, weights=weights))  # type: ignore[arg-type]
    if report.same_data is False:
        folder = f"{folder}-other-{report.data_sha256[:8]}"
    return write_report(report, images=images, out_dir=evaluation_dir(report.run_dir, folder))


def error_ratio_text(value: float | None) -> str:
    """``12.3x`` or ``n/a`` (clean error 0)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}x"
