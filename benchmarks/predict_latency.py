"""Single-image prediction latency: the one inference path (precision-aware) against the old fp32 path.

Issue 8 moved `predict`/`serve` onto mnistlab.inference.predict_logits, which scores a bf16-trained run in bf16
autocast as `evaluate` does (before, the predictor ran fp32 and 6 of 10,000 answers differed). This measures
what that costs per image, alternating the two paths in one process so machine noise hits both alike:

- `mnistlab`: Predictor.probabilities (predict_logits in the run's precision + numpy softmax);
- `old fp32 path`: the previous Predictor body, kept here as the peer (torch.tensor copy, fp32 forward under
  inference_mode, torch softmax).

    python benchmarks/predict_latency.py [--repeats 7] [--images 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import isolate_registry, machine, print_table, summary, write_json


def old_probabilities(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """The predictor before issue 8: fp32 whatever the run's precision."""
    from mnistlab.models import prepare_batch

    with torch.inference_mode():
        batch = torch.tensor(images)
        logits = model(prepare_batch(batch))
        return torch.softmax(logits, dim=1, dtype=torch.float64).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    isolate_registry()
    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset
    from mnistlab.predict import Predictor
    from mnistlab.training import fit

    dataset = load_dataset("mnist")
    run_dir = Path(tempfile.mkdtemp(prefix="mnistlab-latency-")) / "cnn"
    fit(TrainConfig.for_model("cnn", epochs=1, device="cpu"), run_dir=run_dir, dataset=dataset)
    predictor = Predictor(run_dir)
    images = dataset.test.images[: args.images]
    paths = {"mnistlab": lambda x: predictor.probabilities(x), "old fp32 path": lambda x: old_probabilities(
        predictor.model, x)}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, call in paths.items():      # alternate: both paths see the same machine state
            call(images[:1])
            started = time.perf_counter()
            for i in range(len(images)):
                call(images[i:i + 1])
            times[name].append(1000 * (time.perf_counter() - started) / len(images))
    stats = {name: summary(values) for name, values in times.items()}
    ratio = stats["mnistlab"]["median"] / stats["old fp32 path"]["median"]
    print_table(["path", "median ms/image", "min", "max"],
                [[name, f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}"] for name, s in stats.items()])
    print(f"run precision {predictor.precision}; mnistlab / old = {ratio:.2f}")
    write_json("predict_latency", {"machine": machine(), "precision": predictor.precision, "images": len(images),
                                   "repeats": args.repeats, "ms_per_image": stats, "ratio_new_over_old": ratio,
                                   "command": "python benchmarks/predict_latency.py"})


if __name__ == "__main__":
    main()
