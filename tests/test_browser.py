"""End to end in a real browser: `mnistlab serve` in a subprocess, Debian's chromium driven by Playwright.

A "3" is drawn with mouse events and a "7" with touch events on a phone-sized screen; the page must show the
digit with the highest probability bar. An upload and a bad upload go through the page's file input. Every
request the page makes must stay on the local server (the page works offline). Screenshots are saved under
``$MNISTLAB_TEST_ARTIFACTS`` (default: the system's temporary folder).

The API docs page (/docs) must render its operation list with the network blocked; probabilities are shown
with one rule (no "0.0%" beside "<0.1%", never "100.0% sure"); a server started with a token works from the
URL it prints (the token in the fragment) and asks for the token when the URL has none.

Chromium missing is a failure, not a skip: CI installs it (.ci/run) and this test is how we know the page
works. ``playwright install`` cannot download browsers here, so the system chromium is always used.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.imagekit import digit_strokes, mnist_on_paper

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Screenshots for a human to look at: a folder named by MNISTLAB_TEST_ARTIFACTS, else the system's temporary
# folder, so the suite never writes into the checkout (tests/systemdeps.py checks that).
ARTIFACTS = Path(os.environ.get("MNISTLAB_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "mnistlab-test-artifacts")
PAD_BOX = (40 / 280, 40 / 280, 200 / 280)  # where digits are drawn on the pad: left, top, side (fractions)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(run_dir: Path, log: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """The real command, `mnistlab serve RUN --port P`, in a subprocess; terminated afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(run_dir),
                                    "--host", "127.0.0.1", "--port", str(port), *extra],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"mnistlab serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mnistlab serve did not answer within 90 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module", params=["torch", "onnx"])
def server_url(trained_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory,
               request: pytest.FixtureRequest) -> Iterator[str]:
    """`mnistlab serve RUN --backend B` for both backends: the page must work unchanged on torch and on the
    exported ONNX model (issue 12)."""
    with running_server(trained_cnn_run, tmp_path_factory.mktemp("serve") / "serve.log",
                        "--backend", request.param) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (see .ci/run)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def open_page(browser, url: str, *, path: str = "/", ready: str = "document.body.dataset.state === 'empty'",
              **context_options):
    """A fresh page on the app that records console errors and any request leaving the local server (and
    blocks it: the network is unreachable for the page)."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.problems = []  # type: ignore[attr-defined]

    def guard(route) -> None:
        if route.request.url.startswith(url):
            route.continue_()
        else:  # nothing outside the local server: the page must work offline
            page.problems.append(f"external request {route.request.url}")
            route.abort()

    page.route("**/*", guard)
    page.on("pageerror", lambda error: page.problems.append(f"page error {error}"))
    # Chromium logs every 4xx as a console error; a 4xx is the expected answer to bad input, a 5xx never is.
    page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith("Failed to load resource")
            and page.problems.append(f"console {msg.text}"))
    page.on("response", lambda r: r.status >= 500 and page.problems.append(f"{r.status} from {r.url}"))
    page.goto(url + path)
    page.wait_for_function(ready, timeout=30_000)  # the page: model info loaded
    return page


def stroke_points(page, stroke: list[tuple[float, float]]) -> list[tuple[float, float]]:
    box = page.locator("#pad").bounding_box()
    left, top, side = PAD_BOX
    return [(box["x"] + (left + x * side) * box["width"], box["y"] + (top + y * side) * box["height"])
            for x, y in stroke]


def draw_with_mouse(page, digit: int) -> None:
    """Draw ``digit``'s strokes on the pad with real mouse events (press, move, release per stroke)."""
    for stroke in digit_strokes(digit):
        points = stroke_points(page, stroke)
        page.mouse.move(*points[0])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(x, y, steps=2)
        page.mouse.up()


def settle(page, *, results_before: int) -> None:
    """Wait until every request the page started has been answered and a new answer is shown."""
    page.wait_for_function(
        f"document.body.dataset.pending === '0' && Number(document.body.dataset.results) > {results_before}"
        " && document.body.dataset.state === 'ready'", timeout=30_000)


def results(page) -> int:
    return int(page.evaluate("Number(document.body.dataset.results)"))


def shown_answer(page) -> tuple[str, str, list[float]]:
    """(prediction text, class of the highlighted bar, every bar's probability)."""
    bars = page.locator("#bars li")
    probabilities = [float(bars.nth(i).get_attribute("data-probability")) for i in range(bars.count())]
    top = page.locator("#bars li.top").get_attribute("data-class")
    return page.locator("#prediction").inner_text().strip(), top, probabilities


