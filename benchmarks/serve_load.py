"""Load benchmark of `mnistlab serve`: a bounded number of concurrent requests against a local server.

Starts the real server (``python -m mnistlab serve RUN --quiet``) on a free 127.0.0.1 port, warms it up, then
sends ``--requests`` single-image predictions from ``--concurrency`` keep-alive connections (one thread each)
and prints p50/p90/p99 latency, requests per second and the error count; the figures also go to a JSON file.
Every answer is checked (status 200 and the expected digit), so "0 errors" means every prediction was right.

Payloads (``--payload``, default json and png, one after the other):
  json      {"pixels": 28x28} of an MNIST test digit, used as-is (the model's own format)
  png       what the page uploads for a "3" drawn on its 280x280 canvas: the ink and a white margin
            (``imaging.ink_crop_box``, 143x245 px) as a grayscale PNG, multipart; the server gives it exactly
            the whole canvas's answer
  png-full  the whole 280x280 canvas, as a client that does not crop would send it

The client runs on the same machine as the server, so both share its cores: figures are lower bounds of what
the server alone could do. Its default (``--client raw``) sends a request prepared once over a plain
keep-alive socket, to leave the cores to the server; ``--client http.client`` is the stdlib's client, as
before. Traffic goes to 127.0.0.1 only; the loop is bounded by count and by --timeout.

    python benchmarks/serve_load.py --run RUN_DIR [--requests 2000] [--concurrency 2] [--workers 1 2]
        [--client raw|http.client] [--out results.json]

Without --run, a CNN is trained for one epoch into a temporary folder first (about half a minute).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def canvas_three_png() -> bytes:
    """A 280x280 white canvas with a black "3" drawn 20 px wide, as the page's canvas would send it."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (280, 280), (255, 255, 255, 255))
    draw = ImageDraw.Draw(img)
    top = [(140 + 51 * math.cos(math.radians(a)), 90 + 51 * math.sin(math.radians(a)))
           for a in range(200, 451, 10)]
    bottom = [(140 + 51 * math.cos(math.radians(a)), 190 + 51 * math.sin(math.radians(a)))
              for a in range(270, 521, 10)]
    draw.line(top + bottom, fill=(17, 17, 17, 255), width=20, joint="curve")
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def payload(name: str) -> tuple[bytes, str, int]:
    """(body, content type, expected digit) of one ``--payload`` name."""
    if name == "json":
        from mnistlab.data import load_dataset

        test = load_dataset("mnist", splits=("test",)).test
        return json.dumps({"pixels": test.images[0].tolist()}).encode(), "application/json", int(test.labels[0])
    whole = canvas_three_png()
    body, content_type = multipart("image", "drawing.png", page_upload(whole) if name == "png" else whole,
                                   "image/png")
    return body, content_type, 3


def page_upload(canvas_png: bytes) -> bytes:
    """What the page sends for this canvas (static/app.js): its ink crop by ``imaging.ink_crop_box`` (else all
    of it) as an 8-bit grayscale PNG of Pillow's luma levels, rows unfiltered and zlib-deflated."""
    import struct
    import zlib

    from PIL import Image

    from mnistlab.imaging import ink_crop_box

    pad = Image.open(io.BytesIO(canvas_png)).convert("RGBA")
    box = ink_crop_box(np.asarray(pad))
    gray = np.asarray(pad.convert("L"))
    if box is not None:
        gray = gray[box[0]:box[1], box[2]:box[3]]
    height, width = gray.shape
    raw = np.zeros((height, width + 1), dtype=np.uint8)  # filter type 0 before each row
    raw[:, 1:] = gray

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes())) + chunk(b"IEND", b""))


class RawConnection:
    """One keep-alive HTTP/1.1 connection that sends a request prepared once and reads the answer by its
    Content-Length: about a quarter of http.client's CPU per request (it builds and parses every header in
    Python), which matters when the client shares the server's cores."""

    def __init__(self, port: int, request: bytes) -> None:
        self.request = request
        self.address = ("127.0.0.1", port)
        self.socket = socket.create_connection(self.address, timeout=30)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self) -> tuple[int, bytes]:
        self.socket.sendall(self.request)
        data = b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += self._recv()
        head, body = data[:end], data[end + 4:]
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"content-length" not in headers:
            # mnistlab's answers always carry one; anything else (chunked, say) is an error of its own
            raise ValueError(f"no Content-Length (Transfer-Encoding {headers.get(b'transfer-encoding')!r})")
        length = int(headers[b"content-length"])
        while len(body) < length:
            body += self._recv()
        if headers.get(b"connection") == b"close":  # a refusal closes the connection: the next request
            self.socket.close()                    # must not count as a second error
            self.socket = socket.create_connection(self.address, timeout=30)
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return int(head[9:12]), body[:length]

    def _recv(self) -> bytes:
        chunk = self.socket.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.socket.close()


class StdlibConnection:
    """The same through ``http.client`` (the client of the figures before issue 12's stop 22)."""

    def __init__(self, port: int, body: bytes, content_type: str) -> None:
        self.body, self.content_type = body, content_type
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self) -> tuple[int, bytes]:
        self.connection.request("POST", PATH, body=self.body, headers={"Content-Type": self.content_type})
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.connection.close()


PATH = "/api/predict?top=1"


