"""The draw-a-digit server: a FastAPI app over one trained run, and the page in ``static/``.

Endpoints (API docs at ``/docs``, a page in ``static/`` that renders ``/openapi.json`` with no network)::

    GET  /               the page: draw (mouse/touch), live probability bars, the 28x28 the model sees, upload
    GET  /healthz        {"status": "ok"}
    GET  /api/model      what is loaded: model, dataset, classes, recorded test accuracy, upload limits
    POST /api/predict    an image (multipart field "image", or a raw image/* body) or JSON {"pixels": 28x28}

Memory and time are bounded on every request, in this order:

1. Connections: at most ``max_connections`` open sockets (more get a 503 and are closed), and a connection
   that has not sent a whole request header within ``header_seconds`` is closed, a header over
   ``MAX_HEADER_BYTES`` gets 431, and at most ``MAX_PIPELINED`` pipelined requests wait on a connection
   (uvicorn's httptools protocol has none of these bounds; :func:`bounded_protocol` adds them).
2. Before a body is read, the upload reserves its size (Content-Length, or the cap when chunked) from a budget
   of ``buffered_bytes`` shared by all requests; an upload that does not fit waits (its bytes stay in the
   client's socket: uvicorn stops reading a connection after 64 KiB that nobody asked for) and is refused
   with 503 after ``queue_seconds``. So N stalled max-size uploads hold at most ``buffered_bytes``, not N
   times the limit.
3. The body is then read in chunks, capped (413) and timed (408 after ``body_seconds``); a multipart body is
   streamed into the form parser, which spools files over 1 MB to disk.
4. Decoding, preprocessing and inference run in worker threads behind a limiter of ``concurrency``, so a
   large photo never blocks the event loop (``/healthz`` is answered on the loop itself). A 28x28 JSON array
   and a small plain PNG (``INLINE_DECODED_BYTES`` by its header; a drawing from the page) are so cheap that
   they are predicted inline: ``/healthz`` waits behind the drawings already queued on that process (a few ms
   each).

Every user-caused problem is a 4xx (503 when busy) with ``{"detail": "one line"}``; a 500 would be a bug. A
client that goes away mid-upload is one info line in the log. With a token (``--token``/``MNISTLAB_TOKEN``)
every ``/api/*`` request needs ``Authorization: Bearer TOKEN``; the page takes the token from its URL's
fragment (``/#token=...``, never sent to the server or its logs) or asks for it.

FastAPI is imported at module level (it reads the endpoints' annotations from this module's globals); the CLI
imports this module only inside ``mnistlab serve``.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the endpoints' annotations, and the `top`
# parameter's bound (the model's number of classes) is a local of create_app.
import asyncio
import contextlib
import dataclasses
import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from mnistlab.errors import MnistlabError
from mnistlab.imaging import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    BadPixels,
    BlankImage,
    ImageTooLarge,
    Invert,
    UnreadableImage,
    plain_png_bytes,
    prepare_image,
)
from mnistlab.predict import AnyPredictor, Predictor, open_predictor

MULTIPART_OVERHEAD = 64 * 1024  # boundary lines and part headers on top of the image itself
# Plain PNGs up to this size, decoding to at most this many bytes (a 512x512 8-bit RGBA canvas), are prepared on
# the event loop: 2 ms for the page's 280x280 canvas, about 7 ms at the bound.
INLINE_BYTES, INLINE_DECODED_BYTES = 256 * 1024, 512 * 512 * 4
MAX_HEADER_BYTES = 64 * 1024  # a request line and headers; llhttp itself would take any size
MAX_PIPELINED = 16             # requests queued behind the one being answered, on one connection
JSON_MAX_BYTES = 1024 * 1024    # 28x28 numbers fit in a few KB; 1 MB leaves room for whitespace, stops JSON bombs
TOKEN_ENV = "MNISTLAB_TOKEN"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{16,256}")  # URL-fragment and header safe, long enough to guess
STATUS_FOR_ERROR: tuple[tuple[type[MnistlabError], int], ...] = (
    (ImageTooLarge, 413),
    (UnreadableImage, 422),
    (BlankImage, 422),
    (BadPixels, 422),
)
# uvicorn's own logger: its handler prints at the --quiet-dependent level, next to the access log.
LOG = logging.getLogger("uvicorn.error")
BodyKind = Literal["multipart", "json", "image"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string", "description": "one line: what was wrong and what to do"}},
}
PIXELS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["pixels"],
    "properties": {"pixels": {
        "type": "array", "minItems": 28, "maxItems": 28,
        "description": "28 rows of 28 whole numbers 0..255, white ink on black (MNIST's format), used as-is",
        "items": {"type": "array", "minItems": 28, "maxItems": 28,
                  "items": {"type": "integer", "minimum": 0, "maximum": 255}},
    }},
}


@dataclass(frozen=True)
class ServeLimits:
    """Every bound the server keeps: bytes and pixels of one image, images decoded at once, bytes buffered
    by all uploads together, open connections, and the seconds a client gets for headers, queue and body."""

    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS
    concurrency: int = 4
    # Six max-size uploads at once: enough to keep 4 decoders busy, and what 60 stalled uploads can hold.
    buffered_bytes: int = 64 * 1024 * 1024
    max_connections: int = 256
    header_seconds: float = 10.0
    queue_seconds: float = 30.0
    body_seconds: float = 30.0  # a client that trickles its upload slower than this gets 408

    def __post_init__(self) -> None:
        counts = (self.max_bytes, self.max_pixels, self.concurrency, self.max_connections)
        seconds = (self.header_seconds, self.queue_seconds, self.body_seconds)
        if min(counts) < 1 or min(seconds) <= 0:
            raise MnistlabError(f"server limits must be >= 1 (seconds > 0), got {self}")
        if self.buffered_bytes < self.max_bytes + MULTIPART_OVERHEAD:
            # One max-size upload must fit in the budget, or it would wait for ever.
            raise MnistlabError(f"buffered_bytes must be >= max_bytes + {MULTIPART_OVERHEAD:,}, got {self}")


class ByteBudget:
    """Bytes that uploads may hold in memory together; a reservation waits until it fits.

    Not FIFO: a small upload (a drawing, a few KB) passes while a large one waits for room, which is what a
    page that predicts while you draw needs; the large one's wait is bounded by the queue timeout.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._changed: anyio.Condition | None = None  # created inside the event loop

    @asynccontextmanager
    async def hold(self, amount: int, *, wait_seconds: float) -> AsyncIterator[None]:
        """Reserve ``amount`` bytes for the block; 503 when they are not free within ``wait_seconds``."""
        if self._changed is None:
            self._changed = anyio.Condition()
        changed = self._changed
        try:
            with anyio.fail_after(wait_seconds):
                async with changed:
                    while self.free < amount:
                        await changed.wait()
                    self.free -= amount
        except TimeoutError:
            raise HTTPException(503, "the server is busy receiving other uploads; try again shortly",
                                headers={"Retry-After": "10", "Connection": "close"}) from None
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with changed:
                    self.free += amount
                    changed.notify_all()


