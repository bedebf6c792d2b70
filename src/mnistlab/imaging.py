"""Image preparation: any user image -> the MNIST-style 28x28 uint8 a model reads (no model here).

MNIST digits are white ink on black, scaled (aspect kept, anti-aliased) so the longer side of the ink's
bounding box is 20 px, and placed in a 28x28 field with the centre of mass of the ink at pixel (14, 14)
(measured on the training set: mean row/column 14.00 / 14.01, standard deviation 0.29, which is what
whole-pixel shifts give). A photo, a scan or a canvas drawing looks nothing like that until it goes through
the same steps, so :func:`prepare_image` is the ONE preprocessing used by the CLI, the server and the tests:

1. decode with Pillow (PNG, JPEG, BMP, GIF's first frame, WebP, TIFF, PNM), after checking the byte size and
   the pixel count from the header, before any pixel is decoded (decompression bombs stop there);
2. apply the EXIF orientation, reduce very large images to at most ``WORK_SIDE`` px on the longer side
   (16-bit/32-bit/float images are box-averaged in strips of rows before any float copy is made);
3. grayscale, with alpha composited over the background that contrasts with the ink;
4. ink made white on black, judged against its own background: a photo of a sheet of paper on a darker
   desk is read inside the page (:func:`find_page`), as dark ink on the paper; otherwise the background
   level is the median of the border, and the ink is on whichever side of it (darker or brighter) reaches
   further (``invert="auto"``; ``"yes"``/``"no"`` force it);
5. contrast stretched so background = 0 and ink = 1; the border's noise level is cut off; specks much smaller
   than the digit are dropped;
6. cropped to the ink's bounding box; strokes much thinner than MNIST's (about 14% of the digit's height)
   are thickened; the longer side is scaled to 20 px (anti-aliased, aspect kept);
7. pasted into 28x28 and shifted by whole pixels so the centre of mass lands on (14, 14);
8. returned as uint8 (28, 28); ``mnistlab.models.prepare_batch`` then scales it exactly as in training.

A 28x28 array is taken as it is (it is already in the model's format). Turning the result into
probabilities is :mod:`mnistlab.predict`'s job; this module never loads a model or imports torch.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from mnistlab.errors import MnistlabError

if TYPE_CHECKING:  # Pillow and torch are imported where they are used, so importing this module is cheap.
    from PIL import Image

Invert = Literal["auto", "yes", "no"]
INVERT_CHOICES: tuple[str, ...] = get_args(Invert)

SIZE = 28            # MNIST's field
BOX = 20             # the longer side of the ink's bounding box in MNIST
CENTRE = 14.0        # where MNIST puts the centre of mass (row, column), in pixel indices
MAX_IMAGE_BYTES = 10 * 1024 * 1024      # an upload or file larger than this is refused before decoding
MAX_IMAGE_PIXELS = 40_000_000           # width * height from the header; a 12 Mpx phone photo is 4032x3024
WORK_SIDE = 1024     # larger images are reduced to this before float work: plenty for a 20 px digit
MIN_CONTRAST = 24.0  # ink must differ from the background by this many gray levels (of 255), else "blank"
SPECK_FRACTION = 0.02  # ink components with less than this share of the ink are specks (dust, noise)
STROKE_MIN, STROKE_TARGET = 0.09, 0.12  # stroke width / digit size: thicken below MIN up to TARGET
STAGE_SIDE = 4 * BOX  # intermediate size where strokes are measured and thickened (cheap, still sharp)

# Formats a user's digit plausibly comes in. Pillow can open more (EPS even runs Ghostscript); refusing the
# rest keeps untrusted uploads away from rarely-exercised decoders. MPO is how older Pillow opens phone JPEGs.
ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP", "TIFF", "PPM")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                  ".pgm", ".ppm", ".pbm", ".pnm")


class ImageTooLarge(MnistlabError):
    """The file or the decoded image is over the size limits (the server answers 413)."""


class UnreadableImage(MnistlabError):
    """Not an image Pillow can decode, a format we refuse, or a truncated/corrupt file (422)."""


class BlankImage(MnistlabError):
    """No ink: an empty canvas, a uniform image, or contrast too low to find a digit (422)."""


class BadPixels(MnistlabError):
    """A pixel array of the wrong shape, type or range (422)."""


@dataclass(frozen=True)
class PreparedImage:
    """The 28x28 uint8 the model sees (white ink on black), and how it was obtained."""

    pixels: np.ndarray                 # (28, 28) uint8
    inverted: bool                     # True when dark-on-light ink was turned white-on-black
    source_size: tuple[int, int]       # (width, height) of the decoded image; (28, 28) for arrays


# ------------------------------------------------------------------------------------------------ decoding
def check_invert(invert: str) -> Invert:
    """Validate an ``invert`` choice (auto, yes, no)."""
    if invert not in INVERT_CHOICES:
        raise MnistlabError(f"invert must be one of {', '.join(INVERT_CHOICES)}, got {invert!r}")
    return invert  # type: ignore[return-value]


def read_image_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an image file, refusing missing files, folders and files over ``max_bytes``."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MnistlabError(f"{path}: no such file") from None
    except OSError as exc:
        raise MnistlabError(f"{path}: cannot read it ({exc.strerror})") from None
    if path.is_dir():
        raise MnistlabError(f"{path}: is a folder, not an image")
    if not path.is_file():
        # A FIFO, socket or device would block the read forever (or never end): only regular files are read.
        raise MnistlabError(f"{path}: not a regular file (a pipe, socket or device); pass an image file")
    if size > max_bytes:
        raise ImageTooLarge(f"{path}: {size:,} bytes is over the {max_bytes:,}-byte limit; "
                            "resize or crop the image first")
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)  # the file may have grown since stat()
    except OSError as exc:
        raise MnistlabError(f"{path}: cannot read it ({exc.strerror})") from None
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{path}: over the {max_bytes:,}-byte limit; resize or crop the image first")
    return data


def decode_image(data: bytes, *, name: str = "image", max_bytes: int = MAX_IMAGE_BYTES,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``data`` with Pillow into a loaded image (first frame, EXIF orientation applied).

    The byte size and the header's width x height are checked before any pixel is decoded, so a small file
    that claims a huge image (a decompression bomb) costs nothing. Large JPEGs are decoded at a reduced scale
    (Pillow's ``draft``), which is much faster and smaller than decoding them whole.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) == 0:
        raise UnreadableImage(f"{name}: empty (0 bytes); send a PNG or JPEG of a digit")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{name}: {len(data):,} bytes is over the {max_bytes:,}-byte limit; "
                            "resize or crop the image first")
    Image.init()
    formats = [f for f in ALLOWED_FORMATS if f in Image.OPEN]  # newer Pillow opens MPO through JPEG
    try:
        img = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        raise UnreadableImage(f"{name}: not an image in a supported format "
                              f"({', '.join(f for f in ALLOWED_FORMATS if f != 'MPO')})") from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: the image's dimensions are far over the {max_pixels:,}-pixel limit; "
                            "resize the image first") from None
    except Exception as exc:  # Pillow raises many types on hostile headers; all mean "unreadable" here
        raise UnreadableImage(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise UnreadableImage(f"{name}: the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} = {width * height:,} pixels is over the "
                            f"{max_pixels:,}-pixel limit; resize the image first")
    try:
        if img.format in ("JPEG", "MPO") and max(width, height) > 2 * WORK_SIDE:
            # Decode at 1/2, 1/4 or 1/8 scale, still at least WORK_SIDE on the longer side.
            img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (WORK_SIDE, WORK_SIDE))
        img.seek(0)
        img.load()
        if img.format != "PNG" or "exif" in img.info or "Raw profile type exif" in img.info:
            # (a PNG keeps EXIF only in those two places; parsing nothing costs as much as the rest of a canvas)
            ImageOps.exif_transpose(img, in_place=True)  # no copy of a large image when there is nothing to do
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: the image's dimensions are far over the {max_pixels:,}-pixel limit; "
                            "resize the image first") from None
    except Exception as exc:  # truncated data, bad compressed streams, broken palettes, odd EXIF...
        raise UnreadableImage(f"{name}: the image data is truncated or corrupt ({exc}); "
                              "export the image again") from None
    return img


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks a plain PNG (a canvas export) is made of; none of them is compressed or parsed at length by Pillow.
PLAIN_PNG_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"sRGB", b"gAMA", b"pHYs", b"cHRM",
                              b"bKGD", b"sBIT"})


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def plain_png_bytes(data: bytes | bytearray, *, max_chunks: int = 64) -> int | None:
    """The decoded size in bytes of a PNG made only of image chunks, from its header; None for anything else.

    What a caller needs to judge an upload's cost before decoding it: the server prepares small plain PNGs
    (the page's canvas) on its event loop and sends everything else to worker threads. The header must be the
    first chunk and the only one (Pillow takes the size from the last header before the pixels, so a second one
    could claim a smaller image). Compressed text, colour profiles and EXIF (which Pillow inflates or parses when
    it opens a file), any other format, a truncated file and more than ``max_chunks`` chunks all give None:
    only pixels are left to decode, and the header bounds them.
    """
    if not data.startswith(PNG_SIGNATURE):
        return None
    view = memoryview(data)
    position, size = len(PNG_SIGNATURE), None
    for index in range(max_chunks):
        if position + 8 > len(view):
            return None
        length = int.from_bytes(view[position:position + 4], "big")
        kind = bytes(view[position + 4:position + 8])
        if kind not in PLAIN_PNG_CHUNKS or (kind == b"IHDR") != (index == 0):
            return None
        if kind == b"IHDR":
            if length != 13 or position + 8 + 13 > len(view):
                return None
            width = int.from_bytes(view[position + 8:position + 12], "big")
            height = int.from_bytes(view[position + 12:position + 16], "big")
            depth, colour = view[position + 16], view[position + 17]
            if colour not in PNG_CHANNELS:
                return None
            size = width * height * PNG_CHANNELS[colour] * max(depth, 8) // 8
        elif kind == b"IEND":
            return size
        position += 12 + length
    return None


# -------------------------------------------------------------------------------------------- grayscale
def _high_bit_depth_to_gray(img: Image.Image, *, name: str = "image") -> np.ndarray:
    """16-bit/32-bit/float grayscale -> float32 in 0..255 (Pillow's convert("L") would clip, not scale).

    A large image is box-averaged by a whole factor in strips of rows, straight from Pillow's native buffer,
    so the only full-size copy is the decoded image itself: a 6300x6300 float TIFF (159 MB decoded) used to
    be converted to float32 and scaled whole (several 159 MB temporaries, ~615 MB peak growth).
    """
    width, height = img.size
    factor = max(1, max(width, height) // WORK_SIDE)  # the result keeps at least WORK_SIDE px; _shrink finishes
    col_starts = np.arange(0, width, factor)
    col_counts = np.diff(np.append(col_starts, width)).astype(np.float64)
    rows_per_strip = max(1, (1 << 20) // (width * factor)) * factor  # about 8 MB of float64 per strip
    strips: list[np.ndarray] = []
    top = 0.0
    for y0 in range(0, height, rows_per_strip):
        y1 = min(height, y0 + rows_per_strip)
        block = np.asarray(img.crop((0, y0, width, y1)), dtype=np.float64)
        if not np.isfinite(block).all():
            raise UnreadableImage(f"{name}: the image holds NaN or infinite pixel values; export it as an "
                                  "8-bit PNG or JPEG")
        top = max(top, float(block.max(initial=0.0)))
        if factor > 1:
            row_starts = np.arange(0, y1 - y0, factor)
            row_counts = np.diff(np.append(row_starts, y1 - y0)).astype(np.float64)
            block = np.add.reduceat(np.add.reduceat(block, col_starts, axis=1), row_starts, axis=0)
            block /= row_counts[:, None] * col_counts[None, :]
        strips.append(block.astype(np.float32))
    values = np.concatenate(strips, axis=0)
    # "F": 0..1 unless it already spans more; "I", "I;16*": 16-bit content unless it already fits 8 bits.
    small, large = (1.0, 255.0) if img.mode == "F" else (255.0, 65535.0)
    scale = small if top <= small else large
    return np.clip(values * np.float32(255.0 / scale), 0.0, 255.0)


def to_grayscale(img: Image.Image, *, name: str = "image") -> np.ndarray:
    """(H, W) in 0..255, alpha composited over the background that contrasts with the ink.

    uint8 when the image is plain 8-bit (most are), float32 when compositing or high bit depths made
    in-between values.

    A transparent background says nothing about its colour: a canvas export often has black strokes on
    transparent pixels, a logo-style digit white strokes. The opaque pixels' mean brightness tells which, and
    the transparent part becomes the opposite (white under dark ink, black under light ink).
    """
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _shrink(_high_bit_depth_to_gray(img, name=name))
    if img.mode == "P" or img.mode == "PA":
        img = img.convert("RGBA" if img.has_transparency_data else "RGB")
    elif img.mode in ("L", "RGB") and "transparency" in img.info:  # a PNG tRNS colour key
        img = img.convert("RGBA")
    alpha_low = img.getchannel("A").getextrema()[0] if img.mode in ("RGBA", "LA", "La", "RGBa") else 255
    if isinstance(alpha_low, int | float) and alpha_low < 255:  # a single band's extrema are two numbers
        gray_alpha = img.convert("LA")
        luma, alpha = gray_alpha.split()
        luma, alpha = _shrink_image(luma), _shrink_image(alpha)
        l_values = np.asarray(luma, dtype=np.float32)
        weight = np.asarray(alpha, dtype=np.float32) / 255.0
        total = float(weight.sum())
        ink_mean = float((l_values * weight).sum() / total) if total > 0 else 0.0
        background = 255.0 if ink_mean < 128.0 else 0.0
        return l_values * weight + background * (1.0 - weight)
    if img.mode != "L":
        img = img.convert("L")  # ITU-R 601-2 luma for RGB/CMYK/YCbCr; 0/255 for bilevel
    return np.asarray(_shrink_image(img))


def _shrink_image(img: Image.Image) -> Image.Image:
    """Reduce a large single-band image so its longer side is at most WORK_SIDE (anti-aliased)."""
    from PIL import Image

    width, height = img.size
    longer = max(width, height)
    if longer <= WORK_SIDE:
        return img
    scale = WORK_SIDE / longer
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _shrink(values: np.ndarray) -> np.ndarray:
    from PIL import Image

    if max(values.shape) <= WORK_SIDE:
        return values
    shrunk = _shrink_image(Image.fromarray(np.ascontiguousarray(values, dtype=np.float32)))
    return np.asarray(shrunk, dtype=np.float32)


# ----------------------------------------------------------------------------------------------- ink map
def _border(values: np.ndarray) -> np.ndarray:
    """The pixels of a frame about 2% of the shorter side wide (at least 1 px)."""
    height, width = values.shape
    k = max(1, round(0.02 * min(height, width)))
    if 2 * k >= min(height, width):
        return values.ravel()
    return np.concatenate([values[:k].ravel(), values[-k:].ravel(),
                           values[k:-k, :k].ravel(), values[k:-k, -k:].ravel()])


# ------------------------------------------------------------------------------------- numpy morphology
# scipy.ndimage costs 0.4-0.8 s to import (most of it scipy's array-API decorators), more than the whole rest of
# `mnistlab predict FILE.onnx`. These are the few operations the pipeline needs, in numpy, each the same
# function as scipy's (tests/test_imaging.py checks them against scipy.ndimage on random images). scipy is
# still used on the photo path past the page checks (convex hull, distance transform), where it is needed.
@dataclass(frozen=True)
class _Runs:
    """A mask's runs of set pixels, row by row, each with its component's label (1..count)."""

    width: int
    rows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray       # exclusive
    labels: np.ndarray
    count: int

    def paint(self, height: int) -> np.ndarray:
        """The (height, width) int32 label image."""
        labels = np.zeros(height * self.width, dtype=np.int32)
        lengths = self.ends - self.starts
        flat_starts = self.rows * self.width + self.starts
        positions = np.arange(int(lengths.sum())) + np.repeat(flat_starts - (np.cumsum(lengths) - lengths), lengths)
        labels[positions] = np.repeat(self.labels, lengths)
        return labels.reshape(height, self.width)


def _label(mask: np.ndarray, *, diagonal: bool) -> tuple[np.ndarray, int]:
    """Connected components of a 2-D bool mask: (int32 labels 1..count in raster order of first pixel, count).

    ``diagonal`` True is 8-connectivity, False 4-connectivity (``scipy.ndimage.label``'s default structure).
    """
    runs = _component_runs(mask, diagonal=diagonal)
    return runs.paint(mask.shape[0]), runs.count


def _component_runs(mask: np.ndarray, *, diagonal: bool) -> _Runs:
    """:func:`_label` without painting the label image (a caller that only needs the count stops here).

    Works on runs of set pixels per row: runs in adjacent rows that touch are joined by a vectorised
    union-find (hook each root to the smallest root it touches, then compress paths), so the Python-level
    work is a few numpy passes over the runs, not a loop over pixels.
    """
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    # Within a row the changes alternate start (+1), end (-1), so one pass over the nonzero steps, in row-major
    # order, gives the runs sorted by (row, start) with their exclusive ends.
    changes = np.flatnonzero(np.diff(padded, axis=1))
    rows, starts = np.divmod(changes[0::2], width + 1)
    ends = changes[1::2] - rows * (width + 1)
    count = int(rows.size)
    if count == 0:
        return _Runs(width, rows, starts, ends, rows.astype(np.int32), 0)
    stride = width + 2
    gap = 1 if diagonal else 0
    start_keys, end_keys = rows * stride + starts, rows * stride + ends
    # Runs of the next row touching run a: end_b + gap > start_a and start_b < end_a + gap, a contiguous range.
    below = (rows + 1) * stride
    first = np.searchsorted(end_keys, below + starts - gap, side="right")
    last = np.searchsorted(start_keys, below + ends + gap, side="left")
    counts = np.maximum(last - first, 0)
    total = int(counts.sum())
    parent = np.arange(count)
    if total:
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        upper = np.repeat(np.arange(count), counts)
        lower = np.repeat(first, counts) + offsets
        while True:
            root_u, root_l = parent[upper], parent[lower]
            differ = root_u != root_l
            if not differ.any():
                break
            root_u, root_l = root_u[differ], root_l[differ]
            np.minimum.at(parent, np.maximum(root_u, root_l), np.minimum(root_u, root_l))
            while True:  # path compression: every run points at its root
                grand = parent[parent]
                if np.array_equal(grand, parent):
                    break
                parent = grand
    # A root is its component's first run (parents only ever point to smaller indices), so numbering the roots
    # in index order numbers the components in raster order of their first pixel, as scipy does.
    is_root = parent == np.arange(count)
    return _Runs(width, rows, starts, ends, np.cumsum(is_root, dtype=np.int32)[parent], int(is_root.sum()))


def _erode(mask: np.ndarray, *, iterations: int = 1) -> np.ndarray:
    """Binary erosion by the 3x3 cross, outside the frame counting as unset (``scipy.ndimage.binary_erosion``)."""
    result = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        eroded = np.zeros_like(result)
        core = result[1:-1, 1:-1]
        eroded[1:-1, 1:-1] = (core & result[:-2, 1:-1] & result[2:, 1:-1]
                              & result[1:-1, :-2] & result[1:-1, 2:])
        result = eroded
        if not result.any():
            break
    return result


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every unset region that does not reach the frame's edge set (``binary_fill_holes``)."""
    background, count = _label(~mask, diagonal=False)
    if count == 0:
        return mask.copy()
    outside = np.zeros(count + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[background]


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)  # scipy's default truncate=4.0
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


def _smooth(gray: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
    """float32 Gaussian blur, edges mirrored (``scipy.ndimage.gaussian_filter``, mode "reflect").

    Rows then columns, each pass summed in float64 in scipy's order (centre tap, then the symmetric pairs)
    and stored as float32 in between, so the result matches scipy's to the last bit or two.
    """
    weights = _gaussian_kernel(sigma)
    radius = weights.size // 2
    values = np.asarray(gray, dtype=np.float32)
    for axis in (0, 1):
        n = values.shape[axis]
        line = np.pad(values.astype(np.float64), [(radius, radius) if a == axis else (0, 0) for a in (0, 1)],
                      mode="symmetric")

        def take(offset: int, axis: int = axis, line: np.ndarray = line, n: int = n) -> np.ndarray:
            index = slice(radius + offset, radius + offset + n)
            return line[index, :] if axis == 0 else line[:, index]

        acc = take(0) * weights[radius]
        for j in range(1, radius + 1):
            acc += weights[radius + j] * (take(j) + take(-j))
        values = acc.astype(np.float32)
    return values


def _dilate_disk(values: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation by a disk of ``radius`` px, outside the frame counting as 0 (values must be >= 0)."""
    height, width = values.shape
    padded = np.pad(values, radius)
    result = np.zeros_like(values)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                np.maximum(result, padded[radius + dy:radius + dy + height, radius + dx:radius + dx + width],
                           out=result)
    return result


def _extreme_levels(gray: np.ndarray) -> tuple[float, float]:
    """The 0.1% and 99.9% gray levels, from a 256-bin histogram (sorting is 10x slower on the hot path)."""
    from PIL import Image

    levels = gray if gray.dtype == np.uint8 else np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    # Pillow's C histogram of the uint8 view: np.bincount first widens every pixel to int64 (4x slower).
    counts = np.asarray(Image.fromarray(np.ascontiguousarray(levels)).histogram(), dtype=np.int64)
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    darkest = int(np.searchsorted(cumulative, 0.001 * total, side="right"))
    brightest = int(np.searchsorted(cumulative, 0.999 * total, side="left"))
    return float(darkest), float(brightest)


PAGE_BORDER_SHARE = 0.05  # a page is looked for only when at least this share of the frame's border is not page
PAGE_THICKNESS = 0.17     # a page's light area is thick: 2*area/perimeter over its longer side (a stroke: ~0.1)
PAGE_EDGE = 0.08          # mean gradient at the page's edge / page-desk contrast: a step, not a smooth shading
PAGE_SOLIDITY = 0.93      # a sheet (even cut by the frame) is convex; a light 4, 6, 8 or 9 with its holes is not
PAGE_MARGIN = 0.04        # the paper must be thicker than the dark ink it holds by this (a light 0's hole is a blob)
# Measured (tests/photokit.py, 200 photos; the first 2,000 MNIST test digits as white on black, 4x, off-centre):
# pages: thickness >= 0.26 and solidity >= 0.94 but for two whose desk grain merged with the page, thickness
# minus ink thickness >= 0.05; light digits that pass thickness: solidity <= 0.98, and none passes all three.


@dataclass(frozen=True)
class Page:
    """A sheet of paper found in a photo: where to look for the ink, and the page's own gray levels."""

    rows: slice            # the page's bounding box (eroded a little, so its blurred edge is left out)
    cols: slice
    inside: np.ndarray     # bool mask of the page within that box


def _otsu(levels: np.ndarray) -> float:
    """Otsu's threshold of gray levels 0..255 (256-bin histogram)."""
    counts = np.bincount(np.clip(levels, 0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    bins = np.arange(256, dtype=np.float64)
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * bins)
    total, grand = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (grand * weight - total * mean) ** 2 / (weight * (total - weight))
    between = np.where(np.isfinite(between), between, -1.0)
    return float(np.argmax(between))  # a uniform image gives 0 or its level: nothing is above it


def _thickness(mask: np.ndarray) -> float:
    """2 * area / perimeter of a mask over the longer side of its bounding box (a stroke's width, relative)."""
    box = _bounding_box(mask)
    if box is None:
        return 0.0
    perimeter = int((mask & ~_erode(mask)).sum())
    return 2.0 * int(mask.sum()) / max(perimeter, 1) / max(box[1] - box[0], box[3] - box[2])


def _solidity(mask: np.ndarray) -> float:
    """Area over the area of the convex hull (pixel-corner corrected, so a filled rectangle gives 1)."""
    from scipy.spatial import ConvexHull, QhullError  # only for a light region that passed the page checks

    ys, xs = np.nonzero(mask & ~_erode(mask))
    try:
        hull = ConvexHull(np.column_stack([ys, xs]).astype(np.float64))
    except (QhullError, ValueError):  # all edge pixels on a line: a degenerate sliver, not a page
        return 0.0
    return float(mask.sum()) / (hull.volume + hull.area / 2.0 + 1.0)


def _plain_light_border(gray: np.ndarray) -> bool:
    """True when :func:`find_page` would find the frame's border light without smoothing anything.

    If every pixel within the border's width plus the blur's reach (4 px) of the edge is the image's
    brightest level (and the image is not uniform), the smoothed border is exactly that level, which is above
    any Otsu threshold of the image: the border is light, there is no desk around a page. A canvas drawing
    (dark ink on white) or a clean scan ends here, skipping the blur and the labelling.
    """
    height, width = gray.shape
    band = max(1, round(0.02 * min(height, width))) + 4
    if 2 * band >= min(height, width):
        return False
    top = gray.max()
    if gray.min() == top:
        return False
    return bool((gray[:band] == top).all() and (gray[-band:] == top).all()
                and (gray[band:-band, :band] == top).all() and (gray[band:-band, -band:] == top).all())


def find_page(gray: np.ndarray) -> Page | None:
    """The sheet of paper a dark digit is written on, when the photo also shows what the page lies on.

    None when the light background runs round the whole frame (a scan, a drawing, paper filling the photo:
    the frame's border then IS the digit's background) or when the light region is not a page: a light
    digit on a dark background is made of thin strokes, a page is a thick, sharp-edged region enclosing ink.
    """
    height, width = gray.shape
    if min(height, width) < 16:
        return None
    if _plain_light_border(gray):
        return None  # the frame's border is the background: what the page's canvas and most scans give
    smooth = _smooth(gray)
    threshold = _otsu(smooth)
    light = smooth > threshold
    if _border(light).mean() > 1.0 - PAGE_BORDER_SHARE:
        return None
    labels, count = _label(light, diagonal=False)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    component = labels == (int(np.argmax(sizes)) + 1)
    area = int(component.sum())
    if area < 0.02 * height * width:
        return None
    thickness = _thickness(component)
    if thickness < PAGE_THICKNESS:
        return None  # thin strokes: a light digit on a dark background, not a page (checked before filling)
    page = _fill_holes(component)
    ink = page & ~light  # the dark pixels the light region encloses (not its light islands)
    if not ink.any():
        return None
    if thickness - _thickness(ink) < PAGE_MARGIN:
        return None
    if _solidity(page) < PAGE_SOLIDITY:
        return None
    top, bottom, left, right = _bounding_box(page)  # type: ignore[misc]  # the page is not empty
    page_level, desk_level = float(np.median(gray[component])), float(np.median(gray[~page]))
    contrast = page_level - desk_level
    if contrast < MIN_CONTRAST:
        return None
    edge = page & ~_erode(page)
    edge[[0, -1], :] = False  # where the page leaves the frame there is no edge to see
    edge[:, [0, -1]] = False
    gy, gx = np.gradient(smooth)
    if not edge.any() or float(np.hypot(gy, gx)[edge].mean()) < PAGE_EDGE * contrast:
        return None  # a smooth shading split by the threshold, not the edge of a sheet
    margin = max(2, round(0.01 * max(bottom - top, right - left)))  # past the blurred edge
    inner = _erode(page, iterations=margin)
    box = _bounding_box(inner)
    if box is None:
        return None
    rows, cols = slice(box[0], box[1]), slice(box[2], box[3])
    return Page(rows=rows, cols=cols, inside=inner[rows, cols])


def _page_gray(gray: np.ndarray, page: Page) -> np.ndarray:
    """The page cut out, the desk in its box (a rotated page's corners) replaced by the nearest paper."""
    from scipy import ndimage

    crop = gray[page.rows, page.cols]
    if page.inside.all():
        return crop
    _, (rows, cols) = ndimage.distance_transform_edt(~page.inside, return_indices=True)
    return crop[rows, cols]


def ink_map(gray: np.ndarray, *, invert: Invert = "auto", name: str = "image",
            crop: bool = False) -> tuple[np.ndarray, bool]:
    """Grayscale 0..255 -> (ink in [0, 1] with background 0, same shape, whether it was inverted).

    ``crop=True`` may return only the box around the ink instead (what :func:`drop_specks` and
    :func:`mnist_layout` give the same answer for, as both only look inside the ink's bounding box); it saves
    mapping and labelling the empty part of a canvas.

    The ink is judged against its own background: when the photo shows a sheet of paper lying on something
    darker (:func:`find_page`), only the page is read, as dark ink on light paper, and everything off the page
    is background; otherwise the frame's border is the background and the ink is whichever side of it
    (darker or brighter) reaches further (``invert="auto"``; ``"yes"``/``"no"`` force it).
    """
    page = find_page(gray) if invert != "no" else None
    if page is None:
        return _frame_ink_map(gray, invert=invert, name=name, crop=crop)
    inside, _ = _frame_ink_map(_page_gray(gray, page), invert="yes", name=name)
    values = np.zeros(gray.shape, dtype=np.float32)
    values[page.rows, page.cols] = np.where(page.inside, inside, 0.0)
    return values, True


def _frame_ink_map(gray: np.ndarray, *, invert: Invert = "auto", name: str = "image",
                   crop: bool = False) -> tuple[np.ndarray, bool]:
    """:func:`ink_map` of an image whose border is the digit's background.

    The background level is the median of the border. With ``invert="auto"`` the ink is whichever side of the
    background reaches further (darkest vs brightest 0.1%), so black-on-white paper, white-on-black MNIST and
    dark pen on grey paper all come out right.
    """
    if gray.dtype == np.uint8:
        return _frame_ink_map_uint8(gray, invert=invert, name=name, crop=crop)
    if invert == "auto":
        border_level = float(np.median(_border(gray)))
        darkest, brightest = _extreme_levels(gray)
        inverted = (border_level - darkest) > (brightest - border_level)
    else:
        inverted = invert == "yes"
    border = _border(gray).astype(np.float32)
    border_ink = 255.0 - border if inverted else border
    # Background and noise floor come from the ink image itself, so mirrored inputs give identical results.
    background = float(np.median(border_ink))
    peak = 255.0 - float(gray.min()) if inverted else float(gray.max())
    _check_contrast(background=background, peak=peak, inverted=inverted, invert=invert, name=name)
    floor = _noise_floor(border_ink, background=background, peak=peak)
    values = _to_ink(gray.astype(np.float32, copy=False), inverted=inverted, background=background, peak=peak,
                     floor=floor)
    return values.astype(np.float32, copy=False), inverted


def _check_contrast(*, background: float, peak: float, inverted: bool, invert: Invert, name: str) -> None:
    if peak - background < MIN_CONTRAST:
        polarity = "dark ink on a light" if inverted else "light ink on a dark"
        hint = "" if invert == "auto" else f" (invert={invert} assumes {polarity} background; try auto)"
        raise BlankImage(f"{name}: blank: no ink stands out from the background{hint}; draw or photograph "
                         "a digit with clear contrast")


def _noise_floor(border_ink: np.ndarray, *, background: float, peak: float) -> float:
    """The share of the ink range the border's own texture reaches (its 99th percentile), at most 0.5."""
    # Paper texture, JPEG noise and uneven light: cut off what the border itself reaches.
    border_values = np.clip((border_ink - background) / (peak - background), 0.0, 1.0)
    return min(0.5, float(np.percentile(border_values, 99.0)))


def _to_ink(levels: np.ndarray, *, inverted: bool, background: float, peak: float, floor: float) -> np.ndarray:
    """Gray levels -> ink in [0, 1]: background 0, peak 1, the noise floor cut off."""
    ink = 255.0 - levels if inverted else levels
    values = np.clip((ink - background) / (peak - background), 0.0, 1.0)
    return np.clip((values - floor) / (1.0 - floor), 0.0, 1.0) if floor > 0.0 else values


def _order_statistic(cumulative: np.ndarray, k: int) -> int:
    """The k-th smallest (0-based) value of a uint8 sample, from its cumulative 256-bin histogram."""
    return int(np.searchsorted(cumulative, k, side="right"))


def _percentile_neighbours(cumulative: np.ndarray, q: float) -> tuple[int, int, float]:
    """The two order statistics ``np.percentile(sample, q)`` interpolates between, and the fraction between
    them (numpy's default "linear" method), for a uint8 sample given by its cumulative 256-bin histogram."""
    n = int(cumulative[-1])
    position = (n - 1) * q / 100.0
    below = int(np.floor(position))
    low = _order_statistic(cumulative, below)
    high = _order_statistic(cumulative, min(below + 1, n - 1))
    return low, high, position - below


def _lerp(low: np.float32, high: np.float32, fraction: float) -> np.float32:
    """numpy's own linear interpolation for percentiles, in float32: from the upper end when past halfway."""
    difference = high - low
    if fraction >= 0.5:
        return np.float32(high - difference * np.float32(1.0 - fraction))
    return np.float32(low + difference * np.float32(fraction))


def _histogram_percentile(cumulative: np.ndarray, q: float) -> float:
    """``np.percentile(sample, q)`` of a uint8 sample, from its cumulative histogram."""
    low, high, fraction = _percentile_neighbours(cumulative, q)
    return low + (high - low) * fraction


def _frame_ink_map_uint8(gray: np.ndarray, *, invert: Invert, name: str, crop: bool) -> tuple[np.ndarray, bool]:
    """:func:`_frame_ink_map` of an 8-bit image: the border's statistics from one 256-bin histogram.

    The same function as the float path, bit for bit (tests/test_imaging.py checks it): a median or percentile
    of uint8 values is an order statistic (or the mean of two), which the cumulative histogram gives exactly,
    and the ink levels are a monotone map of the gray levels, so their order statistics are the gray levels'.
    """
    border_counts = np.bincount(_border(gray), minlength=256)
    if invert == "auto":
        border_level = _histogram_percentile(np.cumsum(border_counts), 50.0)
        darkest, brightest = _extreme_levels(gray)
        inverted = (border_level - darkest) > (brightest - border_level)
    else:
        inverted = invert == "yes"
    ink_counts = border_counts[::-1] if inverted else border_counts
    cumulative = np.cumsum(ink_counts)  # of the border's ink levels (255 - gray when inverted)
    background = _histogram_percentile(cumulative, 50.0)
    peak = 255.0 - float(gray.min()) if inverted else float(gray.max())
    _check_contrast(background=background, peak=peak, inverted=inverted, invert=invert, name=name)
    # The percentile of the scaled, clipped border interpolates between the two order statistics of its levels
    # (a monotone map keeps the order), each scaled and clipped as the float path does, in float32.
    low, high, fraction = _percentile_neighbours(cumulative, 99.0)
    scaled = np.clip((np.array([low, high], dtype=np.float32) - background) / (peak - background), 0.0, 1.0)
    floor = min(0.5, float(_lerp(scaled[0], scaled[1], fraction)))
    table = _to_ink(np.arange(256, dtype=np.float32), inverted=inverted, background=background, peak=peak,
                    floor=floor).astype(np.float32)
    if crop:
        # to_ink is monotone in the level, so the inked levels are one end of 0..255: the ink's box comes
        # from one comparison, and only that box is looked up.
        inked = np.flatnonzero(table > 0)
        if inked.size == 0:
            return np.zeros((1, 1), dtype=np.float32), inverted
        box = _bounding_box(gray <= inked[-1] if inverted else gray >= inked[0])
        if box is None:
            return np.zeros((1, 1), dtype=np.float32), inverted
        gray = gray[box[0]:box[1], box[2]:box[3]]
    return table[gray], inverted


def drop_specks(values: np.ndarray) -> np.ndarray:
    """Zero the 8-connected ink components holding less than SPECK_FRACTION of all ink (dust, noise)."""
    box = _bounding_box(values)
    if box is None:
        return values
    rows, cols = slice(box[0], box[1]), slice(box[2], box[3])  # labelling only the ink's box is the same
    inked = values[rows, cols]
    runs = _component_runs(inked > 0, diagonal=True)
    count = runs.count
    if count <= 1:  # one stroke (most drawings): nothing to drop, and no label image to paint
        return values
    labels = runs.paint(inked.shape[0])
    mass = np.bincount(labels.ravel(), weights=inked.ravel(), minlength=count + 1)[1:]
    keep = np.concatenate([[False], mass >= SPECK_FRACTION * mass.sum()])
    result = np.zeros_like(values, dtype=np.float32)
    result[rows, cols] = np.where(keep[labels], inked, 0.0)
    return result


def _bounding_box(values: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the nonzero pixels, bottom/right exclusive; None when all zero."""
    rows = np.flatnonzero(values.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(values.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _resize(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """Anti-aliased resize of a float image (Lanczos; its overshoot clipped back to [0, 1])."""
    from PIL import Image

    if values.shape == (height, width):
        return values
    resized = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32)).resize(
        (width, height), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _fit(values: np.ndarray, longer_side: int) -> np.ndarray:
    """Scale so the longer side is ``longer_side`` px, aspect kept (the shorter side at least 1 px)."""
    height, width = values.shape
    scale = longer_side / max(height, width)
    return _resize(values, max(1, round(width * scale)), max(1, round(height * scale)))


def stroke_width(values: np.ndarray) -> float:
    """Estimated stroke width in pixels: 2 * area / perimeter of the ink (exact for long, even strokes)."""
    mask = values >= 0.5
    area = int(mask.sum())
    if area == 0:
        return 0.0
    perimeter = int((mask & ~_erode(mask)).sum())
    return 2.0 * area / max(perimeter, 1)


def _thicken(values: np.ndarray) -> np.ndarray:
    """Dilate strokes much thinner than MNIST's (a fine pen on a big photo would fade to nothing at 20 px)."""
    size = max(values.shape)
    width = stroke_width(values)
    if width <= 0 or width >= STROKE_MIN * size:
        return values
    radius = max(1, round((STROKE_TARGET * size - width) / 2))
    return _dilate_disk(np.pad(values, radius), radius)


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of mass of a 2-D array's values, in pixel indices."""
    values = np.asarray(pixels, dtype=np.float64)
    total = values.sum()
    if total <= 0:
        raise BlankImage("blank: the image has no ink")
    rows = (values.sum(axis=1) * np.arange(values.shape[0])).sum() / total
    cols = (values.sum(axis=0) * np.arange(values.shape[1])).sum() / total
    return float(rows), float(cols)


def mnist_layout(values: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Ink in [0, 1] (background 0) -> uint8 (28, 28) as MNIST: 20 px box, centre of mass at (14, 14)."""
    box = _bounding_box(values)
    if box is None:
        raise BlankImage(f"{name}: blank: no ink found; draw or photograph a digit")
    top, bottom, left, right = box
    digit = values[top:bottom, left:right]
    if max(digit.shape) > STAGE_SIDE:
        digit = _fit(digit, STAGE_SIDE)  # measure and thicken strokes at 4x the final size
    digit = _thicken(digit)
    box = _bounding_box(digit)
    assert box is not None  # dilation and anti-aliased shrinking keep ink
    digit = _fit(digit[box[0]:box[1], box[2]:box[3]], BOX)
    peak = float(digit.max())
    if peak <= 0:
        raise BlankImage(f"{name}: blank: the ink vanished when scaled to 20 px; draw a larger digit")
    digit = digit / peak  # full contrast, as MNIST's ink (90% of its digits reach 255)
    height, width = digit.shape
    com_row, com_col = centre_of_mass(digit)
    # Whole-pixel shift as in MNIST, clamped so no ink falls off the 28x28 field.
    row = min(max(round(CENTRE - com_row), 0), SIZE - height)
    col = min(max(round(CENTRE - com_col), 0), SIZE - width)
    field = np.zeros((SIZE, SIZE), dtype=np.float32)
    field[row:row + height, col:col + width] = digit
    return np.rint(field * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------- the one entry
def pixels_from_array(array: Any, *, name: str = "pixels") -> np.ndarray:
    """Validate a 28x28 array of whole numbers 0..255 (nested lists or numpy) and return it as uint8."""
    if isinstance(array, np.ndarray):
        values = array
    else:
        if not (isinstance(array, list | tuple) and len(array) == SIZE
                and all(isinstance(row, list | tuple) and len(row) == SIZE for row in array)):
            raise BadPixels(f"{name} must be a 28x28 array: 28 rows of 28 numbers 0..255")
        if not all(type(v) in (int, float) for row in array for v in row):
            raise BadPixels(f"{name} must hold only numbers 0..255 (no strings, booleans or nulls)")
        try:
            values = np.array(array, dtype=np.float64)
        except (OverflowError, ValueError, TypeError):
            raise BadPixels(f"{name} values must be in 0..255 (found a number too large to read)") from None
    if values.shape != (SIZE, SIZE):
        raise BadPixels(f"{name} must be a 28x28 array, got shape {tuple(values.shape)}")
    if values.dtype == np.uint8:
        return values.copy()
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise BadPixels(f"{name} must hold numbers 0..255, got dtype {values.dtype}")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise BadPixels(f"{name} must hold finite numbers 0..255 (found NaN or infinity)")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise BadPixels(f"{name} values must be in 0..255, got {low:g}..{high:g}")
    if (values != np.round(values)).any():
        raise BadPixels(f"{name} values must be whole numbers 0..255 (fractions such as 0..1 scaling are "
                        "not accepted; multiply by 255 first)")
    return values.astype(np.uint8)


def prepare_image(
    source: bytes | str | os.PathLike[str] | np.ndarray | list[Any] | Image.Image,
    *,
    invert: Invert = "auto",
    name: str | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> PreparedImage:
    """Any image (bytes, a file path, a PIL image) or a 28x28 array -> the 28x28 uint8 the model sees.

    A 28x28 array is taken as it is (already MNIST-style, white on black; ``invert="yes"`` flips it). Anything
    else goes through the MNIST pipeline in this module's docstring. User-caused problems raise
    :class:`ImageTooLarge`, :class:`UnreadableImage`, :class:`BlankImage` or :class:`BadPixels`, all
    :class:`MnistlabError`.
    """
    check_invert(invert)
    if isinstance(source, np.ndarray | list | tuple):
        label = name or "pixels"
        pixels = pixels_from_array(source, name=label)
        if invert == "yes":
            pixels = 255 - pixels
        if pixels.max() == pixels.min():
            raise BlankImage(f"{label}: blank: all pixels are {int(pixels[0, 0])}; draw a digit")
        return PreparedImage(pixels=pixels, inverted=invert == "yes", source_size=(SIZE, SIZE))
    from PIL import Image

    if isinstance(source, Image.Image):
        label = name or "image"
        img = source
    elif isinstance(source, bytes | bytearray | memoryview):
        label = name or "image"
        img = decode_image(bytes(source), name=label, max_bytes=max_bytes, max_pixels=max_pixels)
    else:
        label = name or str(source)
        img = decode_image(read_image_file(source, max_bytes=max_bytes), name=label, max_bytes=max_bytes,
                           max_pixels=max_pixels)
    try:
        gray = to_grayscale(img, name=label)
    except (ValueError, OSError) as exc:  # Pillow cannot convert some modes (LAB, some CMYK/TIFF variants)
        raise UnreadableImage(f"{label}: cannot convert its {img.mode} colour mode to grayscale ({exc}); "
                              "export it as an RGB or grayscale PNG or JPEG") from None
    values, inverted = ink_map(gray, invert=invert, name=label, crop=True)
    pixels = mnist_layout(drop_specks(values), name=label)
    return PreparedImage(pixels=pixels, inverted=inverted, source_size=img.size)


def expand_image_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; a folder becomes its image files (by suffix, sorted, not recursive)."""
    result: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise MnistlabError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            result.extend(found)
        elif path.exists():
            result.append(path)
        else:
            raise MnistlabError(f"{path}: no such file or folder")
    return result


def encode_png(pixels: np.ndarray) -> bytes:
    """A (H, W) uint8 array as 8-bit grayscale PNG bytes (lossless)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------- the page's upload
INK_CROP_MARGIN = 12  # px of white kept round the ink: over find_page's short-cut band on the 280 px canvas (10)


def _pillow_luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L conversion (ITU-R 601-2 in 16-bit fixed point, rounded), exactly, as uint8."""
    weighted = (rgb[..., 0].astype(np.uint32) * 19595 + rgb[..., 1].astype(np.uint32) * 38470
                + rgb[..., 2].astype(np.uint32) * 7471 + 0x8000)
    return (weighted >> 16).astype(np.uint8)


def ink_crop_box(rgba: np.ndarray, *, margin: int = INK_CROP_MARGIN) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the ink plus ``margin`` px of white, for which :func:`prepare_image` gives
    the crop exactly the answer it gives the whole image; None when that is not guaranteed (send it all).

    The draw-a-digit page crops its 280x280 canvas this way before uploading (static/app.js mirrors this
    function, and sends the crop as a grayscale PNG of the luma levels below), so the server decodes and scans
    about half the pixels. ``rgba`` is (H, W, 4) uint8. The crop
    is offered only when every pixel is opaque and every pixel outside the ink's box is gray level 255 (white,
    by Pillow's own luma), so both images have a pure-white frame:
    - :func:`find_page` ends at its short cut for both (the margin is wider than its band);
    - the border's median and 99th percentile are white for both, so background, noise floor and contrast
      are the same; the darkest 0.1% is ink for both when the ink is over 0.1% of the WHOLE image (checked);
    - everything after the ink map looks only inside the ink's box, which the crop keeps whole.
    tests/test_imaging.py checks the identity on random drawings; tests/test_browser.py checks that the page
    uploads exactly this crop.
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise BadPixels(f"an ink crop needs an (H, W, 4) uint8 RGBA array, got {rgba.shape} {rgba.dtype}")
    height, width = rgba.shape[:2]
    if max(height, width) > WORK_SIDE or not (rgba[..., 3] == 255).all():
        return None  # a large image is shrunk first, which the crop would change
    # At least find_page's band (2% of the shorter side, plus the blur's 4 px) and one more pixel.
    margin = max(margin, round(0.02 * min(height, width)) + 5)
    inked = _pillow_luma(rgba[..., :3]) < 255
    count = int(inked.sum())
    if count * 1000 <= height * width:  # under 0.1% of the image: its darkest 0.1% would be white
        return None
    box = _bounding_box(inked)
    assert box is not None  # count > 0
    top, bottom, left, right = box[0] - margin, box[1] + margin, box[2] - margin, box[3] + margin
    if top < 0 or left < 0 or bottom > height or right > width:
        return None  # ink near the edge: the whole image's frame is not plain white
    return top, bottom, left, right
