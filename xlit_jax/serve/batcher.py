"""Requests that arrive together are decoded together: a bounded queue of jobs, and one worker thread that
takes the first job, then whatever arrives within max_wait_ms up to max_batch, and decodes them with
`generate_ids`. Each result goes back to its asyncio handler through the job's future."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import queue
import threading
import time

from absl import logging

from xlit_jax.decode.generate import Sampling
from xlit_jax.serve.protocol import APIError

DISCONNECT_POLL_S = 0.25


@dataclasses.dataclass
class Job:
    """One request on its way through the queue; the worker thread resolves `future` on its event loop."""

    prompt_ids: list[int]
    max_tokens: int
    repetition_penalty: float
    sampling: Sampling
    stops: tuple[str, ...]
    future: asyncio.Future

    def resolve(self, result=None, error: BaseException | None = None) -> None:
        def settle():
            if self.future.done():  # the client left and its handler cancelled the wait
                return
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)

        self.future.get_loop().call_soon_threadsafe(settle)


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop sequence) or "length"


class Batcher:
    """A bounded queue of jobs and the worker thread that decodes them in batches."""

    def __init__(self, decode, max_batch: int, max_wait_ms: float, max_queue: int):
        self._decode = decode  # list[Job] -> list[Completion]
        self._jobs: queue.Queue[Job] = queue.Queue(max_queue)
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._stop = threading.Event()
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}
        self._thread = threading.Thread(target=self._work, name="xlit-serve-decoder", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise APIError(429, f"{self._jobs.maxsize} requests are already waiting; retry shortly",
                           kind="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None

    def queued(self) -> int:
        return self._jobs.qsize()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _take(self) -> list[Job]:
        """The first job to come, then whatever else arrives within max_wait_ms, up to max_batch."""
        try:
            batch = [self._jobs.get(timeout=DISCONNECT_POLL_S)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_batch:
            try:
                batch.append(self._jobs.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        return [job for job in batch if not job.future.done()]  # clients that left are not decoded

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = self._take()
            if not batch:
                continue
            self.stats["requests"] += len(batch)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            try:
                results = self._decode(batch)
            except Exception as e:  # noqa: BLE001 - answered to the clients, the server goes on
                logging.exception("decoding a batch of %d failed", len(batch))
                for job in batch:
                    job.resolve(error=e)
                continue
            for job, result in zip(batch, results):
                job.resolve(result)


def decode_jobs(model, jobs: list[Job]) -> list[Completion]:
    """One generate_ids call per (max_tokens, repetition_penalty) group, all rows of a group together."""
    results: dict[int, Completion] = {}
    key = lambda i: (jobs[i].max_tokens, jobs[i].repetition_penalty)  # noqa: E731
    for (max_tokens, penalty), group in itertools.groupby(sorted(range(len(jobs)), key=key), key):
        group = list(group)
        outputs = model.generate_ids([jobs[i].prompt_ids for i in group], max_tokens, penalty,
                                     batch_size=len(group), sampling=[jobs[i].sampling for i in group])
        for i, ids in zip(group, outputs):
            results[i] = finish(model.tokenizer, ids, jobs[i].max_tokens, jobs[i].stops)
    return [results[i] for i in range(len(jobs))]


def finish(tokenizer, ids: list[int], max_tokens: int, stops: tuple[str, ...]) -> Completion:
    """The text of `ids` (EOS already stripped) cut before the first stop sequence. Completion tokens are
    those generated up to where decoding would have stopped: EOS counts, and with a stop sequence, the
    fewest tokens whose text contains it."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [(text.find(stop), stop) for stop in stops if stop in text]
    if hits:
        position, _ = min(hits)
        return Completion(text[:position], _tokens_reaching(tokenizer, ids, stops), "stop")
    if len(ids) < max_tokens:  # the row produced EOS, which generate_ids strips
        return Completion(text, len(ids) + 1, "stop")
    return Completion(text, max_tokens, "length")


def _tokens_reaching(tokenizer, ids: list[int], stops: tuple[str, ...]) -> int:
    """The smallest k such that the text of ids[:k] contains a stop (binary search: it only grows)."""
    low, high = 1, len(ids)
    while low < high:
        middle = (low + high) // 2
        if any(stop in tokenizer.decode(ids[:middle], skip_special_tokens=True) for stop in stops):
            high = middle
        else:
            low = middle + 1
    return low
