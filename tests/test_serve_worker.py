"""`mnistlab serve --workers N`: the limits each process gets, its settings, the balanced accept, and real
multi-process servers (connections spread over the workers, every answer right, tokens kept, torch absent on
onnx, Ctrl-C stopping them all)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mnistlab.errors import MnistlabError
from mnistlab.serve import WORKER_SETTINGS_ENV as SETTINGS_ENV
from mnistlab.serve import CoalescingTransport, ServeLimits, WorkerSettings, worker_limits
from mnistlab.serve_worker import settings
from tests.test_serve import TOKEN, CliServer, cli_server_status, free_port

# ------------------------------------------------------------------------------------------------ limits


def test_each_worker_gets_its_share_of_every_bound() -> None:
    limits = ServeLimits()
    assert worker_limits(limits, 1) is limits
    two = worker_limits(limits, 2)
    assert (two.max_connections, two.buffered_bytes, two.concurrency) == (128, 32 * 1024 * 1024, 2)
    # The time limits and the size of one image are the server's, unchanged.
    assert (two.max_bytes, two.max_pixels, two.header_seconds, two.body_seconds, two.queue_seconds) == (
        limits.max_bytes, limits.max_pixels, limits.header_seconds, limits.body_seconds, limits.queue_seconds)
    three = worker_limits(limits, 3)
    assert three.max_connections == 86 and 3 * three.max_connections - limits.max_connections < 3
    # However many workers, each keeps room for one max-size upload and one decoder (or one would wait for ever).
    many = worker_limits(limits, 64)
    assert many.buffered_bytes >= limits.max_bytes + 64 * 1024 and many.concurrency == 1


@pytest.mark.parametrize("workers", [0, -1, 65])
def test_a_worker_count_out_of_range_is_one_line(workers: int) -> None:
    with pytest.raises(MnistlabError, match=r"--workers must be in 1\.\.64"):
        worker_limits(ServeLimits(), workers)


def test_settings_round_trip_through_a_file_named_in_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    chosen = WorkerSettings(model="/m.onnx", backend="onnx", device="cpu", threads=1, weights="auto",
                            token=None, limits={"concurrency": 2})
    path = tmp_path / "settings.json"
    path.write_text(chosen.to_json())
    settings.cache_clear()
    monkeypatch.setenv(SETTINGS_ENV, str(path))
    try:
        assert settings() == chosen
        settings.cache_clear()
        path.write_text("{not json")
        with pytest.raises(MnistlabError, match=r"worker settings .* are unreadable"):
            settings()
        settings.cache_clear()
        monkeypatch.delenv(SETTINGS_ENV)
        with pytest.raises(MnistlabError, match="mnistlab serve --workers N"):
            settings()
    finally:
        settings.cache_clear()


def test_a_worker_that_cannot_load_its_model_exits_with_the_startup_failure_code(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """uvicorn's supervisor stops (instead of respawning for ever) on exit code 3; the one-line reason is left
    beside the settings for the parent to raise."""
    from mnistlab import serve_worker
    from mnistlab.serve import worker_failure_path

    broken = tmp_path / "gone.onnx"
    path = tmp_path / "settings.json"
    path.write_text(WorkerSettings(model=str(broken), backend="auto", device="cpu", threads=1, weights="auto",
                                   token=None, limits={}).to_json())
    monkeypatch.setenv(SETTINGS_ENV, str(path))
    settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            serve_worker.app()
    finally:
        settings.cache_clear()
    assert exited.value.code == serve_worker.STARTUP_FAILURE == 3
    reason = worker_failure_path(path).read_text()
    assert str(broken) in reason and len(reason.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ one send per answer
def test_writes_in_one_turn_of_the_loop_leave_in_one_send() -> None:
    """Headers and body written back to back reach the socket as one write; close sends what is pending."""

    async def scenario() -> tuple[list[bytes], bytes]:
        loop = asyncio.get_running_loop()
        received = bytearray()
        done = asyncio.Event()

        class Sink(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                received.extend(data)

            def connection_lost(self, exc: Exception | None) -> None:
                done.set()

        server = await loop.create_server(Sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        sent: list[bytes] = []
        real_write = transport.write

        def counting_write(data: bytes) -> None:  # the real transport's write, counted
            sent.append(bytes(data))
            real_write(data)

        transport.write = counting_write  # type: ignore[method-assign]
        coalescing = CoalescingTransport(transport)  # type: ignore[arg-type]
        coalescing.write(b"HTTP/1.1 200 OK\r\n\r\n")
        coalescing.write(b"")
        coalescing.write(b'{"a": 1}')
        assert sent == []  # nothing leaves before this callback returns
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        coalescing.write(b"tail")
        coalescing.close()  # flushes first
        await asyncio.wait_for(done.wait(), 10)
        server.close()
        return sent, bytes(received)

    sent, received = asyncio.run(scenario())
    assert sent == [b'HTTP/1.1 200 OK\r\n\r\n{"a": 1}', b"tail"]
    assert received == b'HTTP/1.1 200 OK\r\n\r\n{"a": 1}tail'


# ---------------------------------------------------------------------------------- the balanced accept
def _accept_times(connections: int, *, close_after_first: bool = False) -> tuple[list[float], list[object]]:
    """Run a real listening socket on BalancedLoop; connect ``connections`` clients at once. Returns the seconds
    (from the connects) at which the server's protocol saw each connection, and what the loop reported as an
    error."""
    import socket

    from mnistlab import serve_worker

    loop = serve_worker.BalancedLoop()
    assert type(loop).__name__ == "BalancedLoop"  # this Python's asyncio has the methods it overrides
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    made: list[float] = []
    clients: list[socket.socket] = []

    class Counting(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(loop.time())

    async def scenario() -> None:
        server = await loop.create_server(Counting, "127.0.0.1", 0, backlog=64)
        port = server.sockets[0].getsockname()[1]
        started = loop.time()
        for _ in range(connections):
            clients.append(socket.create_connection(("127.0.0.1", port)))
        deadline = started + 2.0
        while len(made) < (1 if close_after_first else connections) and loop.time() < deadline:
            await asyncio.sleep(0.001)
        if close_after_first:
            server.close()  # with the second connection's deferred accept still pending
            await asyncio.sleep(0.1)
        server.close()
        made[:] = [at - started for at in made]

    try:
        loop.run_until_complete(scenario())
    finally:
        for client in clients:
            client.close()
        loop.close()
    return made, errors


def test_the_balanced_loop_takes_one_connection_per_wake_up_then_waits_then_drains() -> None:
    from mnistlab.serve_worker import DEFER_SECONDS, MAX_DEFER_SECONDS

    made, errors = _accept_times(2)
    assert len(made) == 2 and not errors
    # The second connection waited: this process had just taken one, so an idle sibling would go first.
    assert made[1] - made[0] >= DEFER_SECONDS * 0.9
    made, errors = _accept_times(60)
    assert len(made) == 60 and not errors
    # A burst drains: once connections have waited MAX_DEFER_SECONDS everything pending is taken (about 30 ms
    # here), where one connection per wait would take 60 x 4 ms.
    assert made[-1] < MAX_DEFER_SECONDS * 2 + 0.08 < 59 * DEFER_SECONDS


def test_closing_the_server_during_a_deferred_accept_is_clean() -> None:
    made, errors = _accept_times(2, close_after_first=True)
    assert len(made) == 1 and not errors


# ------------------------------------------------------------------------------------- real processes
def _sockets_of(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if match := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(match.group(1))
    return inodes


def _established_on(port: int) -> set[str]:
    """Inodes of the server-side sockets of established TCP connections to ``port`` (from /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(fields[9])
    return inodes


def _workers_of(server: subprocess.Popen[bytes], count: int) -> list[int]:
    """The worker processes uvicorn's supervisor spawned: the children holding the listening socket."""
    deadline = time.monotonic() + 60
    while True:
        children = [int(pid) for pid in
                    Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        # multiprocessing's resource tracker is a child too; the workers are the ones holding sockets
        workers = [pid for pid in children if Path(f"/proc/{pid}").exists() and _sockets_of(pid)]
        if len(workers) == count:
            return workers
        assert time.monotonic() < deadline, f"expected {count} workers, found {workers}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def onnx_model(trained_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mnistlab

    return mnistlab.load(trained_cnn_run).export(tmp_path_factory.mktemp("workers") / "cnn.onnx").path


@pytest.fixture(scope="module")
def two_workers(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    # Not --quiet: each worker logs "Application startup complete", which says both have loaded the model.
    server = CliServer(onnx_model, tmp_path_factory.mktemp("two-workers"), "--workers", "2")
    try:
        deadline = time.monotonic() + 120
        while server.stderr().count("Application startup complete") < 2:
            assert time.monotonic() < deadline and server.process.poll() is None, server.stderr()
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


def test_connections_spread_over_the_workers_and_every_answer_is_right(two_workers: CliServer, mnist,
                                                                         onnx_model: Path) -> None:
    """Pairs of kept-alive connections opened at once land on different workers (the balanced accept), each
    answers canvas-sized PNGs and 28x28 arrays exactly as the model in this process does, and neither
    worker ever maps libtorch."""
    from mnistlab.imaging import encode_png
    from mnistlab.predict import OnnxPredictor

    workers = _workers_of(two_workers.process, 2)
    predictor = OnnxPredictor(onnx_model)
    spread = []
    for trial in range(20):
        connections = [http.client.HTTPConnection("127.0.0.1", two_workers.port, timeout=30) for _ in range(2)]
        try:
            for connection in connections:  # both at once, as a browser or a load test opens them
                connection.connect()
            time.sleep(0.05)
            for index, connection in enumerate(connections):
                image = mnist.test.images[trial * 2 + index]
                body = encode_png(np.kron(255 - image, np.ones((10, 10), dtype=np.uint8)))  # 280x280, dark ink
                connection.request("POST", "/api/predict", body=body, headers={"Content-Type": "image/png"})
                response = connection.getresponse()
                answer = json.loads(response.read())
                assert response.status == 200, answer
                want = predictor.predict(np.asarray(answer["input"], dtype=np.uint8)[None])[0]
                assert answer["prediction"] == want.label == int(mnist.test.labels[trial * 2 + index])
            held = [len(_sockets_of(pid) & _established_on(two_workers.port)) for pid in workers]
            assert sum(held) == 2
            spread.append(sorted(held) == [1, 1])
        finally:
            for connection in connections:
                connection.close()
        time.sleep(0.2)  # the workers see the closes before the next pair
    # On asyncio's own loop one worker took both connections of 3 pairs in 8 (measured); the balanced loop
    # passed in every run here, but a loaded 2-core machine may now and then keep a sibling off the
    # CPU for longer than the deferral. 16 of 20: a chance of about 8% to pass at asyncio's 5-in-8 split, and
    # under 2% to fail if the balanced loop splits 95% of pairs.
    assert sum(spread) >= 16, f"pairs split over the two workers: {spread}"
    for pid in workers:
        assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()
    assert "Traceback" not in two_workers.stderr()
    assert "from 2 processes" in two_workers.stdout_path.read_text()
    for pid in workers:
        assert f"Started server process [{pid}]" in two_workers.stderr()


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_workers_keep_the_token_out_of_their_environment_and_remove_their_settings(onnx_model: Path,
                                                                                    tmp_path: Path,
                                                                                    given: str) -> None:
    """The token (--token or $MNISTLAB_TOKEN) reaches every worker through a file only this user can read; no
    worker's environment holds it, and Ctrl-C stops the supervisor and every worker and removes the file."""
    extra, env = (("--token", TOKEN), None) if given == "flag" else ((), {"MNISTLAB_TOKEN": TOKEN})
    server = CliServer(onnx_model, tmp_path, "--workers", "2", "--quiet", *extra, env=env)
    try:
        workers = _workers_of(server.process, 2)
        for _ in range(4):  # new connections each time: both workers answer some of them
            assert cli_server_status(server, "/api/model") == 401
            assert cli_server_status(server, "/api/model", token=TOKEN) == 200
        settings_files = set()
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not any(TOKEN.encode() in entry for entry in environ)
            named = [entry.split(b"=", 1)[1].decode() for entry in environ
                     if entry.startswith(SETTINGS_ENV.encode() + b"=")]
            settings_files.update(named)
        assert len(settings_files) == 1
        settings_file = Path(settings_files.pop())
        assert settings_file.exists() and oct(settings_file.parent.stat().st_mode & 0o777) == "0o700"
    finally:
        server.process.send_signal(signal.SIGINT)  # Ctrl-C: the supervisor stops every worker and exits
        assert server.process.wait(timeout=30) == 0
    assert not settings_file.exists()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_bad_model_or_worker_count_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    for args, says in (([str(broken), "--workers", "2"], "broken.onnx"),
                       ([str(broken), "--workers", "0"], "--workers must be in 1..64")):
        done = subprocess.run([sys.executable, "-m", "mnistlab", "serve", *args, "--port", str(free_port())],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr, done.stderr
