"""An OpenAI-compatible HTTP server over our decoding, so a local model can be the judge the `openai`
client (and every judge tool) already speaks to.

Requests that arrive together are decoded together: a queue fills a batch up to `max_batch` requests or
waits at most `max_wait_ms` after the first one, a worker thread decodes it, and each result goes back to
its asyncio handler. Greedy output does not depend on the batch, nor does a sampled request with a `seed`
(its PRNG key is its own, folded with the step). Bad requests get OpenAI-style error bodies and never
stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import itertools
import queue
import secrets
import socket
import threading
import time
import uuid

from absl import logging
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from xlit_jax.decode.generate import Sampling
from xlit_jax.io.files import InputError

MAX_STOPS = 4  # as OpenAI's API
DISCONNECT_POLL_S = 0.25


class APIError(Exception):
    """An error answered to the client in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param=None,
                 code=None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class Message(BaseModel):
    role: str
    content: str


class _Request(BaseModel):
    """The fields both endpoints share; unknown fields are ignored, as clients send many."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default; 0 is greedy
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    repetition_penalty: float = Field(1.0, gt=0)  # an extension (as vLLM's): HF's rule, 1 = off


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None  # the newer name of max_tokens


class CompletionRequest(_Request):
    prompt: str


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


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 16
    max_wait_ms: float = 20.0
    max_queue: int = 256
    max_tokens: int = 512  # the most new tokens a request may ask for, and the default
    api_key: str | None = None


def create_app(model, name: str | None = None, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The server's app for a loaded model (xlit_jax.load's Model, with a tokenizer). The batcher's
    counters are in `app.state.batcher.stats` and in GET /health."""
    if model.tokenizer is None:
        raise InputError(f"{model.name} has no tokenizer; the server needs one to read and write text")
    name = name or model.name
    batcher = Batcher(lambda jobs: decode_jobs(model, jobs), config.max_batch, config.max_wait_ms,
                      config.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

    app = FastAPI(title="xlit-serve", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(APIError)
    async def api_error(_request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request, e: RequestValidationError):
        return APIError(400, describe_validation_error(e.errors()), param=_param(e.errors())).response()

    @app.exception_handler(HTTPException)
    async def http_error(_request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return APIError(e.status_code, str(e.detail), kind=kind).response()

    @app.exception_handler(Exception)
    async def internal_error(_request, e: Exception):
        logging.exception("request failed")
        return APIError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error").response()

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), config.api_key.encode()):
            raise APIError(401, "incorrect or missing API key (send it as 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    def job_for(body: _Request, prompt_ids: list[int], max_tokens: int | None) -> Job:
        if body.model != name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server has {name!r}",
                           kind="not_found_error", param="model", code="model_not_found")
        if body.stream:
            raise APIError(400, "stream=true is not supported; send the request without streaming",
                           param="stream")
        if body.n != 1:
            raise APIError(400, f"n={body.n}: only n=1 is supported", param="n")
        stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stops) > MAX_STOPS or not all(stops):
            raise APIError(400, f"stop: at most {MAX_STOPS} non-empty strings", param="stop")
        room = model.config.max_position_embeddings - len(prompt_ids)
        if max_tokens is not None and not 1 <= max_tokens <= config.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is outside 1..{config.max_tokens}", param="max_tokens")
        max_tokens = max_tokens or max(1, min(config.max_tokens, room))  # no room: refused just below
        if max_tokens > room:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; with max_tokens={max_tokens} that "
                           f"exceeds the model's {model.config.max_position_embeddings} positions",
                           param="messages", code="context_length_exceeded")
        seed = body.seed % (1 << 31) if body.seed is not None else secrets.randbits(31)  # PRNGKey's range
        return Job(prompt_ids, max_tokens, body.repetition_penalty, Sampling(body.temperature, body.top_p, seed),
                   stops, asyncio.get_running_loop().create_future())

    async def run(job: Job, request: Request) -> Completion | None:
        """The job's result, or None if the client disconnected first (its job is then dropped)."""
        batcher.submit(job)
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=DISCONNECT_POLL_S)
            if done:
                return job.future.result()
            if await request.is_disconnected():
                job.future.cancel()
                return None

    def encode(prompt) -> list[int]:
        try:
            return model.encode(prompt)
        except Exception as e:  # noqa: BLE001 - e.g. a chat template refusing a role order
            raise APIError(400, f"cannot encode the prompt: {e}") from None

    def usage(job: Job, result: Completion) -> dict:
        return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": result.completion_tokens,
                "total_tokens": len(job.prompt_ids) + result.completion_tokens}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatRequest, request: Request):
        messages = [m.model_dump() for m in body.messages]
        job = job_for(body, encode(messages), body.max_completion_tokens or body.max_tokens)
        result = await run(job, request)
        if result is None:
            return Response(status_code=499)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": name, "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                                            "finish_reason": result.finish_reason, "logprobs": None}],
                "usage": usage(job, result)}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request):
        job = job_for(body, encode(body.prompt), body.max_tokens)
        result = await run(job, request)
        if result is None:
            return Response(status_code=499)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": name, "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason,
                                            "logprobs": None}],
                "usage": usage(job, result)}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "xlit_jax"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "queued": batcher.queued(), **batcher.stats}

    return app


def describe_validation_error(errors) -> str:
    """One line from pydantic's errors: malformed JSON, or the first bad or missing field."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    field = _param(errors)
    return f"field {field!r}: {first['msg']}" if field else f"the body: {first['msg']}"


def _param(errors) -> str | None:
    if errors[0].get("type") == "json_invalid":
        return None
    location = [str(part) for part in errors[0].get("loc", ()) if part != "body"]
    return ".".join(location) or None


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1"):
    """Run `app` on a free port of `host` in a background thread; yields the base URL (…/v1)."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
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
