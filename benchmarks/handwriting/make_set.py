"""Make the real-handwriting evaluation set: digits drawn in Chromium on the page, and digits from system fonts.

    python benchmarks/handwriting/make_set.py [--seed 0] [--drawn-per-digit 30] [--fonts-per-digit 100]
                                              [--part all|drawn|fonts] [--run RUN] [--out DIR]

Writes, into ``DIR`` (default benchmarks/handwriting/data/), atomically:

* ``drawn-images-idx3-ubyte.gz`` (N, 280, 280) uint8: the canvas PNG the page sent, decoded (black ink on
  white; stored as gray because the canvas is opaque gray, checked), and ``drawn-labels-idx1-ubyte.gz``;
* ``fonts-images-idx3-ubyte.gz`` (M, 80, 80) uint8: the font renders, and ``fonts-labels-idx1-ubyte.gz``;
* ``manifest.json``: seed, jitter ranges, tool versions, the fonts used (with SHA-256), and how each image
  was made (template variant and jitter; font, style and jitter);
* ``SHA256SUMS`` of the files above.

Image ``i`` of a part shows digit ``i % 10`` and is made from ``numpy.random.default_rng([seed, PART, i])``
alone (PART 1 = drawn, 2 = fonts), so any image can be made again by itself. Font ``i`` uses the usable font
number ``(i // 10) % F``: every font draws every digit equally often.

This set is for evaluation only: never train on it, and never use it to choose a model, a recipe or a
hyper-parameter (issue 13). Part ``--part drawn`` or ``fonts`` remakes only that part (the other is kept).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np

if __package__ in (None, ""):  # run as a script: make `handwriting` importable from benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handwriting.fonts import FONT_JITTER, FontJitter, FontRender, file_sha256, find_fonts, render, usable_fonts
from handwriting.strokes import JITTER, Drawing, Jitter, jittered

DATA_DIR = Path(__file__).resolve().parent / "data"
DRAWN, FONTS = 1, 2  # the PART in each image's seed
Part = Literal["drawn", "fonts"]
FILES = {part: (f"{part}-images-idx3-ubyte.gz", f"{part}-labels-idx1-ubyte.gz") for part in ("drawn", "fonts")}
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


def drawing_for(index: int, *, seed: int, jitter: Jitter = JITTER) -> Drawing:
    """The jittered strokes of drawn image ``index`` (digit ``index % 10``)."""
    return jittered(index % 10, rng=np.random.default_rng([seed, DRAWN, index]), jitter=jitter)


def font_image(index: int, *, seed: int, fonts: list[Path], jitter: FontJitter = FONT_JITTER) -> FontRender:
    """Font image ``index`` (digit ``index % 10``, font ``(index // 10) % len(fonts)``)."""
    return render(index % 10, font_path=fonts[(index // 10) % len(fonts)],
                  rng=np.random.default_rng([seed, FONTS, index]), jitter=jitter)


def draw_all(count: int, *, seed: int, run_dir: Path | None, progress: bool = True
             ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw ``count`` digits on the page in Chromium; (images (count, 280, 280) uint8, their records)."""
    from handwriting.browser import canvas_gray, open_pad
    from mnistlab.imaging import prepare_image

    images = np.zeros((count, 280, 280), dtype=np.uint8)
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    with open_pad(run_dir) as pad:
        for index in range(count):
            drawing = drawing_for(index, seed=seed)
            png = pad.draw(drawing)
            images[index] = canvas_gray(png)
            # Storing the decoded gray canvas must not change what `mnistlab predict` makes of the PNG.
            if not np.array_equal(prepare_image(png).pixels, prepare_image(_png(images[index])).pixels):
                raise RuntimeError(f"drawn image {index}: the stored gray canvas prepares differently from the PNG")
            records.append({"digit": drawing.digit, "variant": drawing.variant, "strokes": len(drawing.strokes),
                            **drawing.params})
            if progress and (index + 1) % 50 == 0:
                print(f"drawn {index + 1}/{count} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return images, records


def _png(gray: np.ndarray) -> bytes:
    """A gray array as PNG bytes (how the benchmark hands stored canvases to prepare_image)."""
    from mnistlab.imaging import encode_png

    return encode_png(gray)


def render_all(count: int, *, seed: int, fonts: list[Path]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render ``count`` font digits; (images (count, 80, 80) uint8, their records)."""
    renders = [font_image(index, seed=seed, fonts=fonts) for index in range(count)]
    records = [{"digit": r.digit, "font": r.font, "style": r.style, **r.params} for r in renders]
    return np.stack([r.pixels for r in renders]), records


def columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Records as columns (one list per key; a key an image lacks is null there): a compact manifest."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    return {k: [r.get(k) for r in records] for k in keys}


def manifest_text(manifest: dict[str, Any]) -> str:
    """JSON indented for reading, with each list of plain values kept on one line (the columns stay short)."""
    text = json.dumps(manifest, indent=1, sort_keys=False)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text) + "\n"


def write_part(directory: Path, part: Part, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a part's two IDX files, gzipped at level 9 with no timestamp (same bytes for the same images)."""
    from mnistlab.data import encode_idx
    from mnistlab.runs import write_bytes_atomic

    for name, array in zip(FILES[part], (images, labels), strict=True):
        write_bytes_atomic(directory / name, gzip.compress(encode_idx(array), compresslevel=9, mtime=0))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_part(directory: Path, part: Part) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a stored part, read with mnistlab's IDX reader."""
    from mnistlab.data import read_idx

    images_name, labels_name = FILES[part]
    return read_idx(directory / images_name), read_idx(directory / labels_name)


def tool_versions() -> dict[str, str]:
    """Versions that decide the exact pixels: Pillow and FreeType (fonts), Chromium (the canvas)."""
    import PIL
    from PIL import features

    from handwriting.browser import chromium_version

    return {"pillow": PIL.__version__, "freetype": str(features.version("freetype2")),
            "chromium": chromium_version(), "numpy": np.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drawn-per-digit", type=int, default=30)
    parser.add_argument("--fonts-per-digit", type=int, default=100)
    parser.add_argument("--part", choices=("all", "drawn", "fonts"), default="all")
    parser.add_argument("--run", type=Path, default=None, help="run to serve (default: a throwaway model)")
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    for name in ("drawn_per_digit", "fonts_per_digit"):
        if not 1 <= getattr(args, name) <= 1000:
            parser.error(f"--{name.replace('_', '-')} must be in 1..1000 (the set is kept small)")

    from mnistlab.runs import write_text_atomic

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).exists() else {}
    if args.part != "all" and old.get("seed", args.seed) != args.seed:
        parser.error(f"--seed {args.seed} differs from the stored set's {old['seed']}: remake --part all")
    manifest: dict[str, Any] = {
        "purpose": "evaluation only: never train on this set or use it for any selection (issue 13)",
        "seed": args.seed, "versions": tool_versions(),
        "drawn": old.get("drawn"), "fonts": old.get("fonts"),
    }
    if args.part in ("all", "fonts"):
        found = find_fonts()
        fonts = usable_fonts(found)
        if not fonts:
            parser.error("no usable TrueType fonts under /usr/share/fonts (apt-get install fonts-dejavu-core)")
        images, records = render_all(10 * args.fonts_per_digit, seed=args.seed, fonts=fonts)
        write_part(out, "fonts", images, np.array([r["digit"] for r in records], dtype=np.uint8))
        manifest["fonts"] = {
            "jitter": asdict(FONT_JITTER), "count": len(records),
            "fonts_used": [{"file": p.name, "path": str(p), "sha256": file_sha256(p)} for p in fonts],
            "fonts_skipped": sorted(p.name for p in found if p not in fonts),
            "items": columns(records),
        }
        print(f"fonts: {len(records)} images from {len(fonts)} fonts", file=sys.stderr)
    if args.part in ("all", "drawn"):
        images, records = draw_all(10 * args.drawn_per_digit, seed=args.seed, run_dir=args.run)
        write_part(out, "drawn", images, np.array([r["digit"] for r in records], dtype=np.uint8))
        manifest["drawn"] = {"jitter": asdict(JITTER), "count": len(records), "items": columns(records)}
    write_text_atomic(out / MANIFEST, manifest_text(manifest))
    names = [*FILES["drawn"], *FILES["fonts"], MANIFEST]
    write_text_atomic(out / SUMS, "".join(f"{sha256_file(out / n)}  {n}\n" for n in names if (out / n).exists()))
    total = sum((out / n).stat().st_size for n in names if (out / n).exists())
    print(f"wrote {out} ({total / 1e6:.2f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
