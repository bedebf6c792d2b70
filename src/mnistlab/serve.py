"""The draw-a-digit server: a FastAPI app over one trained run, and the page in ``static/``.

Endpoints (OpenAPI docs at ``/docs``)::

    GET  /               the page: draw (mouse/touch), live probability bars, the 28x28 the model sees, upload
    GET  /healthz        {"status": "ok"}
    GET  /api/model      what is loaded: model, dataset, classes, recorded test accuracy, upload limits
    POST /api/predict    an image (multipart field "image", or a raw image/* body) or JSON {"pixels": 28x28}

Every request is size-capped before anything is decoded: Content-Length is checked first, then the body is
read in chunks and abandoned as soon as it passes the cap (chunked uploads have no Content-Length). Image
decoding, preprocessing and inference run in worker threads behind a small limiter, so a large photo never
blocks the event loop and at most ``concurrency`` images are in memory at once (a 28x28 JSON array is so
cheap that it is predicted inline). Every user-caused problem is a 4xx with
``{"detail": "one line"}``; a 500 would be a bug.

FastAPI is imported at module level (it reads the endpoints' annotations from this module's globals); the CLI
imports this module only inside ``mnistlab serve``.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the endpoints' annotations, and the `top`
# parameter's bound (the model's number of classes) is a local of create_app.
import json
import os
import socket
import time
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from mnistlab.errors import MnistlabError
from mnistlab.imaging import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    BadPixels,
    BlankImage,
    ImageTooLarge,
    Invert,
    UnreadableImage,
    prepare_image,
)
from mnistlab.predict import AnyPredictor, Predictor, open_predictor

MULTIPART_OVERHEAD = 64 * 1024  # boundary lines and part headers on top of the image itself
BODY_READ_SECONDS = 30.0        # a client that trickles its upload slower than this gets 408
STATUS_FOR_ERROR: tuple[tuple[type[MnistlabError], int], ...] = (
    (ImageTooLarge, 413),
    (UnreadableImage, 422),
    (BlankImage, 422),
    (BadPixels, 422),
)

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
PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An image file (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM), as a multipart field `image` "
                       "or as the raw body with an image/* Content-Type; or JSON with a 28x28 `pixels` array",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "format": "binary"}}}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": PIXELS_SCHEMA},
        },
    },
}


@dataclass(frozen=True)
class ServeLimits:
    """Upload limits: bytes of one image, pixels of one decoded image, images processed at once."""

    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS
    concurrency: int = 4

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1 or self.concurrency < 1:
            raise MnistlabError(f"server limits must be >= 1, got {self}")


def static_dir() -> Path:
    """The packaged ``static/`` folder holding the page (index.html, app.js, style.css)."""
    return Path(str(resources.files("mnistlab") / "static"))


def status_for(exc: MnistlabError) -> int:
    """The HTTP status for a user-caused error: 413 too large, 422 unusable content, else 400."""
    for kind, status in STATUS_FOR_ERROR:
        if isinstance(exc, kind):
            return status
    return 400


def create_app(
    *,
    run_dir: str | os.PathLike[str] | None = None,
    predictor: AnyPredictor | None = None,
    device: str = "cpu",
    limits: ServeLimits | None = None,
) -> FastAPI:
    """A FastAPI app serving ``run_dir``'s model (loaded once, here) or an already loaded ``predictor``."""
    if predictor is None:
        if run_dir is None:
            raise MnistlabError("create_app needs run_dir (a folder written by `mnistlab train`) "
                                "or a predictor")
        predictor = Predictor(run_dir, device=device)
    limits = limits or ServeLimits()
    model_info = predictor.info()
    # Created lazily inside the event loop (anyio requires a running loop on some backends).
    limiter_box: list[anyio.CapacityLimiter] = []

    app = FastAPI(
        title="mnistlab",
        version=_version(),
        summary=f"Draw a digit and see {model_info['model']} ({model_info['dataset']}) read it.",
        docs_url="/docs",
        redoc_url=None,
    )

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

    @app.get("/healthz", tags=["service"], summary="Liveness check")
    def healthz() -> dict[str, str]:
        """Liveness: answers while the server runs."""
        return {"status": "ok"}

    @app.get("/api/model", tags=["service"], summary="What is loaded, and its recorded test accuracy")
    def api_model() -> dict[str, Any]:
        """What is loaded, its recorded test accuracy, and the upload limits."""
        return {**model_info, "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels}}

    def work(payload: bytes | list[Any], *, invert: Invert, top: int, name: str) -> dict[str, Any]:
        started = time.perf_counter()
        prepared = prepare_image(payload, invert=invert, name=name, max_bytes=limits.max_bytes,
                                 max_pixels=limits.max_pixels)
        prediction = predictor.predict(prepared.pixels[None])[0]
        return {
            **prediction.to_dict(top=top),
            "inverted": prepared.inverted,
            "source_size": list(prepared.source_size),
            "input": prepared.pixels.tolist(),
            "milliseconds": round(1000 * (time.perf_counter() - started), 3),
        }

    @app.post(
        "/api/predict", tags=["predict"], summary="Predict the digit in an image or a 28x28 array",
        openapi_extra=PREDICT_BODY,
        responses={
            200: {"description": "prediction, every class's probability, top-k, the 28x28 the model saw"},
            400: {"description": "malformed JSON or multipart body, or no image in it"},
            408: {"description": "the upload arrived too slowly"},
            413: {"description": "the upload or the decoded image is over the size limit"},
            415: {"description": "a Content-Type other than multipart/form-data, image/*, application/json"},
            422: {"description": "not a readable image, a blank image, or a bad pixels array (shape/range)"},
        },
    )
    async def api_predict(
        request: Request,
        top: Annotated[int, Query(ge=1, le=predictor.num_classes, description="classes to list")] = 3,
        invert: Annotated[Invert, Query(description="auto: detect dark-on-light; yes/no: force it")] = "auto",
    ) -> JSONResponse:
        """Predict the digit in an uploaded image or a 28x28 pixel array."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        payload: bytes | list[Any]
        if content_type == "multipart/form-data":
            body = await _read_capped(request, limits.max_bytes + MULTIPART_OVERHEAD)
            payload, name = await _image_from_form(request, body, limits.max_bytes)
        elif content_type == "application/json":
            # 28x28 numbers fit in a few KB; 1 MB leaves room for whitespace and stops JSON bombs early.
            body = await _read_capped(request, 1024 * 1024)
            payload, name = _pixels_from_json(body), "pixels"
        elif content_type.startswith("image/") or content_type == "application/octet-stream":
            payload, name = await _read_capped(request, limits.max_bytes), "image"
        else:
            shown = content_type or "none"
            raise HTTPException(415, f"Content-Type {shown} is not accepted; send multipart/form-data with "
                                     "an `image` file, a raw image/* body, or application/json "
                                     '{"pixels": 28x28}')
        if isinstance(payload, list):
            # A 28x28 array is validated and predicted in well under a millisecond: a thread hop would cost
            # more than it saves, so it runs right here.
            result = work(payload, invert=invert, top=top, name=name)
        else:
            # Decoding an upload can take tens of milliseconds (a 12 Mpx photo): worker threads keep the
            # event loop answering, and the limiter bounds how many images are decoded at once.
            if not limiter_box:
                limiter_box.append(anyio.CapacityLimiter(limits.concurrency))
            result = await anyio.to_thread.run_sync(
                partial(work, payload, invert=invert, top=top, name=name), limiter=limiter_box[0])
        return JSONResponse(result)

    static = static_dir()
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        """The draw-a-digit page."""
        return FileResponse(static / "index.html", media_type="text/html")

    return app


async def _read_capped(request: Request, cap: int) -> bytes:
    """The request body, refusing (413) anything over ``cap`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise HTTPException(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > cap:
            raise HTTPException(413, f"the upload is {int(declared):,} bytes, over the {cap:,}-byte limit; "
                                     "send a smaller image")
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(BODY_READ_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise HTTPException(413, f"the upload is over the {cap:,}-byte limit; "
                                             "send a smaller image")
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPException(408, f"the upload took over {BODY_READ_SECONDS:.0f} s; try again") from None
    return b"".join(chunks)


async def _image_from_form(request: Request, body: bytes, max_bytes: int) -> tuple[bytes, str]:
    """The image bytes of a multipart body's ``image`` field (or its only file field)."""
    sent = False

    async def replay() -> dict[str, Any]:
        # The body was already read under the cap; hand it to Starlette's multipart parser once.
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    replayed = Request(request.scope, receive=replay)
    form = await replayed.form(max_files=2, max_fields=8, max_part_size=64 * 1024)
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


def _pixels_from_json(body: bytes) -> list[Any]:
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


def check_port(host: str, port: int) -> None:
    """Fail early, in one line, when ``host:port`` cannot be bound (in use, or not an address here)."""
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
            raise MnistlabError(f"cannot listen on {host}:{port} ({exc.strerror}); "
                                "pass another --port (or stop the program using it)") from None


def serve(*, run_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          access_log: bool = True, threads: int | None = 1, backend: str = "auto") -> None:
    """Load ``run_dir`` (a run, or a ``.onnx`` file) and serve the page and API with uvicorn until Ctrl-C.

    ``threads`` caps the engine's intra-op threads: one image is too small to split, and on a small machine
    the HTTP loop needs the other cores. ``backend``: see :func:`mnistlab.predict.open_predictor` (the onnx
    backend never imports torch).
    """
    import uvicorn

    check_port(host, port)
    predictor = open_predictor(run_dir, backend=backend, device=device, threads=threads)  # type: ignore[arg-type]
    if threads is not None and isinstance(predictor, Predictor):
        import torch

        torch.set_num_threads(threads)
    app = create_app(predictor=predictor)
    shown_host = f"[{host}]" if ":" in host else host
    print(f"mnistlab: serving {Path(run_dir)} on http://{shown_host}:{port}/  "
          "(API docs: /docs; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info" if access_log else "warning",
                access_log=access_log)
