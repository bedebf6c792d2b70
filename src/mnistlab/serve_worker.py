"""What each process of ``mnistlab serve --workers N`` runs: the app factory and the bounded protocol by name.

One server process decodes and prepares one image at a time under Python's GIL (about 2 ms for a canvas
PNG, plus 1-2 ms of HTTP), so it uses one core however many the machine has.
With ``--workers N`` uvicorn's own supervisor binds the socket once and spawns N processes that accept from it;
each loads the model and serves the same app. uvicorn needs the app and the protocol as import strings for
that ("module:attribute"), and each process is a fresh interpreter, so the settings travel in one environment
variable (the path of a JSON file only this user can read, written by :func:`mnistlab.serve.serve` and
removed when the server stops) and are read here, on first use, never at import time.

The bounds of :class:`mnistlab.serve.ServeLimits` are shared out (:func:`mnistlab.serve.worker_limits`):
connections, buffered bytes and decoding threads are divided among the processes, and the time limits apply
unchanged. Each process keeps at least one max-size upload's room and one decoding thread, so past
``buffered_bytes / (max_bytes + 64 KiB)`` workers (6 with the defaults) or ``concurrency`` workers (4) the
totals are those floors times N, not the configured figures.
"""

from __future__ import annotations

import json
import os
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from mnistlab.errors import MnistlabError
from mnistlab.serve import (
    LOG,
    WORKER_SETTINGS_ENV,
    WORKER_STARTUP_FAILURE,
    ServeLimits,
    WorkerSettings,
    bounded_protocol,
    create_app,
    open_for_serving,
    worker_failure_path,
)

if TYPE_CHECKING:
    import asyncio

    from fastapi import FastAPI

STARTUP_FAILURE = WORKER_STARTUP_FAILURE


