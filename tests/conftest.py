"""Fixtures in Dramatiq's manner: one per broker and database, plus workers.

Tests that need a service (Redis, RabbitMQ, PostgreSQL) skip with the reason when
it is not reachable, and fail instead when ``OUTREACH_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

# pytest-xdist runs the suite in worker processes (gw0, gw1, ...): each gets its own
# PostgreSQL database, Redis database and default data directory; RabbitMQ has no
# namespace for queues, so the tests that use it take turns (rabbitmq_exclusive).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
WORKER_INDEX = int(XDIST_WORKER[2:]) if XDIST_WORKER.startswith("gw") else 0

# The package builds its process-wide broker at import: make that the stub broker
# and keep its data directory out of the working tree, before anything imports it.
os.environ["OUTREACH_BROKER_URL"] = "stub://"
os.environ.setdefault("OUTREACH_DATA_DIR", "/tmp/outreach-tests-default")
if XDIST_WORKER:
    os.environ["OUTREACH_DATA_DIR"] += f"-{XDIST_WORKER}"

import dramatiq  # noqa: E402
import pytest  # noqa: E402
import redis  # noqa: E402

import outreach_actors  # noqa: E402
from outreach_actors.dev.standin import SendGridStandIn  # noqa: E402
from outreach_actors.domain.store import models  # noqa: E402
from outreach_actors.domain.store.db import (  # noqa: E402
    database_from_url,
    ensure_postgres_database,
    is_postgresql,
)
from outreach_actors.providers.sendgrid.client import SendGridClient  # noqa: E402
from outreach_actors.settings import Settings, configure  # noqa: E402
from outreach_actors.worker.broker import make_broker  # noqa: E402
from outreach_actors.worker.embedded import stop_embedded_redis  # noqa: E402
from outreach_actors.worker.runtime import rebind_actors  # noqa: E402


def per_worker_redis(url: str) -> str:
    """The worker's own Redis database: the configured one, counting down per worker."""
    parsed = urlparse(url)
    database = int(parsed.path.strip("/") or 0) - WORKER_INDEX
    if database < 0:
        raise pytest.UsageError(f"{url} leaves no Redis database for xdist worker {XDIST_WORKER}")
    return parsed._replace(path=f"/{database}").geturl()


def per_worker_postgres(url: str) -> str:
    """The worker's own PostgreSQL database: the configured name plus ``_gwN``."""
    parsed = urlparse(url)
    return parsed._replace(path=f"{parsed.path}_{XDIST_WORKER}").geturl() if XDIST_WORKER else url


REDIS_URL = per_worker_redis(os.environ.get("OUTREACH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
RABBITMQ_URL = os.environ.get("OUTREACH_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = per_worker_postgres(os.environ.get(
    "OUTREACH_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/outreach_test"
))
SERVICES_REQUIRED = os.environ.get("OUTREACH_REQUIRE_SERVICES") == "1"
PROJECT_ACTORS = list(outreach_actors.broker.actors.values())


def service_unavailable(name: str, reason: str) -> None:
    message = f"{name} is not reachable ({reason}); see README 'Running the tests'"
    if SERVICES_REQUIRED:
        pytest.fail(message + " and OUTREACH_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


def port_open(url: str, default_port: int) -> str | None:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), 1):
            return None
    except OSError as exc:
        return str(exc)


def require_redis() -> None:
    if (problem := port_open(REDIS_URL, 6379)) is not None:
        service_unavailable("Redis", problem)


@contextmanager
def rabbitmq_exclusive() -> Iterator[None]:
    """Hold RabbitMQ's queues alone: they have no namespace, so the tests that use them
    take turns across xdist workers. (pytest-xdist's xdist_group does not group on
    pytest 9, and a vhost per worker would need rabbitmqctl on every machine.)"""
    digest = hashlib.sha1(RABBITMQ_URL.encode()).hexdigest()[:12]
    with (Path(tempfile.gettempdir()) / f"outreach-tests-rabbitmq-{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def require_rabbitmq() -> None:
    if (problem := port_open(RABBITMQ_URL, 5672)) is not None:
        service_unavailable("RabbitMQ", problem)


def require_postgres() -> None:
    if (problem := port_open(POSTGRES_URL, 5432)) is not None:
        service_unavailable("PostgreSQL", problem)
    try:
        ensure_postgres_database(POSTGRES_URL)
    except ImportError:
        service_unavailable("PostgreSQL", "psycopg2 is not installed")


# --- settings and databases -------------------------------------------------------

def wait_until(condition, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail the test if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path


# Settings with an API key and SendGrid's own host must have a strong secret to start.
TEST_SECRET_KEY = "tests-only-secret-7Kq2Zr9Lx1Vb8Nw3Pd5Jh0Tf6"


def make_settings(data_dir: Path, **overrides) -> Settings:
    values = dict(
        data_dir=data_dir,
        broker_url="stub://",
        database_url=f"sqlite:///{data_dir / 'outreach.db'}",
        templates_dir=Path(__file__).resolve().parent.parent / "templates",
        sendgrid_api_key=STANDIN_API_KEY,
        secret_key=TEST_SECRET_KEY,
    )
    values.update(overrides)
    return Settings(**values)


def reset_schema(database) -> None:
    models.bind(database)
    with database.connection_context():
        database.drop_tables(models.ALL_MODELS, safe=True, cascade=is_postgresql(database))
    models.create_schema(database)


@pytest.fixture
def sqlite_db(data_dir: Path):
    database = database_from_url(f"sqlite:///{data_dir / 'outreach.db'}", make_settings(data_dir))
    models.create_schema(database)
    yield database
    database.close()


@pytest.fixture
def postgres_db(data_dir: Path):
    require_postgres()
    database = database_from_url(POSTGRES_URL, make_settings(data_dir))
    reset_schema(database)
    yield database
    database.close_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request):
    return request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "postgres_db")


