"""What batch augmentation costs: the seed CNN's training step with --augment none, light, strong and robust.

The four settings run the same steps alternately in one process (machine noise hits all alike), on the
same batches; the figure is the median step time and its ratio to no augmentation. Goal (issue 13): light
costs <= 15% of the CNN's epoch time.

    python benchmarks/augment_cost.py [--steps 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from _common import machine, print_table, summary, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args()
    from mnistlab.augment import augment_batch, spec_for
    from mnistlab.data import load_dataset
    from mnistlab.device import cpu_has_native_bf16, tune_cpu_allocator
    from mnistlab.inference import as_uint8_tensor
    from mnistlab.models import build_model, prepare_batch, to_device
    from mnistlab.training import build_optimizer

    images = as_uint8_tensor(load_dataset("mnist", splits=("train",)).train.images, torch.device("cpu"))
    labels = torch.as_tensor(load_dataset("mnist", splits=("train",)).train.labels.astype("int64"))
    bf16 = cpu_has_native_bf16()
    tune_cpu_allocator()  # as fit does: without it every step's activations are freshly page-faulted in
    torch.manual_seed(0)
    model = to_device(build_model("cnn"), "cpu")
    optimizer = build_optimizer("rmsprop", model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def steps(level: str) -> float:
        spec = spec_for(level)
        started = time.perf_counter()
        for step in range(args.steps):
            index = slice(step * args.batch_size, (step + 1) * args.batch_size)
            inputs = augment_batch(prepare_batch(images[index], channels_last=True), spec=spec, generator=generator)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(inputs), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return 1000 * (time.perf_counter() - started) / args.steps

    levels = ("none", "light", "strong", "robust")
    for level in levels:  # warm-up: each level's first call (kernels, allocations) stays out of the figures
        steps(level)
    times: dict[str, list[float]] = {level: [] for level in levels}
    for _ in range(args.repeats):
        for level in levels:
            times[level].append(steps(level))
    stats = {level: summary(values) for level, values in times.items()}
    # The transform alone, on one batch, without the training step around it (what the step figures include).
    batch = prepare_batch(images[:args.batch_size], channels_last=True)
    alone: dict[str, float] = {}
    for level in levels:
        spec = spec_for(level)
        started = time.perf_counter()
        for _ in range(200):
            augment_batch(batch, spec=spec, generator=generator)
        alone[level] = 1000 * (time.perf_counter() - started) / 200
    base = stats["none"]["median"]
    rows = [[level, f"{s['median']:.2f}", f"{100 * (s['median'] / base - 1):+.1f}%", f"{alone[level]:.3f}"]
            for level, s in stats.items()]
    print_table(["augment", "median ms/step", "cost vs none", "transform alone, ms/batch"], rows)
    write_json("augment_cost", {"machine": machine(), "bf16": bf16, "batch_size": args.batch_size, "steps": args.steps,
                                "repeats": args.repeats, "ms_per_step": stats,
                                "overhead": {level: stats[level]["median"] / base - 1 for level in levels},
                                "transform_alone_ms": alone,
                                "command": "python benchmarks/augment_cost.py"})


if __name__ == "__main__":
    main()