def run_load(port: int, body: bytes, content_type: str, digit: int, *, requests: int, concurrency: int,
             timeout: float, client: str = "raw") -> dict[str, Any]:
    """Send ``requests`` POSTs from ``concurrency`` threads; return latency percentiles and throughput."""
    latencies: list[float] = []
    server_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    attempted = [0]
    deadline = time.monotonic() + timeout
    request = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def connect() -> RawConnection | StdlibConnection:
        return RawConnection(port, request) if client == "raw" else StdlibConnection(port, body, content_type)

    def worker() -> None:
        connection = connect()
        mine: list[float] = []
        mine_server: list[float] = []
        try:
            while time.monotonic() < deadline:
                with lock:
                    if next(counter, None) is None:
                        break
                    attempted[0] += 1
                started = time.perf_counter()
                try:
                    status, raw = connection.post()
                    answer = json.loads(raw)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    connection.close()
                    connection = connect()
                    continue
                mine.append(time.perf_counter() - started)
                if status != 200 or answer.get("prediction") != digit:
                    with lock:
                        errors.append(f"{status}: {str(answer)[:200]}")
                else:
                    mine_server.append(float(answer["milliseconds"]))
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)
                server_ms.extend(mine_server)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    done = len(latencies)
    ms = np.array(latencies) * 1000.0
    return {
        "requests": requests,
        "completed": done,
        # failed or wrong answers, plus requests never sent before --timeout
        "errors": len(errors) + (requests - attempted[0]),
        "error_samples": errors[:5],
        "concurrency": concurrency,
        "wall_seconds": round(wall, 3),
        "requests_per_second": round(done / wall, 1) if wall > 0 else None,
        "latency_ms": {key: round(float(np.percentile(ms, q)), 3) for key, q in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))} if done else {},
        "server_ms_p50": round(statistics.median(server_ms), 3) if server_ms else None,
    }


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children (the server and its worker processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for one in [pid, *(int(c) for c in (children.read_text().split() if children.exists() else []))]:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def start_server(model: Path, log: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, float]:
    """`mnistlab serve MODEL --quiet EXTRA...` on a free port: (process, port, seconds until /healthz answered).

    RuntimeError with the server's log when it exits or does not answer within 120 s.
    """
    port = free_port()
    started = time.perf_counter()
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(model), "--port", str(port),
                                   "--quiet", *extra], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return server, port, time.perf_counter() - started
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(log.read_text()) from None
            time.sleep(0.05)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()


def serve_and_load(run_dir: Path, workers: int, args: argparse.Namespace, log: Path,
                   report: dict[str, Any]) -> bool:
    """Start `mnistlab serve RUN --workers N`, run every payload and concurrency against it, add the rows."""
    try:
        server, port, _ = start_server(run_dir, log, "--workers", str(workers))
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return False
    try:
        time.sleep(1.0)  # every worker up, not just the first to answer
        for name in args.payload:
            body, content_type, digit = payload(name)
            run_load(port, body, content_type, digit, requests=args.warmup, concurrency=2, timeout=args.timeout,
                     client=args.client)
            for concurrency in args.concurrency:
                server_cpu, client_cpu = process_tree_cpu_seconds(server.pid), os.times()
                timed = run_load(port, body, content_type, digit, requests=args.requests,
                                 concurrency=concurrency, timeout=args.timeout, client=args.client)
                after = os.times()
                done = max(1, timed["completed"])
                result = {"payload": name, "workers": workers, "client": args.client, **timed,
                          # CPU per answered request: what the cores spend, whatever the wall clock says
                          "server_cpu_ms_per_request": round(
                              (process_tree_cpu_seconds(server.pid) - server_cpu) / done * 1000, 3),
                          "client_cpu_ms_per_request": round(
                              (after.user - client_cpu.user + after.system - client_cpu.system) / done * 1000, 3)}
                report["results"].append(result)
                lat = result["latency_ms"]
                print(f"{name:<4} workers {workers} concurrency {concurrency:>2}: "
                      f"{result['completed']}/{args.requests} done, "
                      f"{result['errors']} errors, {result['requests_per_second']} req/s, "
                      f"p50 {lat.get('p50')} ms, p90 {lat.get('p90')} ms, p99 {lat.get('p99')} ms "
                      f"(server work p50 {result['server_ms_p50']} ms; CPU per request: server "
                      f"{result['server_cpu_ms_per_request']} ms, client {result['client_cpu_ms_per_request']} ms)",
                      flush=True)
    finally:
        stop_server(server)
    return True


def machine() -> dict[str, Any]:
    """The shared machine description, plus what this benchmark pins on the server side."""
    from _common import machine as common_machine

    return {**common_machine(), "server_torch_threads": 1, "loadavg_before": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run directory to serve (default: a 1-epoch CNN trained first)")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2],
                        help="connections sending at once; several values run one after another (default 2)")
    parser.add_argument("--payload", nargs="+", choices=("json", "png", "png-full"),
                        default=["json", "png"])
    parser.add_argument("--client", choices=("raw", "http.client"), default="raw",
                        help="raw: a prepared request on a plain socket (default); http.client: the stdlib's")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests first (default 100)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a load run stops")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="server processes (`serve --workers`); several values start one server each, "
                             "one after another (default 1)")
    parser.add_argument("--out", default="benchmarks/serve_load.json", help="JSON file for the figures")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not all(1 <= c <= 64 for c in args.concurrency):
        parser.error("--requests must be in 1..100000 and --concurrency in 1..64")

    from _common import isolate_registry

    isolate_registry()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        run_dir = Path(args.run) if args.run else Path(scratch) / "cnn"
        if not args.run:
            print("training a 1-epoch CNN to serve ...", flush=True)
            subprocess.run([sys.executable, "-m", "mnistlab", "train", "cnn", "--epochs", "1",
                            "--device", "cpu", "--out", str(run_dir)], check=True, stdout=subprocess.DEVNULL)
        report: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                                  "machine": machine(), "results": []}
        for workers in args.workers:
            if not serve_and_load(run_dir, workers, args, Path(scratch) / f"serve-{workers}.log", report):
                return 1
        report["machine"]["loadavg_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["errors"] == 0 for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
