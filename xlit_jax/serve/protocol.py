"""The OpenAI API as this server speaks it: request bodies (pydantic validates them field by field) and
errors in OpenAI's shape, so every `openai` client reads them as it reads OpenAI's own."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

MAX_STOPS = 4  # as OpenAI's API
MAX_LOGPROBS = 20  # `logprobs` (completions) and `top_logprobs` (chat) at most: OpenAI's chat cap, vLLM's default
MAX_CHOICES = 256  # prompts x n in one request at most
# OpenAI's fields that would change the answer and that this server does not implement, with their neutral
# values: any other value is refused (400) rather than ignored, which would answer something else than asked
UNSUPPORTED = {"logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0, "best_of": 1, "suffix": ""}


class APIError(Exception):
    """An error answered to the client in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param=None,
                 code=None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class Message(BaseModel):
    role: str
    content: str


class RequestBody(BaseModel):
    """The fields both endpoints share; unknown fields are ignored, as clients send many."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default; 0 is greedy
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)  # choices per prompt (differing only when sampled)
    stream: bool = False  # server-sent events; the last chunk carries the usage
    repetition_penalty: float = Field(1.0, gt=0)  # an extension (as vLLM's): HF's rule, 1 = off
    logit_bias: Any = None  # the UNSUPPORTED fields: accepted at their neutral values only
    presence_penalty: Any = None
    frequency_penalty: Any = None
    best_of: Any = None
    suffix: Any = None

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _neutral_only(cls, value, info: ValidationInfo):
        neutral = UNSUPPORTED[info.field_name]
        if value is not None and value != neutral:
            raise PydanticCustomError("unsupported", "not supported by this server: leave it out or send {neutral}",
                                      {"neutral": json.dumps(neutral)})
        return value


class ChatRequest(RequestBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    logprobs: StrictBool = False  # the generated tokens' log-probs
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # and the likeliest tokens at each (needs logprobs)


class CompletionRequest(RequestBody):
    prompt: StrictStr | list  # a string, strings, token ids, or lists of token ids: see `prompts`
    echo: StrictBool = False  # the prompt before the completion (and with logprobs, its tokens' log-probs)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)  # each token's log-prob and the k likeliest at each


class TokenizeRequest(BaseModel):
    """vLLM's POST /tokenize: a prompt's ids (or chat messages', through the chat template)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: StrictStr | None = None
    messages: list[Message] | None = Field(None, min_length=1)
    add_special_tokens: StrictBool = True
    add_generation_prompt: StrictBool = True


class DetokenizeRequest(BaseModel):
    """vLLM's POST /detokenize: the text of token ids."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[StrictInt] = Field(max_length=1 << 20)


def prompts(prompt) -> list[str | list[int]]:
    """A completion request's prompts, each a string or a list of token ids, from OpenAI's four forms: a string,
    a list of strings, a list of token ids, a list of lists of token ids (not mixed). The number of prompts is
    bounded by MAX_CHOICES; ids are checked against the vocabulary later."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt: an empty list", param="prompt")
    if len(prompt) > MAX_CHOICES and not _token_ids(prompt):
        raise APIError(400, f"prompt: {len(prompt)} prompts; at most {MAX_CHOICES} in one request", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if _token_ids(prompt):
        return [prompt]
    if all(isinstance(p, list) for p in prompt):
        for i, ids in enumerate(prompt):
            if not ids or not _token_ids(ids):
                raise APIError(400, f"prompt[{i}]: not a non-empty list of token ids (integers)", param="prompt")
        return list(prompt)
    raise APIError(400, "prompt: a string, a list of strings, a list of token ids or a list of lists of token ids "
                   "(one kind, not mixed)", param="prompt")


def _token_ids(values: list) -> bool:
    return all(type(v) is int for v in values)  # not bool, a subclass of int


def completion_logprobs(tokens: list[str], logprobs: list[float | None], top: list[dict | None],
                        offsets: list[int]) -> dict:
    """A completion choice's `logprobs`, OpenAI's legacy shape: per token its text, its log-prob (null for the
    prompt's first token, which nothing predicts), {token: log-prob} of the likeliest, and where it starts."""
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets}


def chat_logprob(token: str, logprob: float, top: list[tuple[str, float]] | None = None) -> dict:
    """One entry of a chat choice's `logprobs.content` (OpenAI's shape; `bytes`: the token text's UTF-8)."""
    entry = {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}
    if top is not None:
        entry["top_logprobs"] = [chat_logprob(t, lp) for t, lp in top]
    return entry


def describe_validation_error(errors) -> str:
    """One line from pydantic's errors: malformed JSON, or the first bad or missing field."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    field = error_param(errors)
    return f"field {field!r}: {first['msg']}" if field else f"the body: {first['msg']}"


def error_param(errors) -> str | None:
    if errors[0].get("type") == "json_invalid":
        return None
    location = [str(part) for part in errors[0].get("loc", ()) if part != "body"]
    return ".".join(location) or None


def choice(chat: bool, text: str, finish_reason: str | None, *, delta: bool = False, role: bool = True,
           index: int = 0, logprobs: dict | None = None) -> dict:
    """One choice of a response, or of a streamed chunk (`delta`; the role only in a chat stream's first)."""
    if not chat:
        return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}
    message = {"role": "assistant", "content": text} if role else {"content": text}
    return {"index": index, "delta" if delta else "message": message, "finish_reason": finish_reason,
            "logprobs": logprobs}


def response_body(chat: bool, response_id: str, created: int, model: str, choices: dict | list[dict],
                  usage: dict | None, *, chunk: bool = False) -> dict:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    choices = [choices] if isinstance(choices, dict) else choices
    body = {"id": response_id, "object": kind, "created": created, "model": model, "choices": choices}
    return {**body, "usage": usage} if usage is not None or not chunk else body


def server_sent_event(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
