"""The decoding engine on its own thread, fed by the server's handlers: a bounded queue of jobs that the
thread moves into the engine as slots free up (between decoding calls), and each job's progress posted
back to its asyncio loop. A request never waits for a batch: it takes the next free slot."""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading

from absl import logging

from xlit_jax.decode.engine import Engine, Request
from xlit_jax.serve.protocol import APIError

IDLE_POLL_S = 0.25


@dataclasses.dataclass(eq=False)
class Job:
    """One HTTP request's decoding: the engine's `request`, and the queue on its handler's loop that receives
    (tokens so far, finish reason or None) after each decoding call, or an exception."""

    request: Request
    stops: tuple[str, ...]
    updates: asyncio.Queue
    loop: asyncio.AbstractEventLoop

    @classmethod
    def create(cls, request: Request, stops: tuple[str, ...]) -> Job:
        job = cls(request, stops, asyncio.Queue(), asyncio.get_running_loop())
        request.on_update = lambda r: job.post((len(r.output), r.finish_reason))
        return job

    def post(self, update) -> None:
        self.loop.call_soon_threadsafe(self.updates.put_nowait, update)


class Worker:
    """The engine's thread. `submit` refuses (429) when `max_queue` jobs already wait for a slot (jobs that a
    free slot will take are not waiting, though the thread may not have moved them yet). An error
    inside the loop fails the requests it concerns and the loop goes on; if the loop itself cannot go on
    (a fresh engine cannot be built), `failure` says why, every request is answered 503 and `on_failure`
    runs (the binary exits non-zero there, so a supervisor restarts it)."""

    def __init__(self, new_engine, max_queue: int, on_failure=lambda: None):
        self._new_engine = new_engine  # () -> Engine; a fresh one replaces an engine whose call failed
        self._on_failure = on_failure
        self.engine: Engine = new_engine()
        self.failure: str | None = None
        self._max_queue = max_queue
        self._jobs: queue.Queue[Job] = queue.Queue()  # bounded by submit: see queued()
        self._running: dict[int, Job] = {}  # id(request) -> job, for the jobs inside the engine
        self._stop = threading.Event()
        self.stats = {"requests": 0, "decode_calls": 0, "most_running": 0, "cancelled": 0}
        self._thread = threading.Thread(target=self._work, name="xlit-serve-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.submit_all([job])

    def submit_all(self, jobs: list[Job]) -> None:
        """The jobs of one request (its choices) enter the queue together, or none does."""
        if self.failure:
            raise self._unavailable()
        if self.queued() >= self._max_queue:  # only the event loop's thread submits: no race between two
            raise APIError(429, f"{self._max_queue} requests are already waiting for a slot; retry shortly",
                           kind="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
        for job in jobs:
            self._jobs.put_nowait(job)

    def queued(self) -> int:
        """Jobs waiting for a slot: those submitted beyond the engine's free slots. (Counting every job not yet
        moved into the engine refused requests while slots were idle: the thread moves them between calls.)"""
        engine = self.engine
        free = engine.slots.count(None) - len(engine.waiting)  # the engine's waiting requests have their slots
        return max(0, self._jobs.qsize() - free)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _unavailable(self) -> APIError:
        return APIError(503, f"the decoding engine stopped ({self.failure}); the server is restarting",
                        kind="server_error", code="engine_stopped")

    def _admit(self) -> None:
        """Move waiting jobs into the engine while it has slots for them (an idle engine: wait for one). A
        request the engine refuses is answered with the reason; the others go on."""
        free = self.engine.slots.count(None) - len(self.engine.waiting)
        while free > 0:
            try:
                job = self._jobs.get(timeout=IDLE_POLL_S) if not self.engine.busy() else self._jobs.get_nowait()
            except queue.Empty:
                return
            if job.request.cancelled:  # the client left while it waited
                continue
            try:
                self.engine.submit(job.request)
            except ValueError as e:  # the handlers check requests first: this is a check they missed
                logging.warning("a request the engine refused: %s", e)
                job.post(APIError(400, f"the engine refused the request: {e}"))
                continue
            self._running[id(job.request)] = job
            self.stats["requests"] += 1
            free -= 1

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                self._admit()
                if self.engine.busy():
                    self._decode()
        except Exception as e:  # noqa: BLE001 - reported on /health and to every client, then the process ends
            logging.exception("the decoding engine's thread stopped")
            self.failure = f"{type(e).__name__}: {e}"
            self._fail_all(self._unavailable())
            self._on_failure()

    def _decode(self) -> None:
        self.stats["decode_calls"] += 1
        self.stats["most_running"] = max(self.stats["most_running"], len(self.engine.slots) -
                                         self.engine.slots.count(None) + len(self.engine.waiting))
        try:
            self.engine.run_once()
        except Exception as e:  # noqa: BLE001 - answered to the clients, the server goes on
            logging.exception("a decoding call failed; %d requests are answered with its error", len(self._running))
            for job in self._running.values():
                job.post(e)
            self._running.clear()
            self.engine = self._new_engine()
            return
        self.stats["cancelled"] += sum(job.request.cancelled and job.request.finish_reason is None
                                       for job in self._running.values())
        self._running = {key: job for key, job in self._running.items()
                         if job.request.finish_reason is None and not job.request.cancelled}

    def _fail_all(self, error: APIError) -> None:
        for job in self._running.values():
            job.post(error)
        self._running.clear()
        while True:
            try:
                self._jobs.get_nowait().post(error)
            except queue.Empty:
                return
