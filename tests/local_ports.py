"""A free loopback port, for the tests that start their own servers (Ray heads and nodes, the Studio)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