@cache
def settings() -> WorkerSettings:
    """This process's settings, from the file whose path the parent put in the environment."""
    path = os.environ.get(WORKER_SETTINGS_ENV)
    if not path:
        raise MnistlabError(f"{__name__}:app runs inside `mnistlab serve --workers N`, which sets "
                            f"${WORKER_SETTINGS_ENV}; start the server with that command")
    try:
        return WorkerSettings(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise MnistlabError(f"the server's worker settings ({path}) are unreadable ({exc}); start the server "
                            "again") from None


def _refuse_to_start(exc: Exception) -> NoReturn:
    """Leave the one-line reason for the parent to raise (or log it) and exit with uvicorn's startup-failure
    code, so the supervisor stops instead of spawning the worker again every half second."""
    line = str(exc) if isinstance(exc, MnistlabError) else f"a server worker failed to start: {exc!r}"
    if not isinstance(exc, MnistlabError):
        LOG.exception("%s", line)  # our bug: the traceback is for us
    path = os.environ.get(WORKER_SETTINGS_ENV)
    try:
        if not path:
            raise OSError("no settings path")
        worker_failure_path(Path(path)).write_text(line + "\n")
    except OSError:
        LOG.error("%s", line)  # nobody will read a file: say it here
    sys.exit(STARTUP_FAILURE)


def app() -> FastAPI:
    """uvicorn's app factory in each worker: load the model (torch threads capped) and build the app.

    A worker that cannot start says why in one line and exits (:func:`_refuse_to_start`).
    """
    try:
        chosen = settings()
        predictor = open_for_serving(chosen.model, backend=chosen.backend, device=chosen.device,
                                     threads=chosen.threads, weights=chosen.weights)
        return create_app(predictor=predictor, limits=ServeLimits(**chosen.limits), token=chosen.token)
    except Exception as exc:
        _refuse_to_start(exc)


# Connections this process holds now (uvicorn's own set, shared by its protocols); read by BalancedLoop.
_HELD: list[set[Any]] = []


@cache
def _protocol() -> type[asyncio.Protocol]:
    try:  # uvicorn imports the protocol before it calls the app factory: the settings are read here first
        limits = ServeLimits(**settings().limits)
    except Exception as exc:
        _refuse_to_start(exc)
    base: Any = bounded_protocol(limits)

    class WorkerProtocol(base):
        """The bounded protocol, telling this process's loop how many connections it holds."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if not _HELD:
                _HELD.append(self.connections)
            super().connection_made(transport)

    return WorkerProtocol


def __getattr__(name: str) -> Any:
    # uvicorn imports these by name; building them on first access keeps the import of this module free.
    if name == "WorkerProtocol":
        return _protocol()
    if name == "BalancedLoop":
        return _balanced_loop()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFER_SECONDS = 0.004  # per connection already held (or just accepted)
MAX_DEFER_SECONDS = 0.02  # the longest one wait; past it, everything pending is accepted at once


@cache
def _balanced_loop() -> type[asyncio.AbstractEventLoop]:
    """An asyncio loop whose listening socket lets idle sibling processes take new connections first.

    The workers share one listening socket, and the kernel wakes all of them for each new connection: whoever
    calls accept() first wins, and an idle process accepts every pending connection in one go. A browser's
    or a client's few kept-alive connections then often land on one process while the others idle, which
    halves the throughput of two workers on two connections.

    Here a process that holds no connection accepts one per wake-up. One that holds some, or accepted one less
    than ``DEFER_SECONDS`` ago (its protocol starts a loop turn later, so it is not counted yet), waits
    ``DEFER_SECONDS`` per connection held (at most ``MAX_DEFER_SECONDS``) and then accepts one, so an idle
    sibling takes the connection first and a burst alternates between the processes. Once connections have
    been pending for ``MAX_DEFER_SECONDS``, everything still pending is accepted at once, so a burst drains.
    The listening socket is watched again before each accept, so asyncio's own handling of accept errors (its
    1 s back-off when out of file descriptors) stays as it is.

    This overrides asyncio's private ``_accept_connection`` and ``_accept_connection2`` (their signatures are
    checked; where they differ, the loop is asyncio's own, unbalanced but correct).
    """
    import asyncio
    import inspect
    from asyncio.selector_events import BaseSelectorEventLoop

    accept = getattr(BaseSelectorEventLoop, "_accept_connection", None)
    started = getattr(BaseSelectorEventLoop, "_accept_connection2", None)
    if accept is None or started is None:
        return asyncio.SelectorEventLoop
    if (list(inspect.signature(accept).parameters)[:6]
            != ["self", "protocol_factory", "sock", "sslcontext", "server", "backlog"]):
        return asyncio.SelectorEventLoop

    class BalancedLoop(asyncio.SelectorEventLoop):
        """asyncio's selector loop, letting idle sibling processes accept first."""

        _accepted_at = -1.0          # loop time of this process's last accepted connection
        _pending_since: float | None = None  # when a wake-up was first deferred with connections waiting
        _backlog = 1                 # the largest backlog asyncio asked for (its own retry path passes 1)

        def _accept_connection2(self, *args: Any, **kwargs: Any) -> Any:
            # Called once per accepted connection, right after accept(): the moment this process took one.
            self._accepted_at = self.time()
            return super()._accept_connection2(*args, **kwargs)  # type: ignore[misc]

        def _accept_connection(self, protocol_factory: Any, sock: Any, *args: Any) -> None:
            if len(args) >= 3 and isinstance(args[2], int):
                self._backlog = max(self._backlog, args[2])
            held = len(_HELD[0]) if _HELD else 0
            if held or self.time() - self._accepted_at < DEFER_SECONDS:
                if self._pending_since is None:
                    self._pending_since = self.time()
                self._remove_reader(sock.fileno())  # type: ignore[attr-defined]
                self.call_later(min(MAX_DEFER_SECONDS, DEFER_SECONDS * max(1, held)), self._accept_late,
                                protocol_factory, sock, args)
                return
            # args: sslcontext, server, backlog, then the SSL timeouts; a backlog of 1 accepts one connection.
            super()._accept_connection(protocol_factory, sock, *_with_backlog(args, 1))  # type: ignore[misc]

        def _accept_late(self, protocol_factory: Any, sock: Any, args: tuple[Any, ...]) -> None:
            if sock.fileno() == -1:  # the server closed meanwhile
                return
            # Watched again first: if the accept below fails, asyncio's handling (or its back-off) decides.
            self._add_reader(sock.fileno(), self._accept_connection,  # type: ignore[attr-defined]
                             protocol_factory, sock, *args)
            since = self._pending_since if self._pending_since is not None else self.time()
            drain = self.time() - since >= MAX_DEFER_SECONDS
            before = self._accepted_at
            super()._accept_connection(  # type: ignore[misc]
                protocol_factory, sock, *_with_backlog(args, self._backlog if drain else 1))
            if drain or self._accepted_at == before:  # drained, or nothing was left for this process
                self._pending_since = None

    return BalancedLoop


def _with_backlog(args: tuple[Any, ...], backlog: int) -> tuple[Any, ...]:
    """``_accept_connection``'s arguments after ``sock`` (sslcontext, server, backlog, ...) with ``backlog``."""
    padded = (*args, *(None,) * max(0, 2 - len(args)))
    return (*padded[:2], backlog, *padded[3:])