def static_dir() -> Path:
    """The packaged ``static/`` folder holding the page (index.html, app.js, style.css) and the docs page."""
    return Path(str(resources.files("mnistlab") / "static"))


def status_for(exc: MnistlabError) -> int:
    """The HTTP status for a user-caused error: 413 too large, 422 unusable content, else 400."""
    for kind, status in STATUS_FOR_ERROR:
        if isinstance(exc, kind):
            return status
    return 400


def check_token(token: str | None) -> str | None:
    """``token`` itself when it is usable as a bearer token (16..256 URL-safe characters), else one-line error."""
    if token is None:
        return None
    if not TOKEN_PATTERN.fullmatch(token):
        raise MnistlabError(f"--token (or {TOKEN_ENV}) must be 16..256 characters of A-Z a-z 0-9 . _ ~ -, got "
                            f"{len(token)} characters; make one with: python -c "
                            "\"import secrets; print(secrets.token_urlsafe())\"")
    return token


def predict_openapi(limits: ServeLimits, *, num_classes: int, token: bool) -> dict[str, Any]:
    """The request body and every answer of ``POST /api/predict``, with the limits in force, for OpenAPI."""
    binary = {"type": "string", "format": "binary", "maxLength": limits.max_bytes}
    image_text = (f"at most {limits.max_bytes:,} bytes and {limits.max_pixels:,} pixels "
                  "(width x height, read from the header before decoding)")
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {**binary, "description": f"the image file; {image_text}"}},
            "description": "the file field `image` (or the form's only file field)",
        }},
        "image/png": {"schema": binary},
        "image/jpeg": {"schema": binary},
        "image/*": {"schema": binary, "description": "BMP, GIF, WebP, TIFF, PNM: whatever Pillow reads"},
        "application/octet-stream": {"schema": binary, "description": "an image file, its type sniffed"},
        "application/json": {"schema": {**PIXELS_SCHEMA, "description": f"at most {JSON_MAX_BYTES:,} bytes"}},
    }
    error = {"application/json": {"schema": ERROR_SCHEMA}}
    answers: dict[int, str] = {
        400: "malformed body: bad JSON, a multipart body without a boundary or without an image file, or a "
             "non-numeric Content-Length",
        408: f"the upload took over {limits.body_seconds:g} s to arrive",
        413: f"over a limit: the body over {limits.max_bytes:,} bytes (JSON: {JSON_MAX_BYTES:,}), or the "
             f"image over {limits.max_pixels:,} pixels",
        415: "a Content-Type other than multipart/form-data, image/*, application/octet-stream, "
             "application/json",
        422: f"not a readable image, a blank image, a bad pixels array (shape, range), or a bad query "
             f"parameter (top outside 1..{num_classes}, invert not auto/yes/no)",
        503: f"busy: other uploads hold the {limits.buffered_bytes:,}-byte upload budget for over "
             f"{limits.queue_seconds:g} s, or over {limits.max_connections} connections are open",
    }
    if token:
        answers[401] = "no or wrong `Authorization: Bearer TOKEN` (the server was started with --token)"
    responses: dict[str, Any] = {
        "200": {"description": ("prediction, every class's probability, top-k, the 28x28 the model saw; "
                                "not_sure (true when a calibrated run's top probability is below its threshold), "
                                "threshold and temperature (null: not calibrated), and saliency (28x28 in [0, 1]: "
                                "which pixels drove the decision; null on the onnx backend)")},
        **{str(code): {"description": text, "content": error} for code, text in sorted(answers.items())},
    }
    return {
        "requestBody": {
            "required": True,
            "description": f"An image ({image_text}) as a multipart field `image` or as the raw body with "
                           "an image/* or application/octet-stream Content-Type; or JSON with a 28x28 "
                           "`pixels` array",
            "content": content,
        },
        "responses": responses,
        "x-limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels,
                     "json_max_bytes": JSON_MAX_BYTES},
    }


