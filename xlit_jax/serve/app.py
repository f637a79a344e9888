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
import secrets
import time
import uuid

from absl import logging
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from xlit_jax.decode.generate import Sampling
from xlit_jax.errors import InputError
from xlit_jax.serve.batcher import DISCONNECT_POLL_S, Batcher, Completion, Job, decode_jobs
from xlit_jax.serve.protocol import (
    MAX_STOPS,
    APIError,
    ChatRequest,
    CompletionRequest,
    RequestBody,
    describe_validation_error,
    error_param,
)


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
        return APIError(400, describe_validation_error(e.errors()), param=error_param(e.errors())).response()

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

    def job_for(body: RequestBody, prompt_ids: list[int], max_tokens: int | None) -> Job:
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