def input_ink(page) -> int:
    """Sum of the 28x28 preview's red channel: > 0 when the model's input is shown."""
    return int(page.evaluate("""() => {
        const data = document.getElementById('input28').getContext('2d').getImageData(0, 0, 28, 28).data;
        let sum = 0; for (let i = 0; i < data.length; i += 4) sum += data[i]; return sum; }"""))


def record_uploads(page) -> list[tuple[str, bytes]]:
    """(content type, body) of every /api/predict request the page sends, in order."""
    uploads: list[tuple[str, bytes]] = []
    page.on("request", lambda r: "/api/predict" in r.url and uploads.append(
        (r.headers["content-type"], r.post_data_buffer)))
    return uploads


def check_upload_is_the_ink_crop(page, upload: tuple[str, bytes], *, gray: bool) -> None:
    """The page's upload is exactly imaging.ink_crop_box's crop of the whole pad, as a grayscale PNG of
    Pillow's luma levels (``gray``) or the canvas's own RGBA PNG, and the server's preparation gives it the
    whole pad's 28x28: the page sends fewer bytes, never a different digit."""
    import base64
    import email.parser
    import io

    import numpy as np
    from PIL import Image

    from mnistlab.imaging import ink_crop_box, plain_png_bytes, prepare_image

    content_type, body = upload
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = [part for part in message.walk() if part.get_filename() == "drawing.png"]
    assert len(parts) == 1
    sent = parts[0].get_payload(decode=True)
    url = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    whole = base64.b64decode(url.split(",", 1)[1])
    pad = Image.open(io.BytesIO(whole)).convert("RGBA")
    box = ink_crop_box(np.asarray(pad))
    assert box is not None  # the test's digit is drawn well inside the pad
    top, bottom, left, right = box
    uploaded = Image.open(io.BytesIO(sent))
    expected = np.asarray(pad.convert("L") if gray else pad)[top:bottom, left:right]  # Pillow's luma: the oracle
    assert uploaded.mode == ("L" if gray else "RGBA")
    assert np.array_equal(np.asarray(uploaded), expected)
    assert plain_png_bytes(sent) == expected.size  # the server prepares it inline: a plain PNG
    assert np.array_equal(prepare_image(sent).pixels, prepare_image(whole).pixels)


