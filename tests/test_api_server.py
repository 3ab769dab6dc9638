"""`digitlab serve` as a real process: SIGTERM under load drains (no request is dropped), with one worker and with
several, and a model that cannot load stops the server at start-up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import REPO
from digitlab.serving.settings import API_KEY_ENV
from test_api import free_port, to_png


@pytest.fixture(scope="module")
def run(onnx_run) -> Path:
    """The shared tiny run with model.onnx (conftest.onnx_run)."""
    return onnx_run


@pytest.fixture(scope="module")
def digit_png(mnist) -> bytes:
    return to_png(255 - mnist.test.images[0])


def server_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != API_KEY_ENV}, "OMP_NUM_THREADS": "1"}


@contextmanager
def serving(run: Path, port: int, *options: str, log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "digitlab.cli", "serve", str(run), "--port", str(port),
                                 "--backend", "onnx", *options], cwd=REPO, env=server_env(),
                                stdout=subprocess.DEVNULL, stderr=log_file)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.1)


def load(url: str, image: bytes, keep_alive: bool, outcomes: Counter, stop: threading.Event) -> None:
    """Requests back to back until the server refuses the connection (or `stop`); each outcome counted."""
    client = httpx.Client(timeout=30) if keep_alive else None
    try:
        while not stop.is_set():
            try:
                post = client.post if client is not None else httpx.post
                r = post(f"{url}/v1/predict", content=image, headers={"Content-Type": "image/png"}, timeout=30)
                outcomes["answered" if r.status_code == 200 else f"status {r.status_code}"] += 1
            except httpx.ConnectError:
                outcomes["refused"] += 1  # not accepted: the client knows its request was never sent
                return
            except httpx.HTTPError as e:  # accepted, then the connection closed or reset without an answer
                outcomes[f"dropped: {type(e).__name__}: {e}"] += 1
                return
    finally:
        if client is not None:
            client.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_drops_no_request(run, digit_png, tmp_path, workers):
    """16 clients (half on keep-alive connections, half on a new connection per request) send predictions back
    to back; SIGTERM comes mid-load. Every request is either answered or refused at connect, none is reset or
    closed unanswered; the process exits 0. (uvicorn's own shutdown dropped 7-17 of 32 such clients.)"""
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with serving(run, port, "--workers", str(workers), "--graceful-timeout", "20", log=log) as proc:
        wait_ready(proc, url, log)
        outcomes: Counter = Counter()
        stop = threading.Event()
        threads = [threading.Thread(target=load, args=(url, digit_png, i % 2 == 0, outcomes, stop)) for i in range(16)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while outcomes["answered"] < 32 and time.monotonic() < deadline:  # under load (slow machines included)
            time.sleep(0.05)
        answered_before = outcomes["answered"]
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stop.set()
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert not [k for k in outcomes if k.startswith("dropped") or k.startswith("status")], outcomes
    assert answered_before >= 32 and outcomes["refused"] == 16, outcomes  # every client ended refused at connect


@pytest.mark.parametrize("workers", [1, 2])
def test_a_model_that_cannot_load_stops_serve_at_start(run, tmp_path, workers):
    broken = shutil.copytree(run, tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    port, log = free_port(), tmp_path / "server.log"
    with serving(broken, port, "--workers", str(workers), log=log) as proc:
        status = proc.wait(timeout=90)  # before: served /healthz for ever, /readyz 503
    text = log.read_text()
    assert status == 1 and "Traceback" not in text, text[-3000:]
    failures = [line for line in text.splitlines() if "model failed to load" in line]
    assert failures and "error: the server did not start" in text.splitlines()[-1], text[-3000:]


def test_the_drain_sees_a_request_the_loop_has_not_read_yet():
    """An idle connection is closed on shutdown only when nothing waits unread in its receive buffer: closing a
    socket with unread bytes resets it, and the request in them would be lost."""
    import socket

    from digitlab.serving.protocol import _unread_bytes

    class Transport:
        def __init__(self, sock):
            self.sock = sock

        def get_extra_info(self, name):
            return self.sock if name == "socket" else None

    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        assert _unread_bytes(Transport(server_end)) == 0
        client_end.sendall(b"POST /v1/predict HTTP/1.1\r\n")
        deadline = time.monotonic() + 5
        while _unread_bytes(Transport(server_end)) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _unread_bytes(Transport(server_end)) == 27
        server_end.recv(27)
        assert _unread_bytes(Transport(server_end)) == 0
    assert _unread_bytes(Transport(None)) == 0  # no socket to ask: the grace period alone decides
