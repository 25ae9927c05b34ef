"""A PostgreSQL server of a run's own, in a temporary directory: restarting it disturbs no one.

The chaos run restarts PostgreSQL mid-campaign. Restarting the machine's server
would break every other test and program using it, so the run starts its own
cluster with the installed ``initdb`` and ``pg_ctl`` (Debian's
``postgresql`` package puts them under ``/usr/lib/postgresql/*/bin``), on a free
local port, and removes it afterwards. PostgreSQL refuses to run as root: as
root, the commands run as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from outreach_actors.dev.ports import free_port

#: How long ``pg_ctl`` waits for the server to start or stop, in seconds.
DEFAULT_WAIT_S = 60


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or the server would not start."""


def find_postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest version."""
    if (initdb := shutil.which("initdb")) and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda path: int(Path(path).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only.

    Parameters:
      bin_dir: where ``initdb`` and ``pg_ctl`` are (default: :func:`find_postgres_bin`).
    """

    def __init__(self, *, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_postgres_bin()
        if self.bin_dir is None:
            raise PostgresUnavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under "
                "/usr/lib/postgresql/*/bin: install Debian's postgresql package")
        # Not under pytest's tmp_path: it is private to root, and the server runs as postgres.
        self.directory = Path(tempfile.mkdtemp(prefix="outreach-postgres-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            account = pwd.getpwnam(self._user)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/outreach"

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
                   "-c fsync=off -c max_connections=200 -c track_commit_timestamp=on")
        self._run("pg_ctl", "start", "-D", str(self.data), "-w", "-t", str(DEFAULT_WAIT_S),
                  "-o", options, "-l", str(self.directory / "server.log"))

    def stop(self, mode: Literal["immediate", "fast"] = "fast") -> None:
        """Stop it: ``immediate`` is a crash (no checkpoint, clients cut off at once)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-w", "-t", str(DEFAULT_WAIT_S),
                  "-m", mode, check=False)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _run(self, program: str, *arguments: str, check: bool = True) -> None:
        command = [str(self.bin_dir / program), *arguments]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.directory)
        if check and result.returncode != 0:
            raise PostgresUnavailable(
                f"{program} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