def create_app(
    *,
    run_dir: str | os.PathLike[str] | None = None,
    predictor: AnyPredictor | None = None,
    device: str = "cpu",
    limits: ServeLimits | None = None,
    token: str | None = None,
) -> FastAPI:
    """A FastAPI app serving ``run_dir``'s model (loaded once, here) or an already loaded ``predictor``.

    With ``token``, every ``/api/*`` request needs ``Authorization: Bearer <token>`` (401 otherwise).
    """
    if predictor is None:
        if run_dir is None:
            raise MnistlabError("create_app needs run_dir (a folder written by `mnistlab train`) "
                                "or a predictor")
        predictor = Predictor(run_dir, device=device)
    limits = limits or ServeLimits()
    token = check_token(token)
    model_info = predictor.info()
    budget = ByteBudget(limits.buffered_bytes)
    # Created lazily inside the event loop (anyio requires a running loop on some backends).
    limiter_box: list[anyio.CapacityLimiter] = []

    app = FastAPI(
        title="mnistlab",
        version=_version(),
        summary=f"Draw a digit and see {model_info['model']} ({model_info['dataset']}) read it.",
        docs_url=None,  # FastAPI's page loads swagger-ui from a CDN: blank offline; ours is in static/
        redoc_url=None,
    )

    _install_error_handlers(app)
    api_guard = _token_guard(token)

    _add_service_routes(app, model_info=model_info, limits=limits, api_guard=api_guard)

    work = partial(_predict_one, predictor, limits)

    predict_spec = predict_openapi(limits, num_classes=predictor.num_classes, token=token is not None)

    @app.post(
        "/api/predict", tags=["predict"], summary="Predict the digit in an image or a 28x28 array",
        # The answers go in `responses` (not openapi_extra): FastAPI then adds no 422 of its own format.
        responses=predict_spec.pop("responses"), openapi_extra=predict_spec, dependencies=api_guard,
    )
    async def api_predict(
        request: Request,
        top: Annotated[int, Query(ge=1, le=predictor.num_classes, description="classes to list")] = 3,
        invert: Annotated[Invert, Query(description="auto: detect dark-on-light; yes/no: force it")] = "auto",
    ) -> Response:
        """Predict the digit in an uploaded image or a 28x28 pixel array."""
        return await _answer_predict(request, top=top, invert=invert, limits=limits, budget=budget,
                                     limiter_box=limiter_box, work=work)

    _add_pages(app)
    return app