@pytest.fixture
def db(any_db, data_dir):
    """The tables on SQLite and on PostgreSQL, bound, with settings that point at them."""
    configure(make_settings(data_dir))
    models.bind(any_db)
    yield any_db
    configure(None)


@pytest.fixture
def settings(data_dir: Path, sqlite_db) -> Iterator[Settings]:
    """Settings for one test: stub broker, SQLite in a temporary directory."""
    current = make_settings(data_dir)
    configure(current)
    yield current
    configure(None)


# --- counting SQL -------------------------------------------------------------------

@dataclass
class Statements:
    sql: list[str] = field(default_factory=list)
    transactions: int = 0

    @property
    def kinds(self) -> list[str]:
        return [statement.split(None, 1)[0].upper() for statement in self.sql]


@contextmanager
def counting() -> Iterator[Statements]:
    """Count what the bound database runs inside the block: statements and transactions."""
    database = models.database_proxy.obj
    seen = Statements()

    def hook(event) -> None:
        seen.sql.append(event.sql)

    def begin(*args, **kwargs):
        seen.transactions += 1
        return type(database).begin(database, *args, **kwargs)

    database.query_hooks.append(hook)
    database.begin = begin
    try:
        yield seen
    finally:
        database.query_hooks.remove(hook)
        del database.begin


# --- SendGrid -----------------------------------------------------------------------

# The key make_settings configures and the stand-in expects.
STANDIN_API_KEY = "SG.test-key"


@pytest.fixture
def standin() -> Iterator[SendGridStandIn]:
    """The SendGrid stand-in on loopback, reached by the real client."""
    with SendGridStandIn(api_key=STANDIN_API_KEY) as server:
        yield server


def recipients(standin: SendGridStandIn) -> list[str]:
    """The address each mail the stand-in accepted went to, sorted."""
    return sorted(mail.recipients()[0][0] for mail in standin.messages)


@pytest.fixture
def sendgrid_client(standin: SendGridStandIn) -> SendGridClient:
    return SendGridClient(STANDIN_API_KEY, host=standin.host, timeout_s=5.0)


# --- brokers and workers -----------------------------------------------------------

def install_broker(broker: dramatiq.Broker) -> dramatiq.Broker:
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    rebind_actors(broker, PROJECT_ACTORS)
    return broker


_DEFAULT_BROKER = outreach_actors.broker


@pytest.fixture(autouse=True)
def _restore_default_broker():
    """Put the import-time stub broker back after every test.

    Tests install other brokers (and stop their servers); the project's actors must
    not stay bound to a closed one for the tests that follow.
    """
    yield
    dramatiq.set_broker(_DEFAULT_BROKER)
    rebind_actors(_DEFAULT_BROKER, PROJECT_ACTORS)


@pytest.fixture
def stub_broker(data_dir: Path):
    broker = install_broker(make_broker(make_settings(data_dir, broker_url="stub://")))
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def redis_broker(data_dir: Path):
    require_redis()
    redis.Redis.from_url(REDIS_URL).flushdb()
    broker = install_broker(make_broker(make_settings(data_dir, broker_url=REDIS_URL)))
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def rabbitmq_broker(data_dir: Path):
    require_rabbitmq()
    require_redis()  # rate-limit and idempotency state lives in Redis beside RabbitMQ
    with rabbitmq_exclusive():
        redis.Redis.from_url(REDIS_URL).flushdb()
        broker = install_broker(make_broker(
            make_settings(data_dir, broker_url=RABBITMQ_URL, state_redis_url=REDIS_URL)))
        for actor in PROJECT_ACTORS:
            broker.declare_queue(actor.queue_name)
        broker.flush_all()
        yield broker
        broker.flush_all()
        broker.close()


@pytest.fixture
def embedded_broker(data_dir: Path):
    broker = install_broker(make_broker(make_settings(data_dir, broker_url=None)))
    yield broker
    broker.close()
    stop_embedded_redis(data_dir)


@pytest.fixture(params=["stub", "redis", "rabbitmq", "embedded"])
def any_broker(request):
    return request.getfixturevalue(f"{request.param}_broker")


@pytest.fixture
def stub_worker(stub_broker):
    worker = dramatiq.Worker(stub_broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def worker(any_broker):
    worker = dramatiq.Worker(any_broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


# --- a real browser -----------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's chromium and chromium-driver) driven by Selenium,
    shared by the whole session: starting one costs about a second."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        service_unavailable("Chromium", f"{' and '.join(missing)} not installed "
                                        "(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    yield driver
    driver.quit()
