"""Running the app under uvicorn with limits on connections (every client, xlit-serve's and the tests' alike),
and on a free loopback port in a background thread (tests, perf scripts).

uvicorn holds a connection that sends nothing forever, answers headers sent at a byte a second, and accepts
connections until the process runs out of file descriptors (then even /health fails, with nothing logged).
Here a connection is closed after `idle_timeout` with no request under way, a request's headers and body
must arrive within `request_timeout` (else 408), and past `max_connections` open ones a new connection is
answered 503 and closed, with a log line.
"""

from __future__ import annotations

import contextlib
import functools
import json
import resource
import socket
import threading
import time

import h11
from absl import logging
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from xlit_jax.serve.limits import Limits
from xlit_jax.serve.protocol import APIError

# What a server process keeps open besides its connections: weights, the compilation cache, logs, threads.
RESERVED_FILES = 256


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit, where allowed (the default soft 1,024
    is below what a server with many clients needs); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as e:  # a container may forbid it: keep the soft limit
            logging.warning("cannot raise the open files limit from %d to %d: %s", soft, wanted, e)
    return soft


def connection_cap(wanted: int) -> int:
    """`wanted` connections at most, fewer where the open files limit leaves no room for them (said once)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = wanted if soft == resource.RLIM_INFINITY else max(1, soft - RESERVED_FILES)
    if room < wanted:
        logging.warning("at most %d connections (open files limit %d, less %d for the server's own files), "
                        "not %d: raise the hard limit (ulimit -Hn) for more", room, soft, RESERVED_FILES, wanted)
    return min(wanted, room)


def _raw_response(status: int, reason: str, error: APIError) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, written below h11 (no request may have been read)."""
    body = json.dumps(error.body()).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits of `Limits` (see the module's docstring)."""

    capped = False  # whether the last new connection was refused: the cap is logged once per episode

    def __init__(self, *args, limits: Limits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.deadline = None  # closes the connection unless the request under way has arrived whole
        self.ending = False  # answered below h11 (503, 408): what the client still sends is dropped

    def connection_made(self, transport) -> None:
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(transport)
            return
        LimitedH11Protocol.capped = False
        super().connection_made(transport)
        # uvicorn's keep-alive timer starts only after a first answer: a silent new connection stayed forever
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self._arm()

    def _refuse(self, transport) -> None:
        self.transport = transport
        if not LimitedH11Protocol.capped:
            LimitedH11Protocol.capped = True
            logging.warning("%d connections are open, the limit (xlit-serve --max_connections): new connections "
                            "are answered 503 until some close", len(self.connections))
        error = APIError(503, f"the server has {len(self.connections)} connections open, its limit; retry shortly",
                         kind="server_error", code="too_many_connections")
        self._end(_raw_response(503, "Service Unavailable", error))

    def _end(self, response: bytes) -> None:
        """Answer `response` and close. Closing at once, with the client's request unread, would reset the
        connection and lose the answer: end our side, drop what comes, and close when the client does or
        after a second (the file is held no longer)."""
        self.ending = True
        self._disarm()
        self._unset_keepalive_if_required()
        self.transport.write(response)
        self.transport.write_eof()
        self.loop.call_later(1.0, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if not self.ending:
            super().data_received(data)

    def _arm(self) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(self.limits.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):  # the request is in: the app takes over
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # the next request on this connection gets its own deadline
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self.deadline = None
        if self.ending or self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            return
        if self.conn.their_state is h11.SEND_BODY and self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # answered already (a refusal before the body): the body is not waited for
            return
        error = APIError(408, f"the request did not arrive within {self.limits.request_timeout:g} s",
                         code="request_timeout")
        self._end(_raw_response(408, "Request Timeout", error))


def uvicorn_config(app: FastAPI, limits: Limits = Limits(), log_level: str = "info"):
    """uvicorn's config for `app` with `limits` on its connections."""
    import uvicorn

    return uvicorn.Config(app, http=functools.partial(LimitedH11Protocol, limits=limits),
                          timeout_keep_alive=limits.idle_timeout, log_level=log_level)


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", limits: Limits = Limits()):
    """Run `app` on a free port of `host` in a background thread; yields the base URL (…/v1)."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn_config(app, limits, "warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