def test_draw_a_three_with_the_mouse_and_see_three(browser, server_url: str, mnist, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = open_page(browser, server_url, viewport={"width": 1100, "height": 760})
    assert "cnn trained on mnist" in page.locator("#model-info").inner_text()
    uploads = record_uploads(page)
    before = results(page)
    for stroke in digit_strokes(3):
        points = stroke_points(page, stroke)
        half = len(points) // 2
        page.mouse.move(*points[0])
        page.mouse.down()
        for x, y in points[1:half]:
            page.mouse.move(x, y, steps=3)
        # Live: the bars update while the button is still down (throttled requests, not only on release).
        page.wait_for_function(f"Number(document.body.dataset.results) > {before}", timeout=30_000)
        for x, y in points[half:]:
            page.mouse.move(x, y, steps=3)
        before = results(page)
        page.mouse.up()  # sends the final request; `pending` counts it until its answer is shown
    settle(page, results_before=before)
    prediction, top, probabilities = shown_answer(page)
    assert prediction == "3" and top == "3"
    assert probabilities[3] == max(probabilities) and abs(sum(probabilities) - 1) < 1e-3
    assert input_ink(page) > 0
    check_upload_is_the_ink_crop(page, uploads[-1], gray=True)
    page.wait_for_timeout(300)  # let the bars finish their 120 ms transition
    page.screenshot(path=str(ARTIFACTS / "browser-desktop-3.png"), full_page=True)

    # Undo removes the only stroke: back to an empty pad, no request, no stale answer.
    page.click("#undo")
    page.wait_for_function("document.body.dataset.state === 'empty'")
    assert page.locator("#prediction").inner_text().strip() == "?"

    # Upload a handwritten digit (an MNIST test digit on white paper, as a JPEG).
    photo = tmp_path / "digit.jpg"
    mnist_on_paper(mnist.test.images[1]).convert("RGB").save(photo, quality=90)
    before = results(page)
    page.set_input_files("#upload", str(photo))
    settle(page, results_before=before)
    assert shown_answer(page)[0] == str(int(mnist.test.labels[1]))
    page.wait_for_timeout(300)  # let the bars finish their 120 ms transition
    page.screenshot(path=str(ARTIFACTS / "browser-desktop-upload.png"), full_page=True)

    # A file that is not an image: a clear message on the page, no crash.
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not a png")
    page.set_input_files("#upload", str(junk))
    page.wait_for_function("document.body.dataset.state === 'error' && document.body.dataset.pending === '0'")
    assert "not an image" in page.locator("#status").inner_text()
    assert page.problems == []  # type: ignore[attr-defined]


def test_draw_a_seven_with_touch_on_a_phone(browser, server_url: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = open_page(browser, server_url, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                     is_mobile=True, has_touch=True)
    # Phone layout: nothing wider than the screen, the pad fills most of the width.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.locator("#pad").bounding_box()["width"] >= 300
    # A browser without CompressionStream (Safari before 16.4): the crop goes as the canvas's RGBA PNG.
    page.evaluate("delete window.CompressionStream")
    uploads = record_uploads(page)
    cdp = page.context.new_cdp_session(page)
    before = results(page)
    for stroke in digit_strokes(7):
        points = stroke_points(page, stroke)
        dense = []  # a finger moves in small steps
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            dense += [(x0 + (x1 - x0) * t / 8, y0 + (y1 - y0) * t / 8) for t in range(8)]
        dense.append(points[-1])
        for kind, (x, y) in [("touchStart", dense[0]), *(("touchMove", point) for point in dense[1:])]:
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    settle(page, results_before=before)
    prediction, top, probabilities = shown_answer(page)
    assert prediction == "7" and top == "7" and probabilities[7] == max(probabilities)
    assert page.evaluate("window.scrollY") == 0  # drawing did not scroll the page
    check_upload_is_the_ink_crop(page, uploads[-1], gray=False)
    page.wait_for_timeout(300)  # let the bars finish their 120 ms transition
    page.screenshot(path=str(ARTIFACTS / "browser-phone-7.png"), full_page=True)
    page.click("#clear")
    page.wait_for_function("document.body.dataset.state === 'empty'")
    assert page.problems == []  # type: ignore[attr-defined]


PERCENT = re.compile(r"(<0\.1%|>99\.9%|\d{1,2}\.\d%)")


def test_percentages_follow_one_rule(browser, server_url: str) -> None:
    """The page's display of a crafted answer (an exact 0, underflows, a saturated 1): one rule in one list."""
    page = open_page(browser, server_url, viewport={"width": 1100, "height": 760})
    probabilities = [1.0, 0.0, 1e-9, 0.0004, 0.0006, 0.0, 0.0, 0.0, 0.0, 0.0]
    answer = {"prediction": 0, "label": "0", "probabilities": probabilities,
              "top": [{"class": 0, "label": "0", "probability": 1.0},
                      {"class": 4, "label": "4", "probability": 0.0006}],
              "inverted": True, "source_size": [280, 280], "input": [[0] * 28] * 28, "milliseconds": 1.0}
    page.route("**/api/predict*", lambda route: route.fulfill(status=200, content_type="application/json",
                                                              body=json.dumps(answer)))
    before = results(page)
    points = stroke_points(page, [(0.5, 0.2), (0.5, 0.8)])
    page.mouse.move(*points[0])
    page.mouse.down()
    page.mouse.move(*points[1], steps=5)
    page.mouse.up()
    settle(page, results_before=before)
    values = page.locator("#bars li .value").all_inner_texts()
    assert values == [">99.9%", "<0.1%", "<0.1%", "<0.1%", "0.1%", "<0.1%", "<0.1%", "<0.1%", "<0.1%", "<0.1%"]
    assert all(PERCENT.fullmatch(value) for value in values)
    assert page.locator("#confidence").inner_text() == ">99.9% sure"
    assert page.locator("#status").inner_text() == "next best: 4 (0.1%)"
    # A real answer follows the same rule.
    page.unroute("**/api/predict*")
    before = results(page)
    page.click("#undo")
    draw_with_mouse(page, 3)
    settle(page, results_before=before)
    values = page.locator("#bars li .value").all_inner_texts()
    assert all(PERCENT.fullmatch(value) for value in values), values
    assert "100.0%" not in page.locator("#confidence").inner_text()
    assert page.problems == []  # type: ignore[attr-defined]


def test_api_docs_render_with_the_network_blocked(browser, server_url: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = open_page(browser, server_url, path="/docs", ready="document.body.dataset.state === 'ready'",
                     viewport={"width": 1100, "height": 900})
    predict = page.locator('article.operation[data-path="/api/predict"][data-method="post"]')
    assert predict.is_visible()
    assert "/api/predict" in predict.locator("h2").inner_text()
    statuses = predict.locator("tr[data-status]").evaluate_all("rows => rows.map(r => r.dataset.status)")
    assert {"200", "400", "413", "415", "422"} <= set(statuses)
    assert "multipart/form-data" in predict.inner_text() and "application/json" in predict.inner_text()
    assert page.locator('article.operation[data-path="/healthz"]').is_visible()
    page.screenshot(path=str(ARTIFACTS / "browser-docs.png"), full_page=True)
    assert page.problems == []  # type: ignore[attr-defined]


TOKEN = "page-token-0123456789abcdef"


def test_the_page_works_with_a_token(browser, trained_cnn_run: Path, tmp_path: Path) -> None:
    with running_server(trained_cnn_run, tmp_path / "serve.log", env={"MNISTLAB_TOKEN": TOKEN}) as url:
        assert f"#token={TOKEN}" in (tmp_path / "serve.log").read_text()
        # The URL the server prints: the page takes the token from the fragment, then drops it from the URL.
        page = open_page(browser, url, path=f"/#token={TOKEN}", viewport={"width": 1100, "height": 760})
        assert "#" not in page.url and "cnn trained on mnist" in page.locator("#model-info").inner_text()
        before = results(page)
        draw_with_mouse(page, 3)
        settle(page, results_before=before)
        assert shown_answer(page)[0] == "3"
        assert page.problems == []  # type: ignore[attr-defined]
        # Without the fragment the page asks for the token (the API said 401), then works.
        asked: list[str] = []
        context = browser.new_context()
        plain = context.new_page()

        def answer(dialog) -> None:
            asked.append(dialog.message)
            dialog.accept(TOKEN)

        plain.on("dialog", answer)
        plain.goto(url + "/")
        plain.wait_for_function("document.body.dataset.state === 'empty'", timeout=30_000)
        assert len(asked) == 1 and "access token" in asked[0]
        assert "cnn trained on mnist" in plain.locator("#model-info").inner_text()


# A scribble that is no digit: a hash sign across the pad (unit-square strokes, as digit_strokes gives).
HASH_SCRIBBLE = [[(0.1, 0.35), (0.9, 0.35)], [(0.1, 0.65), (0.9, 0.65)], [(0.35, 0.1), (0.35, 0.9)],
                 [(0.65, 0.1), (0.65, 0.9)]]


def draw_strokes_with_mouse(page, strokes: list[list[tuple[float, float]]]) -> None:
    for stroke in strokes:
        points = stroke_points(page, stroke)
        page.mouse.move(*points[0])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(x, y, steps=8)
        page.mouse.up()


def saliency_heat(page) -> int:
    """Sum of the saliency canvas's red channel: > 0 when a heat map is drawn."""
    return int(page.evaluate("""() => {
        const data = document.getElementById('saliency').getContext('2d').getImageData(0, 0, 28, 28).data;
        let sum = 0; for (let i = 0; i < data.length; i += 4) sum += data[i]; return sum; }"""))


def test_a_scribble_is_not_sure_and_a_digit_is_read(browser, trained_mlp_run: Path, tmp_path: Path, mnist) -> None:
    """A calibrated run (issue 13, item 4): a scribble shows "not sure" with the next guesses, a drawn 3 is
    still read as 3, and both show the saliency heat map beside the 28x28 input."""
    import shutil

    from mnistlab.analysis import calibrate_run

    run = Path(shutil.copytree(trained_mlp_run, tmp_path / "calibrated"))
    threshold = calibrate_run(run, device="cpu", dataset=mnist).threshold
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_server(run, tmp_path / "serve.log") as url:
        page = open_page(browser, url, viewport={"width": 1100, "height": 760})
        assert page.locator("#saliency-figure").is_hidden()
        before = results(page)
        draw_strokes_with_mouse(page, HASH_SCRIBBLE)
        settle(page, results_before=before)
        assert page.locator("#prediction").inner_text().strip() == "not sure"
        assert page.evaluate("document.body.dataset.notSure") == "true"
        _, top, probabilities = shown_answer(page)
        assert max(probabilities) < threshold
        guesses = page.locator("#status").inner_text()
        assert guesses.startswith("maybe: ") and guesses.count("(") == 3
        assert guesses.split()[1] == top  # the first guess is the highest bar
        assert page.locator("#saliency-figure").is_visible() and saliency_heat(page) > 0
        page.screenshot(path=str(ARTIFACTS / "browser-not-sure.png"), full_page=True)

        page.click("#clear")
        page.wait_for_function("document.body.dataset.state === 'empty'")
        assert page.locator("#saliency-figure").is_hidden()
        before = results(page)
        draw_with_mouse(page, 3)
        settle(page, results_before=before)
        prediction, top, probabilities = shown_answer(page)
        assert prediction == "3" and top == "3" and probabilities[3] >= threshold
        assert page.evaluate("document.body.dataset.notSure") == "false"
        assert "sure" in page.locator("#confidence").inner_text() and saliency_heat(page) > 0
        page.screenshot(path=str(ARTIFACTS / "browser-calibrated-3.png"), full_page=True)
        assert page.problems == []  # type: ignore[attr-defined]
