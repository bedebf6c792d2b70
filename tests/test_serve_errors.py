"""The server's error paths and query options that had no test, and its answers checked against an oracle
that shares no code with it (weights read by hand from the run's safetensors file, a functional forward)."""

from __future__ import annotations

import json
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mnistlab import runs
from mnistlab.predict import Predictor
from mnistlab.serve import create_app
from tests.clitools import assert_one_line_error, run_cli
from tests.imagekit import digit_strokes, encode, render_strokes
from tests.reference import cnn_logits, read_safetensors

with warnings.catch_warnings():  # newer Starlette nudges towards httpx2; httpx is what the test extras pin
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(trained_cnn_run: Path) -> Iterator[TestClient]:
    with TestClient(create_app(predictor=Predictor(trained_cnn_run))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def three() -> Image.Image:
    """A dark-on-light 3, as drawn on paper."""
    return render_strokes(digit_strokes(3), canvas=(280, 280), box=(40, 40, 200), width=20)


def raw(client: TestClient, body: bytes, content_type: str, query: str = "", **headers: str):
    return client.post(f"/api/predict{query}", content=body, headers={"content-type": content_type, **headers})


# ------------------------------------------------------------------------------ an independent oracle
def test_json_pixels_are_scored_like_a_plain_forward_of_the_saved_weights(client: TestClient,
                                                                          trained_cnn_run: Path, mnist) -> None:
    images = mnist.test.images[:8]
    weights = read_safetensors(trained_cnn_run / runs.WEIGHTS_FILE)
    expected = torch.softmax(cnn_logits(weights, images), dim=1).numpy()
    precision = json.loads((trained_cnn_run / runs.MODEL_FILE).read_text())["precision"]
    # A bf16-trained run is served in bf16 autocast (as it was scored when trained); the oracle is fp32.
    atol = 1e-5 if precision == "fp32" else 0.03
    for image, probabilities in zip(images, expected, strict=True):
        response = client.post("/api/predict", json={"pixels": image.tolist()})
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["prediction"] == int(probabilities.argmax())
        np.testing.assert_allclose(result["probabilities"], probabilities, atol=atol)


# ------------------------------------------------------------------------------ octet-stream bodies
def test_an_octet_stream_body_is_read_as_an_image(client: TestClient, three: Image.Image) -> None:
    png = encode(three)
    as_octets = raw(client, png, "application/octet-stream")
    assert as_octets.status_code == 200, as_octets.text
    assert as_octets.json()["prediction"] == 3
    assert as_octets.json()["probabilities"] == raw(client, png, "image/png").json()["probabilities"]
    refused = raw(client, b"plain text, not a picture", "application/octet-stream")
    assert refused.status_code == 422 and "not an image" in refused.json()["detail"], refused.text


# ------------------------------------------------------------------------------ Content-Length
@pytest.mark.parametrize("declared", ["12abc", "-5", "1e3", " "])
def test_a_non_numeric_content_length_is_a_400(client: TestClient, three: Image.Image, declared: str) -> None:
    response = raw(client, encode(three), "image/png", **{"content-length": declared})
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == f"Content-Length {declared!r} is not a number"


# ------------------------------------------------------------------------------ ?invert=
def test_invert_forces_or_skips_the_dark_on_light_flip(client: TestClient, three: Image.Image) -> None:
    """Oracle: inverting the negative of an image by hand must give the model exactly the same 28x28 input."""
    paper, negative = encode(three), encode(ImageOps.invert(three.convert("L")))
    auto = raw(client, paper, "image/png").json()
    forced = raw(client, paper, "image/png", "?invert=yes").json()
    assert auto["inverted"] is True and forced["inverted"] is True and forced["input"] == auto["input"]
    kept = raw(client, negative, "image/png", "?invert=no").json()
    assert kept["inverted"] is False and kept["input"] == auto["input"] and kept["prediction"] == 3
    detected = raw(client, negative, "image/png", "?invert=auto").json()
    assert detected["inverted"] is False and detected["input"] == auto["input"]
    # Forcing the flip on a light-on-dark image turns the digit into the background: a different input.
    wrong = raw(client, negative, "image/png", "?invert=yes")
    assert wrong.status_code != 200 or wrong.json()["input"] != auto["input"]
    refused = raw(client, paper, "image/png", "?invert=maybe")
    assert refused.status_code == 422 and refused.json()["detail"].startswith("invert: "), refused.text


# ------------------------------------------------------------------------------ serve --host
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(("host", "fragment"), [
    ("bad host!", "--host bad host!: not a usable address"),
    ("no..such.host", "--host no..such.host: not a usable address (not a valid host name)"),
    # A well-formed address that no interface here has (TEST-NET-1): the bind itself fails.
    ("192.0.2.1", "cannot listen on 192.0.2.1:"),
])
def test_serve_with_a_bad_host_is_one_line(capsys, trained_cnn_run: Path, host: str, fragment: str) -> None:
    code, _, err = run_cli(capsys, "serve", str(trained_cnn_run), "--host", host, "--port", str(free_port()))
    assert_one_line_error(code, err, fragment)
