"""What each process of ``mnistlab serve --workers N`` runs: the app factory and the bounded protocol by name.

One server process decodes and prepares one image at a time under Python's GIL (about 2-3 ms for a canvas
PNG), so on a machine with several cores it tops out near 400 uploads a second however fast the model is.
With ``--workers N`` uvicorn's own supervisor binds the socket once and spawns N processes that accept from it;
each loads the model and serves the same app. uvicorn needs the app and the protocol as import strings for
that ("module:attribute"), and each process is a fresh interpreter, so the settings travel in one environment
variable (JSON, set by :func:`mnistlab.serve.serve` for the spawn and removed after) and are read here, on
first use, never at import time.

Every bound of :class:`mnistlab.serve.ServeLimits` is shared out so the whole server keeps it: connections,
buffered bytes and decoding threads are divided among the processes (each keeping at least one max-size
upload's room), and the time limits apply unchanged.
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import TYPE_CHECKING, Any

from mnistlab.errors import MnistlabError
from mnistlab.serve import WORKER_SETTINGS_ENV, WorkerSettings

if TYPE_CHECKING:
    import asyncio

    from fastapi import FastAPI

@cache
def settings() -> WorkerSettings:
    """This process's settings, from the environment variable the parent set before spawning it."""
    raw = os.environ.get(WORKER_SETTINGS_ENV)
    if not raw:
        raise MnistlabError(f"{__name__}:app runs inside `mnistlab serve --workers N`, which sets "
                            f"${WORKER_SETTINGS_ENV}; start the server with that command")
    return WorkerSettings(**json.loads(raw))


def app() -> FastAPI:
    """uvicorn's app factory in each worker: load the model (torch threads capped) and build the app."""
    from mnistlab.predict import Predictor, open_predictor
    from mnistlab.serve import ServeLimits, create_app

    chosen = settings()
    predictor = open_predictor(chosen.model, backend=chosen.backend,  # type: ignore[arg-type]
                               device=chosen.device, threads=chosen.threads, weights=chosen.weights)
    if chosen.threads is not None and isinstance(predictor, Predictor):
        import torch

        torch.set_num_threads(chosen.threads)
    return create_app(predictor=predictor, limits=ServeLimits(**chosen.limits), token=chosen.token)


# Connections this process holds now (uvicorn's own set, shared by its protocols); read by BalancedLoop.
_HELD: list[set[Any]] = []


@cache
def _protocol() -> type[asyncio.Protocol]:
    from mnistlab.serve import ServeLimits, bounded_protocol

    base: Any = bounded_protocol(ServeLimits(**settings().limits))

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


DEFER_SECONDS = 0.002  # per connection already held; at most MAX_DEFER_SECONDS
MAX_DEFER_SECONDS = 0.02


@cache
def _balanced_loop() -> type[asyncio.AbstractEventLoop]:
    """An asyncio loop whose listening socket lets idle sibling processes take new connections first.

    The workers share one listening socket, and the kernel wakes all of them for each new connection: whoever
    calls accept() first wins, and an idle process accepts every pending connection in one go. A browser's
    or a client's few kept-alive connections then often land on one process while the others idle, which
    halves the throughput of two workers on two connections. Here a process accepts one connection per
    wake-up and then stops looking for ``DEFER_SECONDS``, and one that already holds connections waits
    ``DEFER_SECONDS`` for each (bounded) before it looks, so an idle sibling takes the next connection; if none
    does, the busy one accepts it after the wait. A new connection waits at most ``MAX_DEFER_SECONDS``.

    This overrides asyncio's private ``_accept_connection`` (its signature is checked; where it differs, the
    loop is asyncio's own, unbalanced but correct).
    """
    import asyncio
    import inspect
    from asyncio.selector_events import BaseSelectorEventLoop

    parameters = list(inspect.signature(BaseSelectorEventLoop._accept_connection).parameters)  # type: ignore[attr-defined]
    if parameters[:6] != ["self", "protocol_factory", "sock", "sslcontext", "server", "backlog"]:
        return asyncio.SelectorEventLoop

    class BalancedLoop(asyncio.SelectorEventLoop):
        """asyncio's selector loop, accepting one connection at a time and deferring while it holds some."""

        def _accept_connection(self, protocol_factory: Any, sock: Any, *args: Any) -> None:
            held = len(_HELD[0]) if _HELD else 0
            if held:
                self._remove_reader(sock.fileno())  # type: ignore[attr-defined]
                self.call_later(min(MAX_DEFER_SECONDS, DEFER_SECONDS * held), self._accept_late,
                                protocol_factory, sock, args)
                return
            self._accept_one(protocol_factory, sock, args)
            # The accepted connection counts as held only once its protocol starts (a later turn of the loop):
            # until then this loop stops looking, or it would take the next pending one too.
            self._remove_reader(sock.fileno())  # type: ignore[attr-defined]
            self.call_later(DEFER_SECONDS, self._listen_again, protocol_factory, sock, args)

        def _listen_again(self, protocol_factory: Any, sock: Any, args: tuple[Any, ...]) -> None:
            if sock.fileno() != -1:
                self._add_reader(sock.fileno(), self._accept_connection,  # type: ignore[attr-defined]
                                 protocol_factory, sock, *args)

        def _accept_late(self, protocol_factory: Any, sock: Any, args: tuple[Any, ...]) -> None:
            if sock.fileno() == -1:  # the server closed meanwhile
                return
            self._accept_one(protocol_factory, sock, args)  # nothing pending (a sibling took it) is a no-op
            self._listen_again(protocol_factory, sock, args)

        def _accept_one(self, protocol_factory: Any, sock: Any, args: tuple[Any, ...]) -> None:
            # args: sslcontext, server, backlog, then the SSL timeouts; backlog 1 accepts a single connection,
            # and the socket, still readable, wakes this loop again for the next one.
            one = (*args[:2], 1, *args[3:]) if len(args) >= 3 else (*args, *(None,) * (2 - len(args)), 1)
            super()._accept_connection(protocol_factory, sock, *one)  # type: ignore[misc]

    return BalancedLoop
