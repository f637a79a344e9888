"""Log-probs for the server's `echo` and `logprobs`: token sequences scored on a thread of their own by
decode/loglik.py's `token_logprobs_ids` (one fp32 forward pass over packed sequences, a shared prefix once), the
computation behind `Model.loglikelihood`. Every job waiting when the thread is free goes into the same call,
up to a token budget, so concurrent requests' prompts share packs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading

from absl import logging

from xlit_jax.decode.loglik import TokenScores, token_logprobs_ids
from xlit_jax.serve.protocol import APIError
from xlit_jax.serve.worker import IDLE_POLL_S


class Scorer:
    """`await score(sequences, top_k)`: TokenScores per sequence. At most `max_waiting` jobs wait (more are
    answered 429); a call takes the waiting jobs up to `batch_tokens` tokens (always at least one job)."""

    def __init__(self, model, max_waiting: int, batch_tokens: int):
        self.model, self.max_waiting, self.batch_tokens = model, max_waiting, batch_tokens
        self._jobs: queue.Queue = queue.Queue()
        self._next = None  # a job taken from the queue that did not fit the last call's budget
        self._stop = threading.Event()
        self.stats = {"scoring_calls": 0, "scored_sequences": 0}
        self._thread = threading.Thread(target=self._work, name="xlit-serve-scoring", daemon=True)
        self._thread.start()

    async def score(self, sequences: list[list[int]], top_k: int) -> list[TokenScores]:
        if self._jobs.qsize() >= self.max_waiting:
            raise APIError(429, f"{self.max_waiting} scoring requests are already waiting; retry shortly",
                           kind="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put_nowait((sequences, top_k, future))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _take(self) -> list:
        """The next call's jobs: the first waiting one, then others while their tokens fit the budget."""
        first = self._next
        self._next = None
        if first is None:
            try:
                first = self._jobs.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                return []
        jobs, tokens = [first], sum(map(len, first[0]))
        while tokens < self.batch_tokens:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            size = sum(map(len, job[0]))
            if tokens + size > self.batch_tokens:
                self._next = job
                break
            jobs.append(job)
            tokens += size
        return [job for job in jobs if job[2].set_running_or_notify_cancel()]  # a client that left: dropped

    def _work(self) -> None:
        while not self._stop.is_set():
            jobs = self._take()
            if not jobs:
                continue
            sequences = [s for job in jobs for s in job[0]]
            try:
                scores = token_logprobs_ids(self.model.params, self.model.config, sequences,
                                            top_k=max(1, max(job[1] for job in jobs)), attention=self.model.attention)
            except Exception as e:  # noqa: BLE001 - answered to the requests of this call; the thread goes on
                logging.exception("a scoring call failed; %d requests are answered with its error", len(jobs))
                for job in jobs:
                    job[2].set_exception(e)
                continue
            self.stats["scoring_calls"] += 1
            self.stats["scored_sequences"] += len(sequences)
            start = 0
            for job_sequences, top_k, future in jobs:
                mine = scores[start:start + len(job_sequences)]
                start += len(job_sequences)
                future.set_result([TokenScores(s.logprobs, s.top_ids[:, :top_k], s.top_logprobs[:, :top_k])
                                   for s in mine])
