"""Broker selection: each URL kind, and the embedded default shared by processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from periodiq import PeriodiqMiddleware

from outreach_actors.settings import Settings
from outreach_actors.worker.broker import enqueue_many, make_broker
from outreach_actors.worker.embedded import (
    EmbeddedRedis,
    ensure_embedded_redis,
    stop_embedded_redis,
)

from .conftest import make_settings


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("stub://", StubBroker),
        ("redis://127.0.0.1:6379/15", RedisBroker),
        ("rediss://127.0.0.1:6380/0", RedisBroker),
        ("unix:///tmp/outreach-test.sock", RedisBroker),
        ("amqp://guest:guest@127.0.0.1:5672/", RabbitmqBroker),
    ],
)
def test_broker_url_picks_the_broker_class(tmp_path: Path, url: str, expected: type) -> None:
    broker = make_broker(Settings(broker_url=url, data_dir=tmp_path))
    assert isinstance(broker, expected)
    # periodiq's option must be known, or `periodic=` fails at declaration.
    assert any(isinstance(m, PeriodiqMiddleware) for m in broker.middleware)
    assert "pipe_target" in broker.actor_options  # Pipelines is present


def test_building_the_embedded_broker_starts_nothing(tmp_path: Path) -> None:
    broker = make_broker(Settings(data_dir=tmp_path))
    assert isinstance(broker, RedisBroker)
    assert not EmbeddedRedis(tmp_path).socket_path.exists()


def test_a_message_round_trips_on_every_broker(any_broker: dramatiq.Broker) -> None:
    received = []

    @dramatiq.actor(broker=any_broker, queue_name="roundtrip")
    def remember(value: int) -> None:
        received.append(value)

    worker = dramatiq.Worker(any_broker, worker_timeout=100)
    worker.start()
    try:
        for value in range(5):
            remember.send(value)
        any_broker.join(remember.queue_name, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    assert sorted(received) == [0, 1, 2, 3, 4]


def test_enqueue_many_delivers_each_message_once_with_its_hooks(any_broker: dramatiq.Broker) -> None:
    received, enqueued = [], []

    class Seen(dramatiq.Middleware):
        def after_enqueue(self, broker, message, delay) -> None:
            enqueued.append(message.args[0])

    any_broker.add_middleware(Seen())

    @dramatiq.actor(broker=any_broker, queue_name="many")
    def remember(value: int) -> None:
        received.append(value)

    any_broker.declare_queue(remember.queue_name)  # RabbitMQ: before the messages go
    enqueue_many(any_broker, [remember.message(value) for value in range(25)])
    enqueue_many(any_broker, [])
    assert sorted(enqueued) == list(range(25))
    worker = dramatiq.Worker(any_broker, worker_timeout=100)
    worker.start()
    try:
        any_broker.join(remember.queue_name, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    assert sorted(received) == list(range(25))


def test_embedded_queue_survives_a_server_restart(tmp_path: Path) -> None:
    # Given a message enqueued on the embedded broker
    broker = make_broker(make_settings(tmp_path, broker_url=None))
    dramatiq.set_broker(broker)

    @dramatiq.actor(broker=broker, queue_name="durable")
    def durable(value: int) -> None:
        pass

    durable.send(7)
    # When the server is stopped and started again
    assert stop_embedded_redis(tmp_path)
    server = ensure_embedded_redis(tmp_path)
    # Then the message is still queued (append-only persistence).
    try:
        assert server.client().hlen("outreach:durable.msgs") == 1
    finally:
        broker.close()
        stop_embedded_redis(tmp_path)


def test_stale_socket_and_pid_files_are_recovered(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    # A crash leaves a socket file with no server and a pid of a dead process.
    server.socket_path.write_text("")
    server.pid_path.write_text("999999")
    try:
        assert ensure_embedded_redis(tmp_path).is_running()
    finally:
        stop_embedded_redis(tmp_path)


CONSUMER = textwrap.dedent(
    """
    import sys, time, dramatiq
    from pathlib import Path
    from outreach_actors.worker.broker import enqueue_many, make_broker
    from outreach_actors.settings import Settings
    data_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    broker = make_broker(Settings(data_dir=data_dir))
    dramatiq.set_broker(broker)

    @dramatiq.actor(broker=broker, queue_name="shared")
    def record(value):
        with out.open("a") as f:
            f.write(f"{value}\\n")

    if sys.argv[3] == "send":
        for value in range(200):
            record.send(value)
    else:
        worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
        worker.start()
        time.sleep(float(sys.argv[3]))
        worker.stop()
    broker.close()
    """
)


def test_two_processes_share_one_embedded_server_without_doubling(tmp_path: Path) -> None:
    # Given two worker processes that each "start" the embedded default at once
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    out = tmp_path / "received.txt"
    data_dir = tmp_path / "var"
    workers = [
        subprocess.Popen([sys.executable, str(script), str(data_dir), str(out), "6"])
        for _ in range(2)
    ]
    try:
        # When a third process enqueues 200 messages
        subprocess.run([sys.executable, str(script), str(data_dir), str(out), "send"], check=True)
        for process in workers:
            assert process.wait(timeout=60) == 0
        # Then one server served them all, and each message was processed exactly once.
        values = sorted(int(line) for line in out.read_text().split())
        assert values == list(range(200))
        assert len(list(data_dir.glob("redis.pid"))) == 1
    finally:
        for process in workers:
            process.kill()
        stop_embedded_redis(data_dir)
