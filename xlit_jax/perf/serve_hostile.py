"""xlit-serve under hostile clients: /health and a short request, quiet and while 8 clients send oversized
prompts, 1,000 sockets sit idle and a client sends its headers a byte a second; the server's peak RSS.

    python -m xlit_jax.perf.serve_hostile [--model=smollm2-135m] [--seconds=15] [--repo=.]

The server is the real binary (`python -m launch.serve`, run from --repo: another checkout measures another
version) on a free loopback port; the clients are threads of this process, each request a new connection.
The idle sockets are reopened as the server closes them, and the slow client starts again after its 408, so
all three stay in flight for the whole measurement.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from absl import flags

from xlit_jax.cli import run_main
from xlit_jax.io.files import markdown_table

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "model to serve")
flags.DEFINE_string("repo", ".", "the checkout whose xlit-serve runs")
flags.DEFINE_float("seconds", 30, "how long each phase measures (the slow client's 408 comes after 30 s)")
flags.DEFINE_integer("idle", 1000, "idle sockets held open")
flags.DEFINE_integer("oversized", 8, "clients sending oversized prompts, one after another")


def request(url: str, body: dict | bytes | None = None, timeout: float = 120) -> tuple[int, float]:
    """(status, seconds) of one request on a new connection."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, {"Content-Type": "application/json"}),
                                    timeout=timeout) as reply:
            reply.read()
            status = reply.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = 0
    return status, time.perf_counter() - start


def sample(base: str, seconds: float) -> dict:
    """/health every 0.1 s and short requests one after another, for `seconds`, side by side."""
    end = time.monotonic() + seconds
    short = {"model": "probe", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    health, answers = [], []

    def ask_short():
        while time.monotonic() < end:
            answers.append(request(f"{base}/v1/completions", short))

    thread = threading.Thread(target=ask_short)
    thread.start()
    while time.monotonic() < end:
        health.append(request(f"{base}/health", timeout=30))
        time.sleep(0.1)
    thread.join()
    return {"health": health, "short": answers}


class Hostile:
    """The three kinds of hostile clients, each in its own thread until `stop`."""

    def __init__(self, port: int, idle: int, oversized: int, stop):
        self.address, self.stop = ("127.0.0.1", port), stop
        self.counts = {"oversized": {}, "reopened": 0, "slow 408": 0}
        self.threads = [threading.Thread(target=self.oversized) for _ in range(oversized)]
        self.threads += [threading.Thread(target=self.idle, args=(idle,)), threading.Thread(target=self.slow)]

    def run(self) -> dict:
        for thread in self.threads:
            thread.start()
        for thread in self.threads:
            thread.join()
        return self.counts

    def oversized(self):
        body = json.dumps({"model": "probe", "prompt": "word " * 800_000, "max_tokens": 8}).encode()  # < 4 MiB
        while not self.stop.is_set():
            status, _ = request(f"http://{self.address[0]}:{self.address[1]}/v1/completions", body)
            self.counts["oversized"][status] = self.counts["oversized"].get(status, 0) + 1

    def idle(self, count: int):
        selector = selectors.DefaultSelector()  # select() cannot watch a thousand sockets
        for _ in range(count):
            selector.register(socket.create_connection(self.address), selectors.EVENT_READ)
        while not self.stop.is_set():
            for key, _ in selector.select(timeout=0.2):  # readable: the server closed it (or answered 503)
                selector.unregister(key.fileobj)
                key.fileobj.close()
                try:
                    selector.register(socket.create_connection(self.address, timeout=5), selectors.EVENT_READ)
                    self.counts["reopened"] += 1
                except OSError:
                    pass
        for key in list(selector.get_map().values()):
            key.fileobj.close()

    def slow(self):
        while not self.stop.is_set():
            with socket.create_connection(self.address) as sock:
                try:
                    for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n":
                        if self.stop.is_set():
                            return
                        sock.send(bytes([byte]))
                        time.sleep(1)
                except OSError:  # the server gave up on it
                    pass
                sock.settimeout(5)
                try:
                    self.counts["slow 408"] += sock.recv(64).startswith(b"HTTP/1.1 408")
                except OSError:
                    pass


def hostile_process(port: int, idle: int, oversized: int, stop, results) -> None:
    """The hostile clients in a process of their own, so that their threads do not slow this process's
    measuring ones (the GIL); their counts are put on `results` when `stop` is set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * idle)), hard))
    results.put(Hostile(port, idle, oversized, stop).run())


def start_server(port: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "launch.serve", f"--model={FLAGS.model}", "--model_name=probe",
                               f"--port={port}"], cwd=FLAGS.repo, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    deadline = time.monotonic() + 600
    while request(f"http://127.0.0.1:{port}/health", timeout=5)[0] != 200:
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start; see {log}")
        time.sleep(0.5)
    return server


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def summary(name: str, result: dict) -> list:
    health = [seconds * 1000 for _, seconds in result["health"]]
    short = [seconds for status, seconds in result["short"] if status == 200]
    failed = sum(status != 200 for status, _ in result["health"] + result["short"])
    return [name, f"{statistics.median(health):.1f}", f"{max(health):.1f}",
            f"{sum(h <= 50 for h in health) / len(health):.0%}", len(short),
            f"{statistics.median(short):.2f}" if short else "-", f"{max(short):.2f}" if short else "-", failed]


def main(argv):
    del argv
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    log = Path(tempfile.gettempdir()) / f"serve_hostile.{port}.log"
    server = start_server(port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        sample(base, 3)  # warm-up: the short request's shapes compile
        quiet = sample(base, FLAGS.seconds)
        quiet_rss = peak_rss_mb(server.pid)
        context = multiprocessing.get_context("spawn")
        stop, results = context.Event(), context.Queue()
        hostile = context.Process(target=hostile_process, args=(port, FLAGS.idle, FLAGS.oversized, stop, results))
        hostile.start()
        time.sleep(5)  # every hostile client in flight
        attacked = sample(base, FLAGS.seconds)
        stop.set()
        counts = results.get(timeout=120)
        hostile.join()
        rss = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(markdown_table(
        ["phase", "/health p50 ms", "/health max ms", "/health <= 50 ms", "short requests", "short p50 s",
         "short max s", "failed"],
        [summary("quiet", quiet), summary(f"{FLAGS.oversized} oversized + {FLAGS.idle} idle + 1 slow", attacked)]))
    print(f"\nserver peak RSS {quiet_rss:.0f} MB quiet, {rss:.0f} MB after; oversized prompts answered "
          f"{counts['oversized']}; idle sockets reopened after the server closed them: {counts['reopened']}; slow "
          f"client 408s: {counts['slow 408']}; server log: {log}")


if __name__ == "__main__":
    run_main(main, "serve_hostile")
