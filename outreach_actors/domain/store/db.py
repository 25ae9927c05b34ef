"""The Peewee database chosen by a URL: SQLite (the default) or PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from outreach_actors.settings import Settings, SettingsError

#: The database every model and fixed statement runs on: models.bind sets it.
database_proxy = peewee.DatabaseProxy()

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


class PreparingPostgresqlDatabase(PooledPostgresqlDatabase):
    """The connection pool, running the statements marked with :meth:`prepare` as
    server-side prepared statements: each connection parses and plans them once.

    The email path runs a handful of fixed statements thousands of times, and
    parsing and planning them afresh cost PostgreSQL more CPU than running them.
    psycopg2 has no prepared statements of its own, so this runs SQL ``PREPARE`` and
    ``EXECUTE``. A pooler that hands a client a different server connection per
    transaction (PgBouncer's transaction mode) does not keep them: there, turn this
    off with ``?prepared_statements=false`` in the database URL. A connection whose
    statements were dropped behind our back (``DISCARD ALL``) prepares them again.
    SQLite needs none of this: its driver keeps a cache of prepared statements.
    """

    def __init__(self, *args, prepared_statements: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prepared_statements = prepared_statements
        self._names: dict[str, str] = {}  # statement -> its prepared name
        self._prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._prepared_lock = threading.Lock()

    def prepare(self, sql: str) -> str:
        """Mark ``sql`` (``%s`` placeholders) to run as a prepared statement; returns it."""
        if self.prepared_statements and sql not in self._names:
            self._names[sql] = "outreach_" + hashlib.sha1(sql.encode()).hexdigest()[:20]
        return sql

    # Peewee's _execute_cursor (4.5; setup.cfg pins peewee below 5), with the marked
    # statements run through EXECUTE; the log and query hooks see the statement itself.
    def _execute_cursor(self, sql, params, **cursor_options):
        name = self._names.get(sql) if params else None
        if name is None:
            return super()._execute_cursor(sql, params, **cursor_options)
        self._log_query(sql, params)
        start = time.perf_counter() if self.query_hooks else None
        try:
            with peewee.__exception_wrapper__:
                cursor = self.cursor(**cursor_options)
                self._execute_prepared(cursor, name, sql, params)
        except Exception as exc:
            if start is not None:
                self._notify_hooks(sql, params, start, exc)
            raise
        if start is not None:
            self._notify_hooks(sql, params, start, None)
        return cursor

    def _execute_prepared(self, cursor, name: str, sql: str, params) -> None:
        import psycopg2.errors

        with self._prepared_lock:
            prepared = self._prepared.setdefault(cursor.connection, set())
        execute = f"EXECUTE {name} ({', '.join(['%s'] * len(params))})"
        if name in prepared:
            try:
                cursor.execute(execute, params)
                return
            except psycopg2.errors.InvalidSqlStatementName:
                # Dropped behind our back (DISCARD ALL, a pooler's reset): prepare anew.
                prepared.clear()
                if self.in_transaction():
                    raise  # the transaction is aborted; the caller's retry prepares
        try:
            cursor.execute(f"PREPARE {name} AS {_numbered_placeholders(sql)}")
        except psycopg2.errors.DuplicatePreparedStatement:
            # The session already has it (a pooler handed it over without a reset): the
            # name is a hash of the statement, so it is this one.
            if self.in_transaction():
                raise
        prepared.add(name)
        cursor.execute(execute, params)


def _numbered_placeholders(sql: str) -> str:
    """``%s`` placeholders as PREPARE wants them: ``$1``, ``$2``, ..."""
    parts = sql.split("%s")
    return "".join(part + (f"${number}" if number < len(parts) else "")
                   for number, part in enumerate(parts, start=1))


def prepare(database: peewee.Database, sql: str) -> str:
    """Mark ``sql`` to run prepared where the database supports it; returns it."""
    if isinstance(database, PreparingPostgresqlDatabase):
        database.prepare(sql)
    return sql


_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


def postgresql_database(url: str) -> peewee.Database:
    parsed = urlparse(url)
    options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    max_connections = int(options.pop("max_connections", "32"))
    prepared = options.pop("prepared_statements", "true").strip().lower()
    if prepared not in _TRUE | _FALSE:
        raise SettingsError(
            f"OUTREACH_DATABASE_URL: prepared_statements={prepared!r} must be true or false"
        )
    return PreparingPostgresqlDatabase(
        unquote(parsed.path.lstrip("/")) or "postgres",
        user=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        host=parsed.hostname or None,
        port=parsed.port,
        max_connections=max_connections,
        # Connections idle longer than this are recycled, so a restarted server
        # does not leave dead sockets in the pool for long.
        stale_timeout=300,
        prepared_statements=prepared in _TRUE,
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
