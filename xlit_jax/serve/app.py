"""An OpenAI-compatible HTTP server over our decoding engine, so a local model can be the judge the `openai`
client (and every judge tool) already speaks to.

Each request takes the next free slot of the running engine (serve/worker.py) and is answered when its
sequence ends, or streamed (`stream: true`, server-sent events) as it decodes. Greedy output does not
depend on what else runs, nor does a sampled request with a `seed` (its PRNG key is its own, folded with
its step). Tokenizing and detokenizing run in threads, off the event loop; bodies over `max_body_bytes` are
refused (413) without being kept, and a prompt that cannot fit the model is refused before it is tokenized.
Before any body is read, a Host header that is not one of the server's names is refused (421) and, with an
API key, a request without it (401). Bad requests get OpenAI-style error bodies and never stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging as std_logging
import secrets
import time
import uuid

from absl import logging
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from xlit_jax.decode.engine import DECODE_STEPS, Engine
from xlit_jax.decode.engine import Request as EngineRequest
from xlit_jax.decode.sampling import Sampling
from xlit_jax.errors import InputError
from xlit_jax.io.tokenizer import longest_token, prompt_too_long
from xlit_jax.serve import protocol
from xlit_jax.serve.limits import LOOPBACK_HOSTS, host_name
from xlit_jax.serve.protocol import MAX_STOPS, APIError, ChatRequest, CompletionRequest, RequestBody
from xlit_jax.serve.text import Completion, finish, settled, stop_at
from xlit_jax.serve.worker import IDLE_POLL_S, Job, Worker


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    slots: int = 16  # sequences decoded at once
    max_queue: int = 256  # requests waiting for a slot at most; more are answered 429
    max_tokens: int = 512  # the most new tokens a request may ask for, and the default
    max_len: int | None = None  # cache columns per slot (default: any request the model's positions allow)
    max_body_bytes: int = 4 << 20
    steps: int = DECODE_STEPS  # decoding steps per engine call
    api_key: str | None = None
    hosts: tuple[str, ...] = LOOPBACK_HOSTS  # the Host header names answered (host_name's form); "*": any


class ClientGone(Exception):
    """The client disconnected before its answer was complete."""


class Service:
    """What the routes do: check a request, run it through the worker, and shape the answer."""

    def __init__(self, model, name: str, config: ServeConfig, on_failure=lambda: None):
        self.model, self.name, self.config = model, name, config
        self.worker = Worker(lambda: Engine(model.params, model.config, attention=model.attention, slots=config.slots,
                                            max_len=config.max_len, steps=config.steps), config.max_queue, on_failure)
        self.token_chars = longest_token(model.tokenizer)
        self.prompt_tokens = min(model.config.max_position_embeddings, self.worker.engine.max_len)

    async def encode(self, prompt) -> list[int]:
        problem = prompt_too_long(prompt, self.prompt_tokens, self.token_chars)  # before a long tokenization
        if problem:
            raise APIError(400, problem, param="prompt" if isinstance(prompt, str) else "messages",
                           code="context_length_exceeded")
        try:
            return await asyncio.to_thread(self.model.encode, prompt)
        except Exception as e:  # noqa: BLE001 - e.g. a chat template refusing a role order
            raise APIError(400, f"cannot encode the prompt: {e}") from None

    async def decode(self, ids: list[int]) -> str:
        return await asyncio.to_thread(self.model.tokenizer.decode, ids, skip_special_tokens=True)

    def job(self, body: RequestBody, prompt_ids: list[int], max_tokens: int | None) -> Job:
        if body.model != self.name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server has {self.name!r}",
                           kind="not_found_error", param="model", code="model_not_found")
        if body.n != 1:
            raise APIError(400, f"n={body.n}: only n=1 is supported", param="n")
        stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stops) > MAX_STOPS or not all(stops):
            raise APIError(400, f"stop: at most {MAX_STOPS} non-empty strings", param="stop")
        if not prompt_ids:
            raise APIError(400, "the prompt is empty: it encodes to no tokens", param="prompt")
        limit, positions = self.config.max_tokens, self.model.config.max_position_embeddings
        if max_tokens is not None and not 1 <= max_tokens <= limit:
            raise APIError(400, f"max_tokens={max_tokens} is outside 1..{limit}", param="max_tokens")
        max_tokens = max_tokens or max(1, min(limit, positions - len(prompt_ids)))  # no room: refused below
        problem = self.worker.engine.problem(len(prompt_ids), max_tokens)
        if problem:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; with max_tokens={max_tokens} that "
                           f"{problem}", param="messages", code="context_length_exceeded")
        seed = body.seed % (1 << 31) if body.seed is not None else secrets.randbits(31)  # PRNGKey's range
        request = EngineRequest(prompt_ids, max_tokens, body.repetition_penalty,
                                Sampling(body.temperature, body.top_p, seed))
        return Job.create(request, stops)

    async def progress(self, job: Job, client: Request | None = None):
        """(ids so far, finish reason or None) after each engine call that reached the job, until it ends.
        The job is cancelled, freeing its slot, when the consumer stops early or `client` disconnects."""
        checked = time.monotonic()
        try:
            while True:
                try:
                    update = await asyncio.wait_for(job.updates.get(), IDLE_POLL_S)
                except TimeoutError:
                    update = None
                if client is not None and time.monotonic() - checked >= IDLE_POLL_S:
                    checked = time.monotonic()
                    if await client.is_disconnected():
                        raise ClientGone
                if update is None:
                    continue
                if isinstance(update, BaseException):
                    raise update
                count, reason = update
                yield job.request.output[:count], reason
                if reason is not None:
                    return
        finally:
            job.request.cancelled = True

    async def complete(self, job: Job, client: Request) -> Completion:
        """The whole answer; decoding stops at the first stop sequence."""
        ids, reason = [], None
        async with contextlib.aclosing(self.progress(job, client)) as updates:
            async for ids, reason in updates:
                if reason is None and job.stops and stop_at(await self.decode(ids), job.stops) is not None:
                    break
        return await asyncio.to_thread(finish, self.model.tokenizer, ids, reason or "length", job.stops)

    async def events(self, job: Job, chat: bool):
        """The answer as server-sent events: text as it settles, then the finish reason with the usage."""
        response_id, created = _response_id(chat), int(time.time())
        ids, reason, sent = [], None, 0
        async with contextlib.aclosing(self.progress(job)) as updates:
            async for ids, reason in updates:
                text = await self.decode(ids)
                if reason is not None or stop_at(text, job.stops) is not None:
                    break
                end = settled(text, job.stops)
                if end > sent:
                    choice = protocol.choice(chat, text[sent:end], None, delta=True, role=sent == 0)
                    yield protocol.server_sent_event(protocol.response_body(chat, response_id, created, self.name,
                                                                            choice, None, chunk=True))
                    sent = end
        result = await asyncio.to_thread(finish, self.model.tokenizer, ids, reason or "length", job.stops)
        choice = protocol.choice(chat, result.text[sent:], result.finish_reason, delta=True, role=sent == 0)
        yield protocol.server_sent_event(protocol.response_body(chat, response_id, created, self.name, choice,
                                                                self.usage(job, result), chunk=True))
        yield protocol.server_sent_event("[DONE]")

    def usage(self, job: Job, result: Completion) -> dict:
        prompt = len(job.request.prompt)
        return {"prompt_tokens": prompt, "completion_tokens": result.completion_tokens,
                "total_tokens": prompt + result.completion_tokens}

    async def answer(self, body: RequestBody, prompt_ids: list[int], max_tokens: int | None, client: Request,
                     chat: bool):
        job = self.job(body, prompt_ids, max_tokens)
        self.worker.submit(job)
        if body.stream:
            return StreamingResponse(self.events(job, chat), media_type="text/event-stream")
        try:
            result = await self.complete(job, client)
        except ClientGone:
            return Response(status_code=499)
        choice = protocol.choice(chat, result.text, result.finish_reason)
        return protocol.response_body(chat, _response_id(chat), int(time.time()), self.name, choice,
                                      self.usage(job, result))


def _response_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


# An over-size body up to this many bytes is read and dropped before the 413 goes out: a client still
# sending would otherwise meet a reset connection (closing a socket with unread data resets it) and never
# read the answer. Beyond it the connection is closed unread.
DRAIN_BYTES = 64 << 20


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413, from its Content-Length before any of
    it is kept, or as soon as a body without one grows past the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _refusal(self, size: str) -> HTTPException:
        return HTTPException(413, f"the request body has {size} bytes; this server takes at most {self.limit}")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            refusal = self._refusal(declared.decode())
            await drain(receive)
            return await APIError(413, refusal.detail).response()(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                if message.get("more_body"):
                    await drain(receive)
                raise self._refusal(f"more than {self.limit}")
            return message

        await self.app(scope, limited_receive, send)


async def drain(receive) -> None:
    """Read and drop the rest of a request body, up to DRAIN_BYTES."""
    dropped = 0
    while dropped <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return
        dropped += len(message.get("body", b""))


def key_matches(authorization: bytes | None, key: str) -> bool:
    """Whether a raw Authorization header is `Bearer KEY`, compared in constant time on the bytes as sent (a
    non-ASCII key arrives as its UTF-8 bytes; decoding the header, as Starlette does, as Latin-1 and
    re-encoding it as UTF-8 would never match)."""
    scheme, _, given = (authorization or b"").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), key.encode("utf-8"))


OPEN_PATHS = ("/health",)  # answered without the key (a supervisor's probe), revealing no more than up or down


class Gate:
    """ASGI middleware, first in line, before any body is read: a Host header not among `hosts` is refused
    (421: a web page at a name that resolves to 127.0.0.1, DNS rebinding, reaches a loopback server with its
    own name as Host), and with an `api_key`, a request without it (401), on every path but OPEN_PATHS, the
    API docs included."""

    def __init__(self, app, hosts: tuple[str, ...], api_key: str | None):
        self.app, self.hosts, self.api_key = app, frozenset(hosts), api_key

    def refusal(self, scope) -> APIError | None:
        headers = dict(scope["headers"])
        host = headers.get(b"host")  # HTTP/1.0 may leave it out; browsers, the rebinding threat, never do
        if host is not None and "*" not in self.hosts and host_name(host.decode("latin-1")) not in self.hosts:
            return APIError(421, f"this server does not answer to the host {host.decode('latin-1')!r}; its names: "
                            f"{', '.join(sorted(self.hosts))} (xlit-serve --allowed_hosts adds more)",
                            code="host_not_allowed")
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and not key_matches(
                headers.get(b"authorization"), self.api_key):
            return APIError(401, "incorrect or missing API key (send it as 'Authorization: Bearer KEY')",
                            code="invalid_api_key")
        return None

    async def __call__(self, scope, receive, send):
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            return await self.app(scope, receive, send)
        await refusal.response()(scope, receive, send)


class NoQueryStrings(std_logging.Filter):
    """uvicorn's access log without query strings: a client may put a key or a prompt there."""

    def filter(self, record) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:  # (client, method, path?query, version, status)
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).partition("?")[0], version, status)
        return True


