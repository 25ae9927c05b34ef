"""``outreach serve`` as the internet meets it, run as a real process on a loopback port:
idle and half-sent connections cost no thread and are closed, open connections are bounded,
and bodies over the limit are refused."""

from __future__ import annotations

import http.client
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from outreach_actors.dev.ports import free_port
from outreach_actors.domain.store.models import WebhookDelivery

from .test_webhooks import assert_private_page

IDLE_TIMEOUT_S = 2
MAX_BODY = 64


@contextmanager
def outreach_serve(data_dir: Path, *options: str) -> Iterator[tuple[int, int]]:
    """Run ``outreach serve`` on the test's database; yield its pid and port."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTREACH_")}
    env.update({"OUTREACH_BROKER_URL": "stub://", "OUTREACH_DATA_DIR": str(data_dir),
                "OUTREACH_DATABASE_URL": f"sqlite:///{data_dir / 'outreach.db'}",
                "OUTREACH_WEBHOOK_MAX_BODY_BYTES": str(MAX_BODY),
                "OUTREACH_SENDGRID_WEBHOOK_ALLOW_UNSIGNED": "true"})
    port = free_port()
    output = data_dir / "serve.log"
    with output.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "outreach_actors.cli", "serve", "--port", str(port), *options],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "outreach serve did not listen within 60 s"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield process.pid, port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def request(port: int, method: str, path: str, body: bytes | None = None,
            **kwargs) -> tuple[http.client.HTTPResponse, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body, **kwargs)
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:  # closed while we looked
            pass
    return count


def wait_for_eof(sockets: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Read each socket until the server closes it; those still open after ``timeout``."""
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        still_open = set(sockets)
        deadline = time.monotonic() + timeout
        while still_open and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                try:
                    closed = key.fileobj.recv(4096) == b""
                except ConnectionError:
                    closed = True
                if closed:
                    selector.unregister(key.fileobj)
                    still_open.discard(key.fileobj)
    return list(still_open)


@pytest.fixture
def served(sqlite_db, data_dir: Path) -> Iterator[tuple[int, int]]:
    with outreach_serve(data_dir, "--idle-timeout", str(IDLE_TIMEOUT_S)) as server:
        yield server


def test_150_idle_connections_neither_hold_up_a_request_nor_pin_a_thread_each(served) -> None:
    pid, port = served
    threads_before = threads_of(pid)
    with ExitStack() as stack:
        idle = [stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
                for _ in range(150)]
        for sock in idle[::2]:  # half of them start a request and never finish it
            sock.sendall(b"POST /webhooks/sendgrid HTTP/1.1\r\nHost: hooks.acme.test\r\n")
        started = time.monotonic()
        response, _ = request(port, "GET", "/unsubscribe/not-a-token")
        assert response.status == 400 and time.monotonic() - started < 3
        assert_private_page(response.headers)
        assert threads_of(pid) <= threads_before + 1, "a thread for each idle connection"
        # Each is closed once it has been silent for the idle timeout (looked for every second).
        still_open = wait_for_eof(idle, timeout=IDLE_TIMEOUT_S * 2 + 5)
        assert len(still_open) == 0, f"{len(still_open)} of 150 idle connections still open"


def test_connections_beyond_the_limit_are_not_taken_until_others_close(
        sqlite_db, data_dir: Path) -> None:
    with outreach_serve(data_dir, "--connection-limit", "20", "--idle-timeout", "2") as (pid, port):
        baseline = sockets_of(pid)
        with ExitStack() as stack:
            clients = [stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
                       for _ in range(40)]
            time.sleep(1)  # time to take all it would
            assert sockets_of(pid) - baseline <= 20
            # The others wait their turn and are served, not dropped: all are closed in rounds.
            assert wait_for_eof(clients, timeout=30) == []


def test_a_body_over_the_limit_gets_413_and_one_within_it_is_stored(served) -> None:
    _, port = served
    response, _ = request(port, "POST", "/webhooks/sendgrid", b"[" + b" " * MAX_BODY + b"]",
                          headers={"Content-Type": "application/json"})
    assert response.status == 413
    chunks = iter([b"[", b" " * MAX_BODY, b"]"])  # no Content-Length: sent in chunks
    response, _ = request(port, "POST", "/webhooks/sendgrid", chunks,
                          headers={"Content-Type": "application/json"}, encode_chunked=True)
    assert response.status == 413
    response, _ = request(port, "POST", "/webhooks/sendgrid", b"[]",
                          headers={"Content-Type": "application/json"})
    assert response.status == 200
    assert [bytes(row.body) for row in WebhookDelivery.select()] == [b"[]"]
