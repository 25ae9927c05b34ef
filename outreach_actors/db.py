"""The Peewee database chosen by a URL: SQLite (the default) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from .settings import Settings, SettingsError

# SQLite waits this long for a lock held by another worker before failing.
SQLITE_BUSY_TIMEOUT_MS = 15_000


def sqlite_database(path: Path | str) -> peewee.SqliteDatabase:
    path = Path(path)
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    return peewee.SqliteDatabase(
        str(path),
        # Peewee keeps one connection per thread (thread_safe=True), which is what
        # Dramatiq's worker threads need; WAL lets readers run beside the writer.
        pragmas={
            "journal_mode": "wal",
            "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
            "foreign_keys": 1,
            "synchronous": "normal",
        },
        timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
    )


def postgresql_database(url: str) -> peewee.Database:
    parsed = urlparse(url)
    options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    max_connections = int(options.pop("max_connections", "32"))
    return PooledPostgresqlDatabase(
        unquote(parsed.path.lstrip("/")) or "postgres",
        user=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        host=parsed.hostname or None,
        port=parsed.port,
        max_connections=max_connections,
        # Connections idle longer than this are recycled, so a restarted server
        # does not leave dead sockets in the pool for long.
        stale_timeout=300,
        **options,
    )


def database_from_url(url: str | None, settings: Settings) -> peewee.Database:
    """Build (but do not connect) the database a URL names; None is the embedded SQLite."""
    if url is None:
        return sqlite_database(settings.sqlite_path)
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise SettingsError(
                "OUTREACH_DATABASE_URL: a SQLite URL needs a path, e.g. sqlite:///var/outreach.db"
            )
        return sqlite_database(path)
    if scheme in {"postgres", "postgresql"}:
        return postgresql_database(url)
    raise SettingsError(f"OUTREACH_DATABASE_URL: unsupported scheme {scheme!r}")


def is_postgresql(database: peewee.Database) -> bool:
    return isinstance(database, peewee.PostgresqlDatabase)


def ensure_postgres_database(url: str) -> None:
    """Create the PostgreSQL database ``url`` names if it does not exist (tests, benchmarks)."""
    import psycopg2

    parsed = urlparse(url)
    name = unquote(parsed.path.lstrip("/"))
    admin = psycopg2.connect(dbname="postgres", user=parsed.username, password=parsed.password,
                             host=parsed.hostname, port=parsed.port or 5432)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()
