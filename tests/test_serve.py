"""The server: every endpoint and every bad input through FastAPI's test client, fuzzed uploads, a bounded
load of concurrent requests against uvicorn on a free local port, and the real command (`python -m mnistlab
serve`) in a subprocess under hostile clients: stalled uploads, decode bombs, disconnects, half headers."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnistlab.errors import MnistlabError
from mnistlab.imaging import prepare_image
from mnistlab.predict import Predictor, format_percent
from mnistlab.serve import ServeLimits, check_token, create_app, exposure_warning, static_dir
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


def test_openapi_describes_the_real_contract_of_predict(client: TestClient, predictor: Predictor) -> None:
    """Read /openapi.json as an API fuzzer would: media types, limits and every 4xx with its schema."""
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= set(schema["paths"])
    operation = schema["paths"]["/api/predict"]["post"]
    body = operation["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "image/png", "image/jpeg", "image/*", "application/octet-stream",
                         "application/json"}
    limits = ServeLimits()
    assert body["multipart/form-data"]["schema"]["required"] == ["image"]
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["maxLength"] == limits.max_bytes
    for media in ("image/png", "image/jpeg", "image/*", "application/octet-stream"):
        assert body[media]["schema"] == {"type": "string", "format": "binary", "maxLength": limits.max_bytes}
    pixels = body["application/json"]["schema"]["properties"]["pixels"]
    assert pixels["minItems"] == pixels["maxItems"] == 28
    assert pixels["items"]["items"] == {"type": "integer", "minimum": 0, "maximum": 255}
    assert operation["x-limits"] == {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels,
                                     "json_max_bytes": 1024 * 1024}
    assert f"{limits.max_pixels:,} pixels" in operation["requestBody"]["description"]
    answers = operation["responses"]
    # Every status the server answers to a bad request (the table below) is documented, and nothing else:
    # no token here, so no 401.
    documented = {int(code) for code in answers if code.startswith("4") or code.startswith("5")}
    assert documented == {400, 408, 413, 415, 422, 503}
    assert {status for _, status, _ in BAD_PREDICTS} <= documented
    for code in documented:
        assert answers[str(code)]["description"], code
        error = answers[str(code)]["content"]["application/json"]["schema"]
        assert error["required"] == ["detail"] and error["properties"]["detail"]["type"] == "string", code
    assert "HTTPValidationError" not in json.dumps(schema)  # FastAPI's list-of-errors 422 is not what we send
    # A server with a token documents the bearer scheme and the 401 on /api/*, not on /healthz.
    with TestClient(create_app(predictor=predictor, token="t" * 16)) as secured:
        schema = secured.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "401" in schema["paths"]["/api/predict"]["post"]["responses"]
    assert schema["paths"]["/api/model"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_docs_page_is_served_from_the_package(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/docs.js" in page.text and "cdn" not in page.text.lower()
    assert client.get("/static/docs.js").status_code == 200


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


# Every bad POST /api/predict and the answer it must get (the OpenAPI test checks each status is documented).
BAD_PREDICTS = [
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
]


@pytest.mark.parametrize("make_request, status, message", [
    *BAD_PREDICTS,
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


def test_serve_command_names_an_address_this_machine_lacks(trained_cnn_run: Path, capsys) -> None:
    from mnistlab.cli import main

    address = "10.255.255.1"  # private, and not one of this machine's (checked first)
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
            pytest.skip(f"{address} is an address of this machine")
        except OSError:
            pass
    assert main(["serve", str(trained_cnn_run), "--host", address, "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert f"{address} is not an address of this machine" in err and "--host 127.0.0.1" in err
    assert "another --port" not in err


# ------------------------------------------------------------------------------------------ token
TOKEN = "s3cret-token-0123456789"


def test_a_token_guards_the_api_but_not_health_page_or_docs(predictor: Predictor, three_png: bytes) -> None:
    with TestClient(create_app(predictor=predictor, token=TOKEN)) as secured:
        for method, path in (("GET", "/api/model"), ("POST", "/api/predict")):
            answer = secured.request(method, path, content=three_png, headers={"content-type": "image/png"})
            assert answer.status_code == 401 and "no Authorization: Bearer token" in answer.json()["detail"]
            assert answer.headers["www-authenticate"] == "Bearer"
            for wrong in (TOKEN[:-1], TOKEN + "x", TOKEN.upper(), ""):
                answer = secured.request(method, path, content=three_png,
                                         headers={"content-type": "image/png", "authorization": f"Bearer {wrong}"})
                assert answer.status_code == 401, wrong
        right = {"authorization": f"Bearer {TOKEN}"}
        assert secured.get("/api/model", headers=right).status_code == 200
        answer = secured.post("/api/predict", content=three_png, headers={**right, "content-type": "image/png"})
        assert answer.status_code == 200 and answer.json()["prediction"] == 3
        for path in ("/healthz", "/", "/docs", "/openapi.json", "/static/app.js"):
            assert secured.get(path).status_code == 200, path


@pytest.mark.parametrize("token", ["short", "x" * 257, "has space in it 123", "ünïcode-ünïcode-ünï"])
def test_unusable_tokens_are_refused_in_one_line(token: str) -> None:
    with pytest.raises(MnistlabError, match=r"--token \(or MNISTLAB_TOKEN\) must be 16\.\.256"):
        check_token(token)


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("127.0.0.2", False), ("::1", False),
                                          ("localhost", False), ("0.0.0.0", True), ("::", True),
                                          ("192.0.2.2", True)])
def test_listening_beyond_loopback_warns(host: str, warned: bool) -> None:
    warning = exposure_warning(host, token=False)
    assert (warning is not None) == warned
    if warned:
        assert "WARNING" in warning and "--token" in warning and host in warning
        assert "needs the token" in exposure_warning(host, token=True)


# ------------------------------------------------------------------------------------------ percentages
@pytest.mark.parametrize("p, shown", [(0.0, "<0.1%"), (1e-9, "<0.1%"), (0.000499, "<0.1%"), (0.0006, "0.1%"),
                                      (0.5, "50.0%"), (0.971, "97.1%"), (0.9994, "99.9%"), (0.99951, ">99.9%"),
                                      (1.0, ">99.9%")])
def test_percentages_never_mix_zero_and_below_nor_claim_certainty(p: float, shown: str) -> None:
    # The same rule as the page's percent() (static/app.js; the browser test checks the page).
    assert format_percent(p) == shown


# ------------------------------------------------------------------------- the real command, attacked
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class CliServer:
    """`python -m mnistlab serve RUN --port P` in a subprocess, its stdout and stderr in files."""

    def __init__(self, run_dir: Path, folder: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.stderr_path = folder / "serve.stderr"
        self.stdout_path = folder / "serve.stdout"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mnistlab", "serve", str(run_dir), "--port", str(self.port), *extra],
                stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, f"serve exited:\n{self.stderr()}"
            assert time.monotonic() < deadline, f"serve did not answer within 120 s:\n{self.stderr()}"
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def get(self, path: str, *, timeout: float = 5.0) -> tuple[int, float]:
        """(status, seconds) of a GET on a new connection."""
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            return response.status, time.perf_counter() - started
        finally:
            connection.close()

    def post(self, body: bytes, content_type: str, *, timeout: float = 60.0) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def cli_server(trained_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    server = CliServer(trained_cnn_run, tmp_path_factory.mktemp("cli-serve"))
    try:
        yield server
    finally:
        server.stop()
    # Whatever the tests did to it, the log never shows a 500 path.
    assert "Exception in ASGI application" not in server.stderr() and "Traceback" not in server.stderr()


def upload_header(length: int, content_type: str = "image/png") -> bytes:
    return (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_stalled_uploads_and_decode_bombs_keep_memory_bounded_and_health_answered(
        cli_server: CliServer, three_png: bytes, record_property) -> None:
    """60 max-size uploads that send all but 4 KiB and stall, plus 4 concurrent decode bombs.

    Bombs: PNGs whose header claims 60,000 x 60,000 (3.6 Gpx), refused from the header by today's imaging
    (float-TIFF bombs are imaging.py's own fix). Goal: RSS grows <= 300 MB; /healthz answers throughout.
    """
    limit = ServeLimits().max_bytes
    assert cli_server.post(three_png, "image/png")[1]["prediction"] == 3  # warm: model and decoders loaded
    assert cli_server.post(bomb_png(60_000, 60_000), "image/png")[0] == 413
    baseline = rss_bytes(cli_server.process.pid)
    peak = [baseline]
    health: list[tuple[int, float]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(cli_server.process.pid))
            try:
                health.append(cli_server.get("/healthz", timeout=5.0))
            except OSError as exc:
                health.append((0, float("inf")))
                print("healthz failed:", exc)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    stalled: list[socket.socket] = []
    left: dict[socket.socket, int] = {}
    chunk = b"\0" * (256 * 1024)
    bombs: list[tuple[int, dict]] = []
    try:
        for _ in range(60):
            connection = socket.create_connection(("127.0.0.1", cli_server.port))
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)  # keep the kernel's share small
            connection.sendall(upload_header(limit))
            connection.setblocking(False)
            stalled.append(connection)
            left[connection] = limit - 4096  # all but the last 4 KiB: then it stalls
        with ThreadPoolExecutor(max_workers=5) as pool:
            bomb_answers = [pool.submit(cli_server.post, bomb_png(60_000, 60_000), "image/png") for _ in range(4)]
            drawing = pool.submit(cli_server.post, three_png, "image/png")
            sent = 0
            quiet_since = time.monotonic()
            while left and time.monotonic() - quiet_since < 2.0:  # until the server stops taking bytes for 2 s
                _, writable, _ = select.select([], list(left), [], 0.2)
                for connection in writable:
                    try:
                        count = connection.send(chunk[: left[connection]])
                    except BlockingIOError:
                        continue
                    sent += count
                    left[connection] -= count
                    quiet_since = time.monotonic()
                    if left[connection] == 0:
                        del left[connection]
            time.sleep(1.0)  # stalled, and held
            bombs = [answer.result(timeout=60) for answer in bomb_answers]
            drawn = drawing.result(timeout=60)
    finally:
        stop.set()
        watcher.join()
        for connection in stalled:
            connection.close()
    growth = peak[0] - baseline
    statuses = [status for status, _ in health]
    slowest = max(seconds for _, seconds in health)
    record_property("rss_growth_mb", round(growth / MIB, 1))
    record_property("healthz_max_ms", round(1000 * slowest, 1))
    print(f"sent {sent / MIB:.0f} MiB; RSS {baseline / MIB:.0f} -> peak {peak[0] / MIB:.0f} MiB "
          f"(+{growth / MIB:.0f}); /healthz {len(health)} probes, max {1000 * slowest:.0f} ms")
    assert sent >= 6 * (limit - 4096)  # the budget's six max-size uploads really were sent in full
    assert growth <= 300 * 1000 * 1000, f"RSS grew {growth / MIB:.0f} MiB"
    assert len(health) >= 10 and set(statuses) == {200}, statuses
    assert all(status == 413 and "pixel limit" in answer["detail"] for status, answer in bombs), bombs
    assert drawn[0] == 200 and drawn[1]["prediction"] == 3  # a small upload still passes the stalled ones
    assert cli_server.get("/healthz")[0] == 200


def test_a_client_gone_mid_upload_is_one_info_line(cli_server: CliServer) -> None:
    with socket.create_connection(("127.0.0.1", cli_server.port)) as connection:
        port = connection.getsockname()[1]
        connection.sendall(upload_header(100_000) + b"\x89PNG" + b"\0" * 5000)
        time.sleep(0.3)  # the server is reading the body
    deadline = time.monotonic() + 20
    while f":{port} went away" not in cli_server.stderr():
        assert time.monotonic() < deadline, cli_server.stderr()
        time.sleep(0.1)
    lines = [line for line in cli_server.stderr().splitlines() if f":{port} " in line]
    assert len(lines) == 1 and lines[0].startswith("INFO:"), lines
    assert "of 100,000 bytes received" in lines[0]  # how many arrived before it went depends on timing
    assert "Exception in ASGI application" not in cli_server.stderr() and "Traceback" not in cli_server.stderr()


def test_half_headers_and_silent_connections_are_closed_and_connections_are_capped(cli_server: CliServer) -> None:
    """A half-sent header gets 408 and is closed after header_seconds; so is a connection that sends nothing;
    past max_connections a new connection gets 503 at once."""
    limits = ServeLimits()
    half = socket.create_connection(("127.0.0.1", cli_server.port))
    half.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: ima")
    # A kept-alive connection that was answered once, then sends half of its next header.
    again = socket.create_connection(("127.0.0.1", cli_server.port))
    again.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    again.settimeout(5)
    first = b""
    while not first.endswith(b'{"status":"ok"}'):  # the whole answer, so the next bytes are the 408's
        chunk = again.recv(4096)
        assert chunk, first
        first += chunk
    assert first.startswith(b"HTTP/1.1 200 ")
    again.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    silent = [socket.create_connection(("127.0.0.1", cli_server.port)) for _ in range(limits.max_connections + 19)]
    try:
        # The last ones are over the cap: refused with 503 right away (well before the header timeout).
        refused = 0
        for connection in silent[-10:]:
            connection.settimeout(limits.header_seconds / 2)
            answer = connection.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"connections open" in answer, answer
            refused += 1
        # The others are closed by the server once header_seconds pass (the socket timeout is a safety net:
        # before the fix they stayed open for ever).
        half.settimeout(limits.header_seconds * 3)
        answer = b""
        while chunk := half.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and b"request header took over" in answer, answer
        silent[0].settimeout(limits.header_seconds * 3)
        assert silent[0].recv(4096) == b""  # closed, with nothing to say: it never started a request
        again.settimeout(limits.header_seconds * 3)
        answer = b""
        while chunk := again.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        half.close()
        again.close()
        for connection in silent:
            connection.close()
    assert refused == 10
    time.sleep(0.5)
    assert cli_server.get("/healthz")[0] == 200
    assert "no complete request header within 10 s" in cli_server.stderr()


def test_pipelined_requests_are_all_answered_in_order(cli_server: CliServer) -> None:
    """Three requests in one send (HTTP/1.1 pipelining): three answers, in order, on the bounded protocol."""
    with socket.create_connection(("127.0.0.1", cli_server.port)) as connection:
        connection.settimeout(10)
        request = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        connection.sendall(request % b"/healthz" + request % b"/api/model" + request % b"/nothing-here")
        answer = b""
        while answer.count(b"HTTP/1.1 ") < 3 or not answer.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            assert chunk, answer
            answer += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"200", b"404"], answer[:300]
    assert answer.index(b'"class_names"') < answer.index(b"HTTP/1.1 404")


def _read_until_closed(connection: socket.socket, *, seconds: float = 10) -> bytes:
    connection.settimeout(seconds)
    answer = b""
    try:
        while chunk := connection.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass  # the server closed with bytes of ours unread: what it wrote before may be lost, or not
    return answer


def test_huge_headers_upgrades_with_a_body_and_deep_pipelines_are_refused_in_one_line(
        cli_server: CliServer) -> None:
    """llhttp buffers a header of any size and takes a body after `Upgrade:` for the new protocol's bytes;
    the bounded protocol answers 431, 400 and 503 instead, each with a one-line JSON detail, and closes."""
    from mnistlab.serve import MAX_HEADER_BYTES, MAX_PIPELINED

    with socket.create_connection(("127.0.0.1", cli_server.port)) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        try:
            while sent <= 4 * MAX_HEADER_BYTES:
                connection.sendall(b"a" * 8192)
                sent += 8192
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server mid-send: the refusal may have been lost with the reset
        answer = _read_until_closed(connection)
    assert answer == b"" or (answer.startswith(b"HTTP/1.1 431 ") and b"over 64 KiB" in answer), answer[:200]
    assert "the request header is over 64 KiB" in cli_server.stderr()

    body = b"x" * 100
    with socket.create_connection(("127.0.0.1", cli_server.port)) as connection:
        connection.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings"
                           b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
                           b"Content-Type: image/png\r\nContent-Length: 100\r\n\r\n" + body)
        answer = _read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"HTTP/1.1 only" in answer, answer[:300]
    with socket.create_connection(("127.0.0.1", cli_server.port)) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
                           b"Upgrade: h2c\r\n\r\n")
        answer = _read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"status":"ok"}'), answer  # then closed

    with socket.create_connection(("127.0.0.1", cli_server.port)) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * (MAX_PIPELINED + 10))
        answer = _read_until_closed(connection)
    assert b"HTTP/1.1 503 " in answer and b"pipelined requests wait" in answer, answer[:300]
    assert answer.count(b"HTTP/1.1 200 ") <= MAX_PIPELINED + 1
    assert cli_server.get("/healthz")[0] == 200


def test_a_token_from_the_environment_guards_the_real_server(trained_cnn_run: Path, tmp_path: Path,
                                                             three_png: bytes) -> None:
    """MNISTLAB_TOKEN with --host 0.0.0.0: a note that other machines can reach it, the page URL carries the
    token in its fragment, and /api/* needs the token while /healthz does not."""
    server = CliServer(trained_cnn_run, tmp_path, "--host", "0.0.0.0", env={"MNISTLAB_TOKEN": TOKEN})
    try:
        assert cli_server_status(server, "/api/model") == 401
        assert cli_server_status(server, "/api/model", token=TOKEN) == 200
        assert server.get("/healthz")[0] == 200
    finally:
        server.stop()
    assert f"#token={TOKEN}" in server.stdout_path.read_text()
    assert "listening on 0.0.0.0" in server.stderr() and "the API needs the token" in server.stderr()


def cli_server_status(server: CliServer, path: str, *, token: str | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
