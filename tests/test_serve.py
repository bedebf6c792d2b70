"""The server: every endpoint and every bad input through FastAPI's test client, fuzzed uploads, and a
bounded load of concurrent requests against a real uvicorn server on a free local port."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnistlab.imaging import prepare_image
from mnistlab.predict import Predictor
from mnistlab.serve import ServeLimits, create_app, static_dir
from tests.imagekit import bomb_png, digit_strokes, encode, mnist_on_paper, render_strokes

with warnings.catch_warnings():  # newer Starlette nudges towards httpx2; httpx is what the test extras pin
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def predictor(trained_cnn_run: Path) -> Predictor:
    return Predictor(trained_cnn_run)


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator[TestClient]:
    with TestClient(create_app(predictor=predictor)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def three_png() -> bytes:
    return encode(render_strokes(digit_strokes(3), canvas=(280, 280), box=(40, 40, 200), width=20))


def post_image(client: TestClient, data: bytes, *, query: str = "", filename: str = "digit.png"):
    return client.post(f"/api/predict{query}", files={"image": (filename, data, "image/png")})


def post_raw(client: TestClient, body: bytes, content_type: str):
    return client.post("/api/predict", content=body, headers={"content-type": content_type})


# ------------------------------------------------------------------------------------------ endpoints
def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_model_reports_what_is_loaded(client: TestClient, trained_cnn_run: Path) -> None:
    info = client.get("/api/model").json()
    metrics = json.loads((trained_cnn_run / "metrics.json").read_text())
    assert info["model"] == "cnn" and info["dataset"] == "mnist" and info["run"] == trained_cnn_run.name
    assert info["test_accuracy"] == metrics["test_accuracy"]
    assert info["class_names"] == [str(i) for i in range(10)]
    assert info["params"] == 61_514
    assert info["limits"] == {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000}


def test_page_and_static_files_work_offline(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="pad"' in page.text and 'id="bars"' in page.text and 'type="file"' in page.text
    assert 'name="viewport"' in page.text  # phones get a real layout, not a zoomed-out desktop page
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for path in static_dir().iterdir():
        text = path.read_text(encoding="utf-8")
        # No CDN, web font or other network fetch: everything the page needs is served from here.
        assert "http://" not in text and "https://" not in text and "@import" not in text, path.name
        assert "//cdn" not in text and "fonts.googleapis" not in text, path.name


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/png"} <= set(body)


def test_predict_multipart_upload(client: TestClient, three_png: bytes) -> None:
    response = post_image(client, three_png, query="?top=4")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["prediction"] == 3 and result["label"] == "3"
    assert len(result["probabilities"]) == 10 and abs(sum(result["probabilities"]) - 1) < 1e-4
    assert result["probabilities"][3] == max(result["probabilities"])
    assert result["top"][0]["class"] == 3 and len(result["top"]) == 4
    assert [t["probability"] for t in result["top"]] == sorted((t["probability"] for t in result["top"]),
                                                               reverse=True)
    assert result["inverted"] is True and result["source_size"] == [280, 280]
    np.testing.assert_array_equal(np.array(result["input"]), prepare_image(three_png).pixels)


def test_predict_raw_image_body_is_the_same_as_multipart(client: TestClient, three_png: bytes) -> None:
    raw = client.post("/api/predict", content=three_png, headers={"content-type": "image/png"}).json()
    form = post_image(client, three_png).json()
    assert raw["probabilities"] == form["probabilities"] and raw["input"] == form["input"]


def test_predict_json_pixels_are_used_as_is(client: TestClient, predictor: Predictor, mnist) -> None:
    images = mnist.test.images[:5]
    for image in images:
        response = client.post("/api/predict", json={"pixels": image.tolist()})
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["input"] == image.tolist() and result["inverted"] is False
        expected = predictor.predict(image[None])[0]
        assert result["prediction"] == expected.label
        np.testing.assert_allclose(result["probabilities"], expected.probabilities, atol=1e-6)


def test_an_uploaded_mnist_digit_on_paper_is_read(client: TestClient, mnist) -> None:
    image, label = mnist.test.images[0], int(mnist.test.labels[0])
    data = encode(mnist_on_paper(image).convert("RGB"), "JPEG", quality=90)
    result = client.post("/api/predict", files={"image": ("photo.jpg", data, "image/jpeg")}).json()
    assert result["prediction"] == label


# ------------------------------------------------------------------------------------------ bad input
def truncated_png(three_png: bytes) -> bytes:
    return three_png[: len(three_png) // 2]


@pytest.mark.parametrize("make_request, status, message", [
    # images
    (lambda c, png: post_image(c, b"hello, I am text", filename="notes.txt"), 422, "not an image"),
    (lambda c, png: post_image(c, b""), 422, "empty"),
    (lambda c, png: post_image(c, truncated_png(png)), 422, "truncated or corrupt"),
    (lambda c, png: post_image(c, bomb_png(60_000, 60_000)), 413, "pixel limit"),
    (lambda c, png: post_image(c, encode(Image.new("L", (280, 280), 255))), 422, "blank"),
    (lambda c, png: post_image(c, encode(Image.new("RGBA", (280, 280), (0, 0, 0, 0)))), 422, "blank"),
    (lambda c, png: c.post("/api/predict", content=b"", headers={"content-type": "image/png"}), 422, "empty"),
    # JSON
    (lambda c, png: c.post("/api/predict", json={"pixels": [[0] * 28] * 27}), 422, "28x28"),
    (lambda c, png: c.post("/api/predict", json={"pixels": [[0] * 27] * 28}), 422, "28x28"),
    (lambda c, png: c.post("/api/predict", json={"pixels": [[256] * 28] * 28}), 422, "0..255"),
    (lambda c, png: c.post("/api/predict", json={"pixels": [[-1] * 28] * 28}), 422, "0..255"),
    (lambda c, png: c.post("/api/predict", json={"pixels": [[0.5] * 28] * 28}), 422, "whole numbers"),
    (lambda c, png: c.post("/api/predict", json={"pixels": [["7"] * 28] * 28}), 422, "only numbers"),
    (lambda c, png: c.post("/api/predict", json={"pixels": [[0] * 28] * 28}), 422, "blank"),
    (lambda c, png: c.post("/api/predict", json={"pixels": "0" * 784}), 422, "28x28"),
    (lambda c, png: c.post("/api/predict", json={"image": []}), 422, '"pixels" key'),
    (lambda c, png: c.post("/api/predict", json=[[0] * 28] * 28), 422, '"pixels" key'),
    (lambda c, png: post_raw(c, b"{not json", "application/json"), 400, "not valid JSON"),
    (lambda c, png: post_raw(c, b"[" * 200_000, "application/json"), 400, "nested too deeply"),
    (lambda c, png: post_raw(c, b"\xff\xfe", "application/json"), 400, "not valid JSON"),
    # requests
    (lambda c, png: c.post("/api/predict", content=b"x", headers={"content-type": "text/plain"}), 415,
     "Content-Type text/plain"),
    (lambda c, png: c.post("/api/predict", content=b"x"), 415, "Content-Type none"),
    (lambda c, png: c.post("/api/predict", data={"name": "x"}), 415, "x-www-form-urlencoded"),
    (lambda c, png: c.post("/api/predict", files={"a": ("a.png", png), "b": ("b.png", png)}), 400,
     "no image file"),
    (lambda c, png: c.post("/api/predict", content=b"garbage",
                           headers={"content-type": "multipart/form-data"}), 400, "boundary"),
    (lambda c, png: c.post("/api/predict?top=0", content=png, headers={"content-type": "image/png"}), 422,
     "top: "),
    (lambda c, png: c.post("/api/predict?top=11", content=png, headers={"content-type": "image/png"}), 422,
     "top: "),
    (lambda c, png: c.post("/api/predict?top=abc", content=png, headers={"content-type": "image/png"}), 422,
     "top: "),
    (lambda c, png: c.post("/api/predict?invert=maybe", content=png, headers={"content-type": "image/png"}),
     422, "invert: "),
    (lambda c, png: c.get("/api/predict"), 405, "Method Not Allowed"),
    (lambda c, png: c.get("/no/such/page"), 404, "Not Found"),
])
def test_bad_input_is_a_clear_4xx(client: TestClient, three_png: bytes, make_request, status: int,
                                  message: str) -> None:
    response = make_request(client, three_png)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail, detail


def test_multiple_files_use_the_image_field(client: TestClient, three_png: bytes) -> None:
    blank = encode(Image.new("L", (50, 50), 255))
    response = client.post("/api/predict", files={"other": ("x.png", blank, "image/png"),
                                                  "image": ("three.png", three_png, "image/png")})
    assert response.status_code == 200 and response.json()["prediction"] == 3


def test_uploads_over_the_limit_are_refused_before_decoding(predictor: Predictor, three_png: bytes) -> None:
    limits = ServeLimits(max_bytes=len(three_png) - 1, max_pixels=50_000)
    with TestClient(create_app(predictor=predictor, limits=limits)) as small:
        # Content-Length says it is too big: refused from the header, without reading the body. The body
        # really sent is small (100 bytes), so the streaming cap could not refuse it: only the header check can.
        declared = len(three_png)
        response = small.post("/api/predict", content=b"x" * 100,
                              headers={"content-type": "image/png", "content-length": str(declared)})
        assert response.status_code == 413, response.text
        expected = f"the upload is {declared:,} bytes, over the {len(three_png) - 1:,}-byte limit"
        assert expected in response.json()["detail"]
        # A chunked upload (no Content-Length) is cut off while streaming.
        chunks = (three_png[i:i + 1000] for i in range(0, len(three_png), 1000))
        response = small.post("/api/predict", content=chunks, headers={"content-type": "image/png"})
        assert response.status_code == 413 and "byte limit" in response.json()["detail"]
        response = small.post("/api/predict", files={"image": ("d.png", three_png, "image/png")})
        assert response.status_code == 413 and "byte limit" in response.json()["detail"]
        # Within the byte limit but over the pixel limit: refused from the header (280x280 > 50,000).
        small_file = encode(Image.new("L", (280, 280), 255).convert("1"))
        response = small.post("/api/predict", content=small_file, headers={"content-type": "image/png"})
        assert response.status_code == 413 and "78,400 pixels" in response.json()["detail"]
        # A JSON body has its own, much smaller cap.
        response = small.post("/api/predict", content=b" " * (1024 * 1024 + 1),
                              headers={"content-type": "application/json"})
        assert response.status_code == 413


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_uploads_never_cause_a_server_error(client: TestClient, three_png: bytes, data) -> None:
    """Random bytes, truncations and bit flips of real PNG/JPEG/GIF files: always 200 or a 4xx, never 500.

    The test client re-raises any exception the app does not handle, so a bug would fail here loudly.
    """
    picture = Image.open(io.BytesIO(three_png))
    sources = [three_png, encode(picture.convert("RGB"), "JPEG"), encode(picture.convert("P"), "GIF")]
    source = data.draw(st.sampled_from(sources))
    kind = data.draw(st.sampled_from(["random", "truncate", "flip"]))
    if kind == "random":
        payload = data.draw(st.binary(max_size=2000))
    elif kind == "truncate":
        payload = source[: data.draw(st.integers(0, len(source)))]
    else:
        mutable = bytearray(source)
        for position in data.draw(st.lists(st.integers(0, len(source) - 1), min_size=1, max_size=8)):
            mutable[position] ^= data.draw(st.integers(1, 255))
        payload = bytes(mutable)
    response = post_image(client, payload)
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    assert isinstance(response.json()["detail" if response.status_code >= 400 else "prediction"], str | int)


# ------------------------------------------------------------------------------------- a real server
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(predictor: Predictor) -> Iterator[int]:
    """uvicorn serving the app in a thread, on a free localhost port; stopped at the end of the module."""
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(predictor=predictor), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_concurrent_load_has_no_errors(live_server: int, three_png: bytes, mnist) -> None:
    """200 requests (uploads, JSON and bad ones mixed) from 8 keep-alive connections: every answer right."""
    pixels = json.dumps({"pixels": mnist.test.images[0].tolist()}).encode()
    expected_json = int(mnist.test.labels[0])
    requests = [("image/png", three_png, 200, 3), ("application/json", pixels, 200, expected_json),
                ("image/png", b"not an image", 422, None), ("image/png", three_png[:500], 422, None)]

    def worker(worker_id: int) -> list[str]:
        problems = []
        connection = http.client.HTTPConnection("127.0.0.1", live_server, timeout=30)
        try:
            for i in range(25):
                content_type, body, status, digit = requests[(worker_id + i) % len(requests)]
                connection.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                answer = json.loads(response.read())
                if response.status != status or (digit is not None and answer.get("prediction") != digit):
                    problems.append(f"{response.status} {answer}")
        finally:
            connection.close()
        return problems

    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = [p for batch in pool.map(worker, range(8)) for p in batch]
    assert problems == []
    # Still healthy afterwards.
    connection = http.client.HTTPConnection("127.0.0.1", live_server, timeout=10)
    connection.request("GET", "/healthz")
    assert connection.getresponse().status == 200


# ------------------------------------------------------------------------------------------ the command
def test_serve_command_refuses_a_busy_port_and_a_bad_run(trained_cnn_run: Path, tmp_path: Path,
                                                          capsys) -> None:
    from mnistlab.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(trained_cnn_run), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", str(free_port())]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["serve", str(trained_cnn_run), "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err


def test_server_answers_422_for_a_huge_number(mlp_run: Path) -> None:
    from fastapi.testclient import TestClient

    from mnistlab.serve import create_app

    client = TestClient(create_app(run_dir=mlp_run))
    body = '{"pixels": [' + ",".join(["[" + ",".join(["1" + "0" * 400] * 28) + "]"] * 28) + "]}"
    response = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "0..255" in response.json()["detail"]