async def _answer_predict(request: Request, *, top: int, invert: Invert, limits: ServeLimits, budget: ByteBudget,
                          limiter_box: list[anyio.CapacityLimiter], work: Any) -> Response:
    """``POST /api/predict``: reserve the upload's bytes, read it within its limits, predict, answer."""
    kind = _body_kind(request.headers.get("content-type", ""))
    cap = {"multipart": limits.max_bytes + MULTIPART_OVERHEAD, "json": JSON_MAX_BYTES,
           "image": limits.max_bytes}[kind]
    declared = _declared_length(request, cap)
    received = [0]
    try:
        # The reservation comes first: until it is granted, nothing of the body is read.
        async with budget.hold(cap if declared is None else declared, wait_seconds=limits.queue_seconds):
            payload, name = await _read_payload(request, kind, cap, limits, received)
            if isinstance(payload, list) or _small_image(payload):
                # A 28x28 array, or a drawing the size of the page's canvas, is prepared and predicted in a
                # millisecond or two: the thread hop (and its GIL hand-offs) would cost a third of that again.
                result = work(payload, invert=invert, top=top, name=name)
            else:
                # Decoding an upload can take tens of milliseconds (a 12 Mpx photo): worker threads keep
                # the event loop answering, and the limiter bounds how many images are decoded at once.
                if not limiter_box:
                    limiter_box.append(anyio.CapacityLimiter(limits.concurrency))
                result = await anyio.to_thread.run_sync(
                    partial(work, payload, invert=invert, top=top, name=name), limiter=limiter_box[0])
    except ClientDisconnect:
        client = request.client
        who = f"{client.host}:{client.port}" if client else "a client"
        expected = f" of {declared:,}" if declared is not None else ""
        LOG.info("%s went away during its upload to /api/predict (%s%s bytes received); nothing answered",
                 who, f"{received[0]:,}", expected)
        return Response(status_code=400)  # nobody is there to read it; uvicorn drops it
    return JSONResponse(result)


