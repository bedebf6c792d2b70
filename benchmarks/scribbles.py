"""How often a calibrated run says "not sure" on scribbles that are not digits, beside real and drawn digits.

Scribbles: 1-4 random strokes (random-walk polylines, smoothed, 12-28 px wide on a 280x280 white pad, like the
page's canvas), seeded. Each goes through the same preparation as an upload (:func:`mnistlab.imaging.prepare_image`);
ones that come out blank are counted apart (the server answers those 422 before the model sees them).

    PYTHONPATH=src python benchmarks/scribbles.py RUN [--count 500] [--seed 0]

RUN must be calibrated (`mnistlab calibrate RUN`). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
from PIL import Image, ImageDraw


def scribble(rng: np.random.Generator, size: int = 280) -> bytes:
    """One random scribble as PNG bytes: dark ink on white."""
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        steps = int(rng.integers(3, 12))
        start = rng.uniform(0.15 * size, 0.85 * size, 2)
        turns = np.cumsum(rng.normal(0, 0.9, steps))               # a smooth random heading
        lengths = rng.uniform(0.03, 0.18, steps) * size
        points = start + np.cumsum(np.stack([np.cos(turns), np.sin(turns)], 1) * lengths[:, None], 0)
        points = np.clip(np.vstack([start, points]), 5, size - 5)
        draw.line([tuple(p) for p in points], fill=0, width=int(rng.integers(12, 29)), joint="curve")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def main() -> None:
    """Measure and print the not-sure fractions."""
    from mnistlab.data import load_run_dataset
    from mnistlab.errors import MnistlabError
    from mnistlab.imaging import prepare_image
    from mnistlab.predict import Predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    predictor = Predictor(args.run)
    if predictor.calibration is None:
        raise SystemExit(f"{args.run}: not calibrated ({predictor.calibration_note})")
    rng = np.random.default_rng(args.seed)
    pixels, blank = [], 0
    for i in range(args.count):
        try:
            pixels.append(prepare_image(scribble(rng), name=f"scribble-{i}").pixels)
        except MnistlabError:
            blank += 1
    scribbles = predictor.predict(np.stack(pixels))
    test = load_run_dataset(predictor.run.config, splits=("test",)).split("test")  # type: ignore[arg-type]
    digits = predictor.predict(test.images)
    print(json.dumps({
        "run": args.run, "model": predictor.run.model.get("name"), "threshold": predictor.calibration.threshold,
        "temperature": predictor.calibration.temperature, "scribbles": args.count, "scribbles_blank": blank,
        "scribbles_not_sure": round(float(np.mean([p.not_sure for p in scribbles])), 4),
        "test_not_sure": round(float(np.mean([p.not_sure for p in digits])), 4),
        "test_answered_accuracy": round(float(np.mean([p.label == y for p, y in zip(digits, test.labels, strict=True)
                                                        if not p.not_sure])), 5),
    }))


if __name__ == "__main__":
    main()
