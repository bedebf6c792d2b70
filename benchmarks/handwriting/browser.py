"""Draw digits on the real draw-a-digit page in Chromium and keep the PNG the page sends to the server.

`mnistlab serve RUN` runs in a subprocess (the page and API exactly as users get them); Debian's chromium is
driven by Playwright with real mouse events (press, move in ``steps``, release per stroke). Every
``/api/predict`` request the page makes is intercepted on its way out, its PNG kept, and passed on to the server
unchanged; after the last stroke the page's final request (sent on mouse release) holds the finished drawing.
That PNG is checked against the canvas itself (``toDataURL``) so what is stored is what the page sent.

The model behind the server does not matter here (its answers are ignored): without ``--run`` a throwaway
softmax model is trained for one epoch on random synthetic data (no MNIST) just so the server can start.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from handwriting.strokes import PAD, Drawing

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1100, "height": 760}  # the desktop layout of tests/test_browser.py
WAIT_MS = 30_000                            # a page that has not answered by then is broken


class DrawingFailed(RuntimeError):
    """The page did not produce a drawing (server gone, page error): a bug, not a user error."""


def chromium_version() -> str:
    """``chromium --version`` (recorded in the manifest: another version may anti-alias edges differently)."""
    out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60, check=False)
    return out.stdout.strip()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _quiet_env(folder: Path) -> dict[str, str]:
    """The environment for the subprocesses: one CPU thread (the cores are shared), a throwaway registry."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MNISTLAB_HOME": str(folder / "home")}


def throwaway_run(folder: Path) -> Path:
    """A softmax run trained 1 epoch on random synthetic digits (not MNIST): something for the server to load."""
    from mnistlab.data import FILE_STEMS, write_idx

    rng = np.random.default_rng(0)
    data = folder / "synthetic"
    data.mkdir()
    for role, count in (("train", 512), ("test", 64)):
        write_idx(data / f"{FILE_STEMS[role + '_images']}.gz", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(data / f"{FILE_STEMS[role + '_labels']}.gz", (np.arange(count) % 10).astype(np.uint8))
    run = folder / "run"
    subprocess.run([sys.executable, "-m", "mnistlab", "train", "softmax", "--epochs", "1", "--threads", "1",
                    "--data-dir", str(data), "--out", str(run), "--device", "cpu"],
                   check=True, capture_output=True, timeout=600, env=_quiet_env(folder))
    return run


@contextmanager
def running_server(run_dir: Path, log: Path) -> Iterator[str]:
    """`mnistlab serve RUN` on a free local port; its URL; terminated afterwards."""
    port = _free_port()
    env = _quiet_env(log.parent)
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(run_dir), "--host", "127.0.0.1",
                                    "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise DrawingFailed(f"mnistlab serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DrawingFailed(f"mnistlab serve did not answer within 120 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def png_from_multipart(body: bytes) -> bytes:
    """The PNG file inside a multipart/form-data body (from its signature to the end of its IEND chunk)."""
    start = body.find(b"\x89PNG\r\n\x1a\n")
    end = body.find(b"IEND", start)
    if start < 0 or end < 0:
        raise DrawingFailed("the page's request holds no PNG")
    return body[start:end + 8]  # "IEND" and its 4-byte CRC


def canvas_gray(png: bytes) -> np.ndarray:
    """The page's PNG as (280, 280) uint8 gray, checked lossless: opaque, and R = G = B everywhere."""
    from PIL import Image

    rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    if rgba.shape[:2] != (int(PAD), int(PAD)):
        raise DrawingFailed(f"the canvas is {rgba.shape[1]}x{rgba.shape[0]}, expected {PAD:g}x{PAD:g}")
    if not ((rgba[..., 3] == 255).all() and (rgba[..., 0] == rgba[..., 1]).all()
            and (rgba[..., 1] == rgba[..., 2]).all()):
        raise DrawingFailed("the canvas is not opaque gray: storing it as gray would lose information")
    return np.ascontiguousarray(rgba[..., 0])


def sent_gray(png: bytes) -> np.ndarray:
    """The gray levels of a PNG the page uploaded (8-bit gray, or the canvas's RGBA where it falls back)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def page_crop(gray: np.ndarray) -> np.ndarray:
    """What the page uploads of an opaque gray pad: ``imaging.ink_crop_box``'s crop (or all of it)."""
    from mnistlab.imaging import ink_crop_box

    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    box = ink_crop_box(rgba)
    return gray if box is None else gray[box[0]:box[1], box[2]:box[3]]


class Pad:
    """The page open in Chromium, ready to draw one digit after another (clearing in between)."""

    def __init__(self, page: Any, captured: list[bytes]) -> None:
        self.page = page
        self.captured = captured

    def draw(self, drawing: Drawing) -> bytes:
        """Draw ``drawing`` with the mouse; the PNG of the page's final request (the finished drawing)."""
        page = self.page
        page.keyboard.press("Escape")  # the page's Clear: empty pad, no request
        page.wait_for_function("document.body.dataset.state === 'empty' && document.body.dataset.pending === '0'",
                               timeout=WAIT_MS)
        before = int(page.evaluate("Number(document.body.dataset.results)"))
        box = page.locator("#pad").bounding_box()
        sx, sy = box["width"] / PAD, box["height"] / PAD
        self.captured.clear()
        for stroke in drawing.strokes:
            points = [(box["x"] + x * sx, box["y"] + y * sy) for x, y in stroke]
            page.mouse.move(*points[0])
            page.mouse.down()
            for x, y in points[1:]:
                page.mouse.move(x, y, steps=drawing.steps)
            page.mouse.up()
        page.wait_for_function(
            f"document.body.dataset.pending === '0' && Number(document.body.dataset.results) > {before}"
            " && document.body.dataset.state !== 'busy'", timeout=WAIT_MS)
        if not self.captured:
            raise DrawingFailed("the page sent no drawing")
        shown = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
        on_canvas = base64.b64decode(shown.split(",", 1)[1])
        if not np.array_equal(sent_gray(self.captured[-1]), page_crop(canvas_gray(on_canvas))):
            raise DrawingFailed("the last PNG the page sent is not the finished drawing")
        return on_canvas  # the whole pad; the page sent its ink crop, which prepares to the same 28x28


@contextmanager
def open_pad(run_dir: Path | None = None) -> Iterator[Pad]:
    """Serve ``run_dir`` (or a throwaway run), open the page in Chromium, and yield a :class:`Pad`."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise DrawingFailed(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="handwriting-") as tmp:
        folder = Path(tmp)
        run = run_dir if run_dir is not None else throwaway_run(folder)
        with running_server(run, folder / "serve.log") as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport=VIEWPORT)
                page = context.new_page()
                captured: list[bytes] = []
                problems: list[str] = []

                def keep(route: Any) -> None:
                    body = route.request.post_data_buffer
                    if body:
                        captured.append(png_from_multipart(body))
                    route.continue_()

                page.route("**/api/predict*", keep)
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.goto(url + "/")
                page.wait_for_function("document.body.dataset.state === 'empty'", timeout=WAIT_MS)
                yield Pad(page, captured)
                if problems:
                    raise DrawingFailed(f"the page reported errors: {problems[:3]}")
            finally:
                browser.close()
