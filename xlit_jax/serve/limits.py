"""What the server answers and how long it waits: its Host names and its connection limits (no imports of
weight, so the binary's flags can name their defaults)."""

from __future__ import annotations

import dataclasses

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def host_name(host: str) -> str:
    """A host as a Host header names it, without the port: lower case, an IPv6 address in brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1]
    if host.count(":") > 1:  # a bare IPv6 address, as --host gives it
        return f"[{host}]"
    return host.partition(":")[0]


@dataclasses.dataclass(frozen=True)
class Limits:
    """On connections (serve/server.py applies them)."""

    max_connections: int = 4096  # open at once; more are answered 503 and closed
    idle_timeout: float = 5.0  # seconds a connection may stay open with no request under way (uvicorn's keep-alive)
    request_timeout: float = 30.0  # seconds for a request's headers and body to arrive
