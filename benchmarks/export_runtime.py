"""torch against onnxruntime, side by side in one run: the whole `predict` command, the server's memory and
throughput, and int8 quantization.

For one trained run (``--run``, default a 1-epoch CNN trained first) and its ONNX export:
  predict   ``python -m mnistlab predict MODEL digit.png`` as a whole command, ``--repeat`` times each
            (median wall seconds; goal <= 0.5 s on onnx)
  serve     a real ``mnistlab serve MODEL --quiet`` per backend: RSS after warm-up and after the load
            (goal <= 150 MB on onnx), then ``--requests`` 28x28 JSON and canvas PNG requests from
            ``--concurrency`` connections (serve_load.py's client: every answer is checked)
  int8      ``export --quantize int8``: file size, test accuracy on all 10,000 images, and in-process latency
            of one image and of the 10,000 (median of 5), beside fp32 and torch

    python benchmarks/export_runtime.py [--run RUN] [--repeat 7] [--requests 1000] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_mb(pid: int) -> dict[str, float]:
    """Resident and peak resident memory of a process, from /proc (MiB)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def time_predict(model: Path, image: Path, *, repeat: int) -> dict[str, Any]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mnistlab", "predict", str(model), str(image)], check=True,
                       stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3), "n": repeat}


def serve_figures(model: Path, *, requests: int, concurrency: int, log: Path) -> dict[str, Any]:
    from serve_load import payload, run_load, start_server, stop_server

    server, port, ready = start_server(model, log)
    try:
        figures: dict[str, Any] = {"ready_s": round(ready, 2)}
        # The payloads and client of the figures recorded for issue 12: the whole canvas, the stdlib client.
        bodies = {"json": payload("json"), "png": payload("png-full")}
        for body, content_type, digit in bodies.values():  # warm-up: every code path once
            run_load(port, body, content_type, digit, requests=50, concurrency=1, timeout=60, client="http.client")
        figures["rss_after_warmup"] = rss_mb(server.pid)
        for name, (body, content_type, digit) in bodies.items():
            figures[name] = run_load(port, body, content_type, digit, requests=requests, concurrency=concurrency,
                                     timeout=300, client="http.client")
        figures["rss_after_load"] = rss_mb(server.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model", timeout=5) as answer:
            figures["backend"] = json.loads(answer.read()).get("backend")
        return figures
    finally:
        stop_server(server)


def int8_figures(run_dir: Path, fp32: Path, int8: Path) -> dict[str, Any]:
    """Size, accuracy and latency of the int8 file beside the fp32 file and torch (same process)."""
    from mnistlab.data import load_dataset
    from mnistlab.inference import predict_logits
    from mnistlab.predict import OnnxPredictor, Predictor

    test = load_dataset("mnist", splits=("test",)).test
    rows: dict[str, Any] = {}
    engines: dict[str, Any] = {"onnx fp32": OnnxPredictor(fp32, threads=1), "onnx int8": OnnxPredictor(int8, threads=1)}
    import torch

    torch.set_num_threads(1)
    loaded = Predictor(run_dir)
    for name, engine in engines.items():
        rows[name] = _latencies(engine.logits, test.images, test.labels)
        rows[name]["size_bytes"] = (fp32 if name == "onnx fp32" else int8).stat().st_size
    rows["torch fp32"] = _latencies(lambda x: predict_logits(loaded.model, x, precision="fp32").numpy(),
                                    test.images, test.labels)
    rows["torch (run's precision)"] = {**_latencies(lambda x: loaded.network.logits(x).numpy(), test.images,
                                                    test.labels), "precision": loaded.precision}
    return rows


def _latencies(logits: Any, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    accuracy = float(np.mean(logits(images).argmax(1) == labels))
    one = []
    for i in range(200):
        started = time.perf_counter()
        logits(images[i:i + 1])
        one.append(time.perf_counter() - started)
    full = []
    for _ in range(5):
        started = time.perf_counter()
        logits(images)
        full.append(time.perf_counter() - started)
    return {"test_accuracy": accuracy, "one_image_ms_p50": round(1000 * statistics.median(one), 4),
            "all_10000_s_median": round(statistics.median(full), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run directory (default: a 1-epoch CNN trained first)")
    parser.add_argument("--repeat", type=int, default=7, help="whole `predict` commands per backend")
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per payload and backend")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/export_runtime.json")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 50 or not 1 <= args.requests <= 20_000 or not 1 <= args.concurrency <= 16:
        parser.error("--repeat 1..50, --requests 1..20000, --concurrency 1..16")

    from _common import isolate_registry, machine

    isolate_registry()
    report: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="export-runtime-") as scratch:
        root = Path(scratch)
        run_dir = Path(args.run) if args.run else root / "cnn"
        if not args.run:
            print("training a 1-epoch CNN ...", flush=True)
            subprocess.run([sys.executable, "-m", "mnistlab", "train", "cnn", "--epochs", "1", "--device", "cpu",
                            "--out", str(run_dir)], check=True, stdout=subprocess.DEVNULL)
        fp32, int8 = root / "model.onnx", root / "model.int8.onnx"
        for out, extra in ((fp32, []), (int8, ["--quantize", "int8"])):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mnistlab", "export", str(run_dir), "--out", str(out), *extra],
                           check=True, stdout=subprocess.DEVNULL)
            report.setdefault("export_seconds", {})[out.name] = round(time.perf_counter() - started, 2)
        from mnistlab.data import load_dataset
        from mnistlab.imaging import encode_png

        image = root / "digit.png"
        image.write_bytes(encode_png(load_dataset("mnist", splits=("test",)).test.images[0]))
        report["predict_command"] = {"torch": time_predict(run_dir, image, repeat=args.repeat),
                                     "onnx": time_predict(fp32, image, repeat=args.repeat)}
        print(json.dumps(report["predict_command"]), flush=True)
        report["serve"] = {name: serve_figures(model, requests=args.requests, concurrency=args.concurrency,
                                               log=root / f"serve-{name}.log")
                           for name, model in (("torch", run_dir), ("onnx", fp32))}
        for name, figures in report["serve"].items():
            print(name, json.dumps({k: v for k, v in figures.items() if k not in ("json", "png")}),
                  {p: (figures[p]["requests_per_second"], figures[p]["latency_ms"].get("p50"), figures[p]["errors"])
                   for p in ("json", "png")}, flush=True)
        report["int8"] = int8_figures(run_dir, fp32, int8)
        print(json.dumps(report["int8"], indent=1), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