def _add_service_routes(app: FastAPI, *, model_info: dict[str, Any], limits: ServeLimits,
                        api_guard: list[Any]) -> None:
    """``/healthz`` (always open) and ``/api/model`` (behind the token, if any)."""

    @app.get("/healthz", tags=["service"], summary="Liveness check")
    async def healthz() -> dict[str, str]:
        """Liveness: answers while the server runs (on the event loop: never queued behind photos or slow uploads,
        only behind the drawings already queued, a few ms each)."""
        return {"status": "ok"}

    @app.get("/api/model", tags=["service"], summary="What is loaded, and its recorded test accuracy",
             dependencies=api_guard)
    def api_model() -> dict[str, Any]:
        """What is loaded, its recorded test accuracy, and the upload limits."""
        return {**model_info, "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels}}


def _install_error_handlers(app: FastAPI) -> None:
    """Every refusal is ``{"detail": "one line"}`` with its 4xx (FastAPI's own 422 format included)."""

    @app.exception_handler(MnistlabError)
    async def _user_error(_request: Request, exc: MnistlabError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def _token_guard(token: str | None) -> list[Any]:
    """The dependencies that make ``/api/*`` need ``Authorization: Bearer <token>`` (none without a token)."""
    if token is None:
        return []
    bearer = HTTPBearer(auto_error=False, description="the token `mnistlab serve` was started with")

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        given = credentials.credentials if credentials is not None else ""
        # compare_digest: the time taken does not tell how much of a guess was right.
        if not hmac.compare_digest(given.encode(), token.encode()):
            shown = "a wrong token" if credentials is not None else "no Authorization: Bearer token"
            raise HTTPException(401, f"{shown}: this server needs the token it was started with "
                                     f"(--token or {TOKEN_ENV})",
                                headers={"WWW-Authenticate": "Bearer", "Connection": "close"})

    return [Depends(require_token)]


def _small_image(payload: bytes | bytearray) -> bool:
    """True for an upload cheap enough to prepare on the event loop: a small plain PNG such as the page's canvas.

    Few bytes, a small decoded size by the header, and nothing Pillow would inflate or parse besides the pixels
    (no text, colour profile or EXIF); every other upload (JPEG, photos, other formats) goes to a worker thread. The
    one slow case left is a small PNG photo of a sheet of paper, whose page search imports scipy the first time
    (about 0.5 s, once per process) and then costs some 10 ms.
    """
    if len(payload) > INLINE_BYTES:
        return False
    decoded = plain_png_bytes(payload)
    return decoded is not None and decoded <= INLINE_DECODED_BYTES


def _predict_one(predictor: AnyPredictor, limits: ServeLimits, payload: bytes | bytearray | list[Any], *,
                 invert: Invert, top: int, name: str) -> dict[str, Any]:
    """Prepare one upload (or 28x28 array) and predict it: the answer of ``POST /api/predict``."""
    started = time.perf_counter()
    # cast: prepare_image takes bytearray and lists (its isinstance checks) though its annotation names
    # neither; copying the upload to bytes would double its memory.
    prepared = prepare_image(cast(Any, payload), invert=invert, name=name, max_bytes=limits.max_bytes,
                             max_pixels=limits.max_pixels)
    # The saliency map costs one backward pass (about as much as the forward one): the page shows it beside
    # the 28x28 input. The onnx backend has no gradients, so its answers carry "saliency": null.
    prediction = predictor.predict(prepared.pixels[None], saliency=predictor.has_saliency)[0]
    return {
        "saliency": None,
        **prediction.to_dict(top=top),
        "inverted": prepared.inverted,
        "source_size": list(prepared.source_size),
        "input": prepared.pixels.tolist(),
        "milliseconds": round(1000 * (time.perf_counter() - started), 3),
    }


async def _read_payload(request: Request, kind: BodyKind, cap: int, limits: ServeLimits,
                        received: list[int]) -> tuple[bytearray | bytes | list[Any], str]:
    """The body as image bytes (multipart field or raw) or a 28x28 list, within the cap and the time limit."""
    try:
        with anyio.fail_after(limits.body_seconds):
            if kind == "multipart":
                return await _image_from_form(request, cap, limits.max_bytes, received)
            if kind == "json":
                return _pixels_from_json(await _read_capped(request, cap, received)), "pixels"
            return await _read_capped(request, cap, received), "image"
    except TimeoutError:
        raise HTTPException(408, f"the upload took over {limits.body_seconds:g} s; try again",
                            headers={"Connection": "close"}) from None


def _add_pages(app: FastAPI) -> None:
    """The draw-a-digit page, its assets, and the offline API docs page."""
    static = static_dir()
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        """The draw-a-digit page."""
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        """The API docs: a page that renders /openapi.json with nothing from the network."""
        return FileResponse(static / "docs.html", media_type="text/html")


def _body_kind(content_type: str) -> BodyKind:
    """What the body is, from its Content-Type; 415 for anything the endpoint does not take."""
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return "multipart"
    if media == "application/json":
        return "json"
    if media.startswith("image/") or media == "application/octet-stream":
        return "image"
    raise HTTPException(415, f"Content-Type {media or 'none'} is not accepted; send multipart/form-data with "
                             'an `image` file, a raw image/* body, or application/json {"pixels": 28x28}',
                        headers={"Connection": "close"})


def _declared_length(request: Request, cap: int) -> int | None:
    """The body's Content-Length (None when chunked); 400 when it is not a number, 413 when over ``cap``."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    # Connection: close on refusals: the unread body would otherwise keep arriving on a kept-alive connection.
    if not declared.strip().isdigit():
        raise HTTPException(400, f"Content-Length {declared!r} is not a number", headers={"Connection": "close"})
    if int(declared) > cap:
        raise HTTPException(413, f"the upload is {int(declared):,} bytes, over the {cap:,}-byte limit; "
                                 "send a smaller image", headers={"Connection": "close"})
    return int(declared)


def _capped_request(request: Request, cap: int, received: list[int]) -> Request:
    """``request`` whose body stream counts into ``received[0]`` and fails with 413 past ``cap`` bytes."""
    receive = request.receive

    async def capped() -> MutableMapping[str, Any]:
        message = await receive()
        if message["type"] == "http.request":
            received[0] += len(message.get("body", b""))
            if received[0] > cap:
                raise HTTPException(413, f"the upload is over the {cap:,}-byte limit; send a smaller image",
                                    headers={"Connection": "close"})
        return message

    return Request(request.scope, receive=capped)


async def _read_capped(request: Request, cap: int, received: list[int]) -> bytearray:
    """The request body, refusing (413) anything over ``cap`` bytes as soon as it passes it."""
    body = bytearray()  # extended in place: no list of chunks and no join, one buffer the size of the body
    async for chunk in _capped_request(request, cap, received).stream():
        body += chunk
    return body


async def _image_from_form(request: Request, cap: int, max_bytes: int, received: list[int]) -> tuple[bytes, str]:
    """The image bytes of a multipart body's ``image`` field (or its only file field), streamed and capped."""
    form = await _capped_request(request, cap, received).form(max_files=2, max_fields=8, max_part_size=64 * 1024)
    try:
        files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
        only = files[0][1] if len(files) == 1 else None
        chosen = next((value for key, value in files if key == "image"), only)
        if chosen is None:
            fields = ", ".join(key for key, _ in form.multi_items()) or "none"
            raise HTTPException(400, f"no image file in the form (fields: {fields}); "
                                     "send it as the `image` field")
        data = await chosen.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"the image is over the {max_bytes:,}-byte limit; send a smaller image")
        return data, chosen.filename or "image"
    finally:
        await form.close()


def _pixels_from_json(body: bytes | bytearray) -> list[Any]:
    """The ``pixels`` array of a JSON body (shape and range are checked by prepare_image)."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise HTTPException(400, f"the body is not valid JSON ({reason}); "
                                 'send {"pixels": 28x28}') from None
    if not isinstance(document, dict) or "pixels" not in document:
        raise BadPixels('the JSON body must be an object with a "pixels" key: 28 rows of 28 numbers 0..255')
    pixels = document["pixels"]
    if not isinstance(pixels, list):
        raise BadPixels("pixels must be a 28x28 array: 28 rows of 28 numbers 0..255")
    return pixels


def _version() -> str:
    from mnistlab import __version__

    return __version__


def _raw_json_response(status: int, detail: str) -> bytes:
    """A complete HTTP/1.1 answer with ``{"detail": ...}`` that closes the connection, written by the protocol
    itself (no request reached the app)."""
    body = json.dumps({"detail": detail}).encode()
    phrase = HTTPStatus(status).phrase
    head = (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + body


class CoalescingTransport:
    """A transport whose writes within one turn of the event loop leave in one ``send``.

    uvicorn writes a response's status line and headers, then its body, each straight to the socket: two
    system calls and two packets for every answer, which on loopback cost about as much as the rest of the
    HTTP layer. Here writes are gathered and sent when the response is complete (:meth:`flush`, called by
    the protocol), else once the current callback returns (``call_soon``), and before the transport closes, so
    nothing is reordered or lost. Everything else is the real transport's.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending = bytearray()
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending += data

    def flush(self) -> None:
        """Send what is pending now (the protocol calls it when a response is complete)."""
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# Over 60 lines because it defines the protocol class inside (it closes over the limits): one unit to read.
def bounded_protocol(limits: ServeLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a cap on open connections and a time limit on receiving a request
    header.

    uvicorn closes idle kept-alive connections (``timeout_keep_alive``) but never one that is sending a header
    slowly (or sends nothing at all), so a few thousand half-headers would hold sockets for ever. httptools
    (llhttp, in C) rather than h11 (pure Python): on the page's canvas uploads it cut the server's CPU per
    request by about a tenth in an exploration run (RESULTS.md, issue 12). llhttp has no bound on a header's
    size or on pipelined requests, and takes a body after ``Upgrade:`` for another protocol's bytes: those
    are refused here in one line (431, 503, 400) instead.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """HttpToolsProtocol that closes connections whose request header does not arrive in time."""

        header_timer: asyncio.TimerHandle | None = None
        # Requests whose first byte, whole header, whole body and answer have been seen on this connection.
        # Counting (not one flag) keeps pipelined requests right: a header is awaited only when every request
        # whose header arrived has been received whole and answered.
        begun = headed = completed = answered = 0
        header_bytes = 0  # received while the current request's header is incomplete

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport)))
            if len(self.connections) > limits.max_connections:
                LOG.warning("refused a connection: %d are open (the limit)", limits.max_connections)
                transport.write(_raw_json_response(503, f"the server has {limits.max_connections} connections "
                                                        "open, its limit; try again"))
                transport.close()
                return
            self._watch_header()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.begun > self.headed and not self.transport.is_closing():
                # A header still incomplete after this read: llhttp would buffer any size (and httptools
                # grows it by concatenation), so past the cap the request is refused.
                self.header_bytes += len(data)
                if self.header_bytes > MAX_HEADER_BYTES:
                    self._refuse(431, f"the request header is over {MAX_HEADER_BYTES // 1024} KiB")
            self._watch_header()  # a malformed request was answered 400 and closed: stop the timer

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.begun += 1

        def on_headers_complete(self) -> None:
            self.headed += 1
            self.header_bytes = 0
            self._watch_header()
            if self.transport.is_closing():
                return  # refused already: the rest of this read is not served
            if len(self.pipeline) >= MAX_PIPELINED:
                self._refuse(503, f"over {MAX_PIPELINED} pipelined requests wait on this connection")
                return
            upgrade = self.parser.should_upgrade() and not self._should_upgrade()
            if upgrade and any(name in (b"content-length", b"transfer-encoding") and value.strip() != b"0"
                               for name, value in self.headers):
                # llhttp takes everything after an Upgrade header (h2c, say) as the new protocol's bytes, so
                # the body would be lost: refuse in one line instead of answering for an empty body.
                self._refuse(400, "this server speaks HTTP/1.1 only: send the request without an Upgrade "
                                  "header (for example HTTP/1.1 instead of HTTP/2 in the client)")
                return
            super().on_headers_complete()
            if upgrade and self.cycle is not None:
                self.cycle.keep_alive = False  # the parser is paused at the upgrade: nothing more to read

        def on_message_complete(self) -> None:
            self.completed += 1
            super().on_message_complete()
            self._watch_header()

        def on_response_complete(self) -> None:
            # The answer leaves now, not after whatever else is ready on the loop (other requests' images).
            transport = self.transport
            if isinstance(transport, CoalescingTransport):
                transport.flush()
            self.answered += 1
            super().on_response_complete()
            self._watch_header()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_watching()
            super().connection_lost(exc)

        def _waiting(self) -> bool:
            # Not while a body is still arriving after an early answer (a 404 to a POST, say).
            return self.headed == self.completed == self.answered and not self.transport.is_closing()

        def _refuse(self, status: int, detail: str) -> None:
            who = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            LOG.info("refused a request from %s: %s", who, detail)
            self.transport.write(_raw_json_response(status, detail))
            self.transport.close()

        def _watch_header(self) -> None:
            waiting = self._waiting()
            if waiting and self.header_timer is None:
                self.header_timer = self.loop.call_later(limits.header_seconds, self._header_timeout)
            elif not waiting:
                self._stop_watching()

        def _stop_watching(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _header_timeout(self) -> None:
            self.header_timer = None
            if not self._waiting():
                return
            if self.begun > self.headed:
                # Part of a header arrived: say why before closing. (A silent idle keep-alive is just closed.)
                who = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
                LOG.info("closed a connection from %s: no complete request header within %g s", who,
                         limits.header_seconds)
                self.transport.write(_raw_json_response(
                    408, f"the request header took over {limits.header_seconds:g} s"))
            self.transport.close()

    return BoundedHttpToolsProtocol


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only ever means this machine (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def exposure_warning(host: str, *, token: bool) -> str | None:
    """The warning to print when ``host`` lets other machines reach the server; None on loopback."""
    if is_loopback(host):
        return None
    if token:
        return (f"mnistlab: note: listening on {host}: other machines can reach the page; the API needs the "
                "token (plain HTTP: anyone on the network path can read it)")
    return (f"mnistlab: WARNING: listening on {host}: anyone who can reach this machine can use the API, with no "
            f"password; pass --token TOKEN (or set {TOKEN_ENV}) to require one, or --host 127.0.0.1")


def check_port(host: str, port: int) -> None:
    """Fail early, in one line, when ``host:port`` cannot be bound: port in use, no permission, or an address
    this machine does not have."""
    if not 0 < port < 65536:
        raise MnistlabError(f"--port must be in 1..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        # UnicodeError: the IDNA codec refuses names with an empty or over-long label ("a..b") before any lookup.
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise MnistlabError(f"--host {host}: not a usable address ({reason})") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            where = f"cannot listen on {host}:{port} ({exc.strerror})"
            if exc.errno == errno.EADDRNOTAVAIL:
                raise MnistlabError(f"{where}: {host} is not an address of this machine; pass --host 127.0.0.1 "
                                    "(this machine only), 0.0.0.0 (every network), or one of its own "
                                    "addresses (`ip addr` lists them)") from None
            if exc.errno == errno.EACCES:
                raise MnistlabError(f"{where}: ports below 1024 need root; pass a --port above 1023") from None
            if exc.errno == errno.EADDRINUSE:
                raise MnistlabError(f"{where}: another program uses the port; pass another --port "
                                    "(or stop the program using it)") from None
            raise MnistlabError(f"{where}; check --host and --port") from None


def open_for_serving(run_dir: str | os.PathLike[str], *, backend: str, device: str, threads: int | None,
                     weights: str) -> AnyPredictor:
    """The predictor a server process answers with: :func:`open_predictor`, torch's intra-op threads capped."""
    predictor = open_predictor(run_dir, backend=backend, device=device, threads=threads,  # type: ignore[arg-type]
                               weights=weights)
    if threads is not None and isinstance(predictor, Predictor):
        import torch

        torch.set_num_threads(threads)
    return predictor


# `serve --workers N`: uvicorn spawns N processes that import the app, protocol and loop by name from
# mnistlab.serve_worker, which reads its settings from this environment variable.
WORKER_SETTINGS_ENV = "MNISTLAB_SERVE_WORKER"  # the path of the settings file
WORKER_APP = "mnistlab.serve_worker:app"
WORKER_PROTOCOL = "mnistlab.serve_worker:WorkerProtocol"
WORKER_LOOP = "mnistlab.serve_worker:BalancedLoop"
WORKER_STARTUP_FAILURE = 3  # uvicorn's exit code for "failed before serving": its supervisor then stops
MAX_WORKERS = 64


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker process needs to build the same app as the others."""

    model: str             # a run directory or an .onnx file, already resolved by the parent
    backend: str
    device: str
    threads: int | None
    weights: str
    token: str | None
    limits: dict[str, Any]  # ServeLimits of one worker (its share), as a dict

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def worker_limits(limits: ServeLimits, workers: int) -> ServeLimits:
    """One worker's share of ``limits`` so that N workers together keep the server's bounds.

    Connections, buffered bytes and decoding threads are divided (rounded up for connections, so the total
    may exceed the limit by less than N); each worker keeps room for one max-size upload and one decoder.
    """
    if not 1 <= workers <= MAX_WORKERS:
        raise MnistlabError(f"--workers must be in 1..{MAX_WORKERS}, got {workers}")
    if workers == 1:
        return limits
    return dataclasses.replace(
        limits,
        max_connections=-(-limits.max_connections // workers),
        buffered_bytes=max(limits.buffered_bytes // workers, limits.max_bytes + MULTIPART_OVERHEAD),
        concurrency=max(1, limits.concurrency // workers),
    )


def serve(*, run_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          access_log: bool = True, threads: int | None = 1, backend: str = "auto", token: str | None = None,
          limits: ServeLimits | None = None, weights: str = "auto", workers: int = 1) -> None:
    """Load ``run_dir`` (a run, or a ``.onnx`` file) and serve the page and API with uvicorn until Ctrl-C.

    ``threads`` caps the engine's intra-op threads: one image is too small to split, and on a small machine
    the HTTP loop needs the other cores. ``backend``: see :func:`mnistlab.predict.open_predictor` (the onnx
    backend never imports torch; ``weights``: the run's best, last or auto). ``token`` makes ``/api/*``
    require ``Authorization: Bearer <token>``. ``workers`` > 1 serves from that many processes sharing the
    socket (:mod:`mnistlab.serve_worker`): image uploads scale with cores, each process holds its own model.
    """
    import uvicorn

    limits = limits or ServeLimits()
    token = check_token(token)
    share = worker_limits(limits, workers)  # refuses a bad count before anything is loaded
    check_port(host, port)
    predictor = open_for_serving(run_dir, backend=backend, device=device, threads=threads, weights=weights)
    info = predictor.info()
    app = create_app(predictor=predictor, limits=limits, token=token) if workers == 1 else None
    del predictor  # with workers, each loads its own: the parent only checked that the model opens
    warning = exposure_warning(host, token=token is not None)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    shown_host = f"[{host}]" if ":" in host else host
    # The token goes in the URL's fragment: the browser keeps it (the page reads it) and never sends it.
    page = f"http://{shown_host}:{port}/" + (f"#token={token}" if token else "")
    used = info.get("weights", "last")
    which = "" if used == "last" else f" with its {used} weights"
    processes = f" from {workers} processes" if workers > 1 else ""
    print(f"mnistlab: serving {Path(run_dir)}{which} on {page}{processes}  (API docs: /docs; Ctrl-C stops)",
          flush=True)
    # http= the bounded protocol explicitly: "auto" would pick uvicorn's own, without the header timeout or the
    # connection cap. backlog: connections the kernel queues before accept; more are refused by it.
    common: dict[str, Any] = {"host": host, "port": port, "log_level": "info" if access_log else "warning",
                              "access_log": access_log, "backlog": limits.max_connections,
                              "timeout_keep_alive": 5}
    if app is not None:
        uvicorn.run(app, http=bounded_protocol(limits), **common)
        return
    # The backend the parent ended up on (auto resolved; a run's on-the-fly export already written).
    _serve_from_workers(run_dir=run_dir, backend=info.get("backend", backend), device=device,
                        threads=threads, weights=weights, token=token, share=share, workers=workers,
                        common=common)


def _serve_from_workers(*, run_dir: str | os.PathLike[str], backend: str, device: str, threads: int | None,
                        weights: str, token: str | None, share: ServeLimits, workers: int,
                        common: dict[str, Any]) -> None:
    """uvicorn's multi-process supervisor over :mod:`mnistlab.serve_worker`.

    The parent has already loaded the model once, so a broken file is refused in one line before any process
    is spawned; the workers load it again (spawned interpreters share nothing). Their settings, the token
    among them, go in a file only this user can read (the environment names the file, so no token sits in
    any process's environment); it is removed when the server stops. A worker that cannot start writes its
    one-line reason beside it, the supervisor stops, and that line is raised here.
    """
    import tempfile

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    chosen = WorkerSettings(model=str(run_dir), backend=backend, device=device, threads=threads,
                            weights=weights, token=token, limits=dataclasses.asdict(share))
    with tempfile.TemporaryDirectory(prefix="mnistlab-serve-") as folder:  # 0700: this user only
        path = Path(folder) / "settings.json"
        path.write_text(chosen.to_json())
        # The workers inherit the environment: the settings file's path in, the token (if it came from there) out.
        saved = {name: os.environ.get(name) for name in (WORKER_SETTINGS_ENV, TOKEN_ENV)}
        os.environ[WORKER_SETTINGS_ENV] = str(path)
        os.environ.pop(TOKEN_ENV, None)
        try:
            # uvicorn.run(..., workers=N) does the same, but hides whether a worker failed to start.
            config = uvicorn.Config(WORKER_APP, factory=True, workers=workers, http=WORKER_PROTOCOL,
                                    loop=WORKER_LOOP, **common)
            supervisor = Multiprocess(config, sockets=[config.bind_socket()])
            with contextlib.suppress(KeyboardInterrupt):
                supervisor.run()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        failed = worker_failure_path(path)
        if failed.exists():
            raise MnistlabError(failed.read_text().strip())
        if any(process.exitcode == WORKER_STARTUP_FAILURE for process in supervisor.processes):
            raise MnistlabError("a server worker failed to start (its reason is in the log above); the server "
                                "stopped")


def worker_failure_path(settings_path: Path) -> Path:
    """Where a worker that could not start writes its one-line reason, beside the settings file."""
    return settings_path.with_name("failed.txt")
