"""A free TCP port on 127.0.0.1, for a server started in another process."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (another process could take it before it is used)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
