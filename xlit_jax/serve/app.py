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
import functools
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
from xlit_jax.serve.protocol import (
    MAX_CHOICES,
    MAX_STOPS,
    APIError,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    RequestBody,
    TokenizeRequest,
)
from xlit_jax.serve.scoring import Scorer
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
    max_request_tokens: int = 1 << 18  # one request's prompt and new tokens over all its choices, at most
    score_batch_tokens: int = 8192  # tokens one scoring call (echo, logprobs) takes from waiting requests, at most


class ClientGone(Exception):
    """The client disconnected before its answer was complete."""


@dataclasses.dataclass(frozen=True)
class Generated:
    """One choice's generation: the ids decoded (EOS stripped), the EOS id that ended it, and the answer."""

    ids: list[int]
    stop_token: int | None
    completion: Completion

    def scored_ids(self) -> list[int]:
        """The tokens its log-probs are given for: those counted as completion tokens, EOS included."""
        ended = [self.stop_token] if self.stop_token is not None else []
        return (self.ids + ended)[:self.completion.completion_tokens]


class Service:
    """What the routes do: check a request, run it through the worker, and shape the answer."""

    def __init__(self, model, name: str, config: ServeConfig, on_failure=lambda: None):
        self.model, self.name, self.config = model, name, config
        self.worker = Worker(lambda: Engine(model.params, model.config, attention=model.attention, slots=config.slots,
                                            max_len=config.max_len, steps=config.steps), config.max_queue, on_failure)
        self.scorer = Scorer(model, config.max_queue, config.score_batch_tokens)
        self.token_chars = longest_token(model.tokenizer)
        self.prompt_tokens = min(model.config.max_positions, self.worker.engine.max_len)
        self.vocab = min(model.config.vocab_size, len(model.tokenizer))  # ids a prompt may hold: 0..vocab-1
        self.token_text = functools.lru_cache(1 << 16)(
            lambda i: model.tokenizer.decode([i], skip_special_tokens=False))

    def check_model(self, body) -> None:
        if body.model != self.name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server has {self.name!r}",
                           kind="not_found_error", param="model", code="model_not_found")

    async def prompt_ids(self, prompts: list[str | list[int]]) -> list[list[int]]:
        """Token ids of a completion request's prompts: token ids checked against the model's positions and
        vocabulary, strings' lengths checked before they are tokenized (in one thread)."""
        where = (lambda i: "the prompt") if len(prompts) == 1 else (lambda i: f"prompt[{i}]")
        positions = self.model.config.max_positions
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                problem = prompt_too_long(prompt, self.prompt_tokens, self.token_chars)
                if problem:
                    raise APIError(400, f"{where(i)}: {problem}", param="prompt", code="context_length_exceeded")
                continue
            if len(prompt) > positions:
                raise APIError(400, f"{where(i)} has {len(prompt)} tokens: more than the model's {positions} "
                               "positions", param="prompt", code="context_length_exceeded")
            bad = next((t for t in prompt if not 0 <= t < self.vocab), None)
            if bad is not None:
                raise APIError(400, f"{where(i)}: token id {bad} is outside the vocabulary (0..{self.vocab - 1})",
                               param="prompt")
        texts = [p for p in prompts if isinstance(p, str)]
        if texts:
            try:
                encoded = iter(await asyncio.to_thread(lambda: [self.model.encode(t) for t in texts]))
            except Exception as e:  # noqa: BLE001
                raise APIError(400, f"cannot encode the prompt: {e}") from None
        ids = [next(encoded) if isinstance(p, str) else list(p) for p in prompts]
        for i, tokens in enumerate(ids):
            if not tokens:
                raise APIError(400, f"{where(i)} is empty: it encodes to no tokens", param="prompt")
        return ids

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

    def stops(self, body: RequestBody) -> tuple[str, ...]:
        stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stops) > MAX_STOPS or not all(stops):
            raise APIError(400, f"stop: at most {MAX_STOPS} non-empty strings", param="stop")
        return stops

    def new_tokens(self, max_tokens: int | None, prompt_ids: list[int], zero: bool = False) -> int:
        """The new tokens a prompt gets: `max_tokens` (0 only where `zero` allows it), or by default as many as
        the model's positions leave, up to --max_tokens; refused (400) where the engine cannot run it."""
        if not prompt_ids:
            raise APIError(400, "the prompt is empty: it encodes to no tokens", param="prompt")
        limit, positions = self.config.max_tokens, self.model.config.max_positions
        if max_tokens is not None and not (0 if zero else 1) <= max_tokens <= limit:
            hint = "" if zero else " (0, with echo, scores the prompt only)"
            raise APIError(400, f"max_tokens={max_tokens} is outside {0 if zero else 1}..{limit}{hint}",
                           param="max_tokens")
        if max_tokens == 0:
            return 0
        max_tokens = max_tokens or max(1, min(limit, positions - len(prompt_ids)))  # no room: refused below
        problem = self.worker.engine.problem(len(prompt_ids), max_tokens)
        if problem:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; with max_tokens={max_tokens} that "
                           f"{problem}", param="messages", code="context_length_exceeded")
        return max_tokens

    def job(self, body: RequestBody, prompt_ids: list[int], max_tokens: int, stops: tuple[str, ...],
            choice: int = 0) -> Job:
        """The engine's job for one choice; choice j of a seeded request samples with seed + j."""
        seed = (body.seed + choice) % (1 << 31) if body.seed is not None else secrets.randbits(31)  # PRNGKey's
        request = EngineRequest(prompt_ids, max_tokens, body.repetition_penalty,
                                Sampling(body.temperature, body.top_p, seed))
        return Job.create(request, stops)

    def check_choices(self, body: RequestBody, ids: list[list[int]], new: list[int]) -> None:
        """Bounds on a whole request: MAX_CHOICES choices, --max_request_tokens tokens; a stream has one."""
        choices = len(ids) * body.n
        if choices > MAX_CHOICES:
            raise APIError(400, f"{len(ids)} prompts x n={body.n} = {choices} choices; at most {MAX_CHOICES} in one "
                           "request", param="n")
        tokens = body.n * sum(len(p) + k for p, k in zip(ids, new))
        if tokens > self.config.max_request_tokens:
            raise APIError(400, f"the request asks for {tokens} tokens (prompts and max_tokens over {choices} "
                           f"choices); this server takes at most {self.config.max_request_tokens} in one request",
                           param="max_tokens", code="request_too_large")
        scored = getattr(body, "echo", False) or body.logprobs is not None and body.logprobs is not False
        if body.stream and (choices > 1 or scored):
            raise APIError(400, "stream: one prompt, n=1, without echo or logprobs (ask without stream for those)",
                           param="stream")

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

    async def complete(self, job: Job, client: Request) -> Generated:
        """The whole answer; decoding stops at the first stop sequence."""
        ids, reason = [], None
        async with contextlib.aclosing(self.progress(job, client)) as updates:
            async for ids, reason in updates:
                if reason is None and job.stops and stop_at(await self.decode(ids), job.stops) is not None:
                    break
        completion = await asyncio.to_thread(finish, self.model.tokenizer, ids, reason or "length", job.stops)
        return Generated(list(ids), job.request.stop_token if reason == "stop" else None, completion)

    async def generate(self, jobs: list[Job], client: Request) -> list[Generated]:
        """Every job's answer (submitted together); if one fails or the client leaves, the others are cancelled."""
        self.worker.submit_all(jobs)
        tasks = [asyncio.ensure_future(self.complete(job, client)) for job in jobs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task, job in zip(tasks, jobs):
                if not task.done():
                    task.cancel()
                    job.request.cancelled = True

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

    async def answer(self, body: RequestBody, prompts: list[str | list[int]] | None, ids: list[list[int]],
                     max_tokens: int | None, client: Request, chat: bool):
        """A completion's or a chat's answer: its choices, one per prompt and n, generated by the engine and, with
        `echo` or `logprobs`, scored in one pass of the scoring thread. `prompts` (completions): the prompts as
        sent, for `echo`."""
        self.check_model(body)
        stops = self.stops(body)
        echo = not chat and body.echo
        k = (body.top_logprobs or 0 if body.logprobs else None) if chat else body.logprobs
        new = [self.new_tokens(max_tokens, p, zero=echo) for p in ids]
        self.check_choices(body, ids, new)
        if body.stream:
            job = self.job(body, ids[0], new[0], stops)
            self.worker.submit(job)
            return StreamingResponse(self.events(job, chat), media_type="text/event-stream")
        # the harness's scoring request (echo, logprobs, one greedy token): its token is the scoring pass's argmax
        one_pass = k is not None and echo and set(new) == {1} and body.temperature == 0 and body.repetition_penalty == 1
        slots = [(p, j) for p in range(len(ids)) for j in range(body.n)]  # choice i * n + j: prompt i's j-th
        generated: list[Generated | None] = [None] * len(slots)
        if not one_pass:
            zero = [c for c, (p, _) in enumerate(slots) if new[p] == 0]
            for c in zero:
                generated[c] = Generated([], None, Completion("", 0, "length"))
            running = [c for c in range(len(slots)) if c not in set(zero)]
            try:
                results = await self.generate([self.job(body, ids[slots[c][0]], new[slots[c][0]], stops, slots[c][1])
                                               for c in running], client)
            except ClientGone:
                return Response(status_code=499)
            for c, result in zip(running, results):
                generated[c] = result
        scores = None
        if k is not None:
            sequences = list(dict.fromkeys(tuple(ids[p] + (generated[c].scored_ids() if generated[c] else []))
                                           for c, (p, _) in enumerate(slots)))
            scored = await self.scorer.score([list(s) for s in sequences], max(k, 1))
            scores = dict(zip(sequences, scored))
        choices = await asyncio.to_thread(self.shape_choices, body, chat, echo, k, prompts, ids, slots, generated,
                                          scores, stops)
        completion_tokens = sum(choice.pop("_completion_tokens") for choice in choices)
        prompt_tokens = sum(map(len, ids))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        return protocol.response_body(chat, _response_id(chat), int(time.time()), self.name, choices, usage)

    def shape_choices(self, body, chat, echo, k, prompts, ids, slots, generated, scores, stops) -> list[dict]:
        """The choices' bodies (on a thread: detokenizing). A one-pass choice's token is the top-1 after its
        prompt; its text goes through the stop sequences as a generated one's."""
        tokenizer, eos = self.model.tokenizer, set(self.model.config.eos_token_ids)
        choices = []
        for c, (p, _) in enumerate(slots):
            prompt = ids[p]
            gen = generated[c]
            if gen is None:  # one pass: the greedy token after the prompt
                score = scores[tuple(prompt)]
                token = int(score.top_ids[-1, 0])
                gen = (Generated([], token, Completion("", 1, "stop")) if token in eos else
                       Generated([token], None, finish(tokenizer, [token], "length", stops)))
            sequence = prompt + gen.scored_ids()
            logprobs = None
            if k is not None:
                score = scores.get(tuple(sequence)) or scores[tuple(prompt)]  # one pass: scored without its token
                first = 0 if echo else len(prompt)
                logprobs = self.logprobs(chat, sequence, score, first, k,
                                         offset=0 if echo else len(self.echo_text(prompts, ids, p)))
            text = (self.echo_text(prompts, ids, p) if echo else "") + gen.completion.text
            choice = protocol.choice(chat, text, gen.completion.finish_reason, index=c, logprobs=logprobs)
            choice["_completion_tokens"] = gen.completion.completion_tokens
            choices.append(choice)
        return choices

    def echo_text(self, prompts, ids, p: int) -> str:
        prompt = prompts[p] if prompts is not None else None
        return prompt if isinstance(prompt, str) else self.model.tokenizer.decode(ids[p], skip_special_tokens=False)

    def logprobs(self, chat: bool, sequence: list[int], score, first: int, k: int, offset: int) -> dict:
        """The log-probs of sequence[first:] from `score` (its scoring, maybe without its last token: that one is
        the top-1 after the rest); OpenAI's chat shape or the legacy completions shape."""
        tokens, values, tops = [], [], []
        for i in range(first, len(sequence)):
            if i == 0:
                tokens.append(self.token_text(sequence[0]))
                values.append(None)
                tops.append(None)
                continue
            value = (float(score.logprobs[i - 1]) if i - 1 < len(score.logprobs) else
                     float(score.top_logprobs[i - 1, 0]))
            top = [(self.token_text(int(t)), float(v)) for t, v in zip(score.top_ids[i - 1, :k],
                                                                        score.top_logprobs[i - 1, :k])]
            tokens.append(self.token_text(sequence[i]))
            values.append(value)
            tops.append(top)
        if chat:
            return {"content": [protocol.chat_logprob(t, v, top) for t, v, top in zip(tokens, values, tops)],
                    "refusal": None}
        offsets, position = [], offset
        for token in tokens:
            offsets.append(position)
            position += len(token)
        top_dicts = [None if top is None else {**dict(top), **({} if t in dict(top) else {t: v})}
                     for t, v, top in zip(tokens, values, tops)]
        return protocol.completion_logprobs(tokens, values, top_dicts, offsets)


def _response_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


# An over-size body up to this many bytes is read and dropped before the 413 goes out: a client still
# sending would otherwise meet a reset connection (closing a socket with unread data resets it) and never
# read the answer. Beyond it the connection is closed unread.
DRAIN_BYTES = 64 << 20

PARSED_ALONE_BYTES = 64 << 10  # bodies this large are parsed one at a time (BodyLimit)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413, from its Content-Length before any of
    it is kept, or as soon as a body without one grows past the limit.

    Large bodies are parsed one at a time, each followed by a pause as long: the step that follows a body's last
    read (the app's JSON parsing and validation, ~20 ms for 4 MB) holds a lock released as long after that step
    as the step took. A flood of large bodies then takes at most half the event loop, and every other request,
    /health's included, waits behind one parse at most, not behind all of them."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit
        self.parsing = asyncio.Lock()

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
            if received > PARSED_ALONE_BYTES and not message.get("more_body"):
                await self.parsing.acquire()
                asyncio.get_running_loop().call_soon(self._pause, time.perf_counter())  # after this task's step
            return message

        await self.app(scope, limited_receive, send)

    def _pause(self, started: float) -> None:
        """Hold the parsing lock as long again as the parse took: large bodies get half the event loop at most."""
        asyncio.get_running_loop().call_later(time.perf_counter() - started, self.parsing.release)


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
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        service.check_model(body)
        prompt_ids = await service.encode([m.model_dump() for m in body.messages])
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await service.answer(body, None, [prompt_ids], max_tokens, request, True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        service.check_model(body)
        prompts = protocol.prompts(body.prompt)
        return await service.answer(body, prompts, await service.prompt_ids(prompts), body.max_tokens, request, False)

    # vLLM's tokenizer endpoints: lm-evaluation-harness (0.4.13's `tokenizer_backend=auto`) tokenizes through
    # them, so it needs no copy of the model's tokenizer
    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        if body.model is not None:
            service.check_model(body)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "tokenize: give either prompt or messages", param="prompt")
        text = body.prompt if body.messages is None else [m.model_dump() for m in body.messages]
        positions = service.model.config.max_positions
        problem = prompt_too_long(text, positions, service.token_chars)
        if problem:
            raise APIError(400, problem, param="prompt", code="context_length_exceeded")
        tokenizer = service.model.tokenizer

        def encode():
            if isinstance(text, str):
                return tokenizer(text, add_special_tokens=body.add_special_tokens).input_ids
            rendered = tokenizer.apply_chat_template(text, tokenize=False,
                                                     add_generation_prompt=body.add_generation_prompt)
            return tokenizer(rendered, add_special_tokens=body.add_special_tokens).input_ids

        try:
            tokens = await asyncio.to_thread(encode)
        except Exception as e:  # noqa: BLE001 - e.g. a chat template refusing a role order
            raise APIError(400, f"cannot encode the prompt: {e}") from None
        return {"count": len(tokens), "max_model_len": positions, "tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        if body.model is not None:
            service.check_model(body)
        bad = next((t for t in body.tokens if not 0 <= t < service.vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary (0..{service.vocab - 1})", param="tokens")
        return {"prompt": await asyncio.to_thread(service.model.tokenizer.decode, body.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        tokenizer = service.model.tokenizer
        template = getattr(tokenizer, "chat_template", None)
        return {"tokenizer_class": type(tokenizer).__name__, "eos_token": tokenizer.eos_token,
                "bos_token": tokenizer.bos_token, "pad_token": tokenizer.pad_token, "unk_token": tokenizer.unk_token,
                "chat_template": template if isinstance(template, str) else None,
                "model_max_length": service.model.config.max_positions}

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
                     {"model": service.name, "queued": worker.queued(), **worker.stats,
                      **service.scorer.stats})
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
        service.scorer.close()

    app = FastAPI(title="xlit-serve", lifespan=lifespan)
    app.state.worker = service.worker
    app.state.scorer = service.scorer
    add_error_handlers(app)
    add_routes(app, service)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(Gate, hosts=config.hosts, api_key=config.api_key)  # added last: runs first
    quiet_access_log()
    return app