def quiet_access_log() -> None:
    access = std_logging.getLogger("uvicorn.access")
    if not any(isinstance(f, NoQueryStrings) for f in access.filters):
        access.addFilter(NoQueryStrings())


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request, e: RequestValidationError):
        errors = e.errors()
        return APIError(400, protocol.describe_validation_error(errors), param=protocol.error_param(errors)).response()

    @app.exception_handler(HTTPException)
    async def http_error(_request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return APIError(e.status_code, str(e.detail), kind=kind).response()

    @app.exception_handler(Exception)
    async def internal_error(_request, e: Exception):
        logging.exception("request failed")
        return APIError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error").response()


def add_routes(app: FastAPI, service: Service) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        prompt_ids = await service.encode([m.model_dump() for m in body.messages])
        return await service.answer(body, prompt_ids, body.max_completion_tokens or body.max_tokens, request, True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await service.answer(body, await service.encode(body.prompt), body.max_tokens, request, False)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": service.name, "object": "model", "created": 0,
                                            "owned_by": "xlit_jax"}]}

    @app.get("/health")
    async def health(request: Request):
        worker, key = service.worker, service.config.api_key
        body = {"status": "failed" if worker.failure else "ok"}
        if key is None or key_matches(dict(request.scope["headers"]).get(b"authorization"), key):  # the details
            body |= ({"model": service.name, "error": worker.failure} if worker.failure else  # for key holders only
                     {"model": service.name, "queued": worker.queued(), **worker.stats})
        return JSONResponse(body, status_code=503 if worker.failure else 200)


def create_app(model, name: str | None = None, config: ServeConfig = ServeConfig(),
               on_failure=lambda: None) -> FastAPI:
    """The server's app for a loaded model (xlit_jax.load's Model, with a tokenizer). The worker's
    counters are in `app.state.worker.stats` and in GET /health; `on_failure` runs if the decoding engine's
    thread stops (serve/worker.py)."""
    if model.tokenizer is None:
        raise InputError(f"{model.name} has no tokenizer; the server needs one to read and write text")
    service = Service(model, name or model.name, config, on_failure)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        service.worker.close()

    app = FastAPI(title="xlit-serve", lifespan=lifespan)
    app.state.worker = service.worker
    add_error_handlers(app)
    add_routes(app, service)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(Gate, hosts=config.hosts, api_key=config.api_key)  # added last: runs first
    quiet_access_log()
    return app
