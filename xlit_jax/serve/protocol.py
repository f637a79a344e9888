"""The OpenAI API as this server speaks it: request bodies (pydantic validates them field by field) and
errors in OpenAI's shape, so every `openai` client reads them as it reads OpenAI's own."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

MAX_STOPS = 4  # as OpenAI's API


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
    n: int = 1
    stream: bool = False  # server-sent events; the last chunk carries the usage
    repetition_penalty: float = Field(1.0, gt=0)  # an extension (as vLLM's): HF's rule, 1 = off


class ChatRequest(RequestBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None  # the newer name of max_tokens


class CompletionRequest(RequestBody):
    prompt: str


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


def choice(chat: bool, text: str, finish_reason: str | None, *, delta: bool = False, role: bool = True) -> dict:
    """One choice of a response, or of a streamed chunk (`delta`; the role only in a chat stream's first)."""
    if not chat:
        return {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    message = {"role": "assistant", "content": text} if role else {"content": text}
    return {"index": 0, "delta" if delta else "message": message, "finish_reason": finish_reason, "logprobs": None}


def response_body(chat: bool, response_id: str, created: int, model: str, choice_: dict, usage: dict | None,
                  *, chunk: bool = False) -> dict:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    body = {"id": response_id, "object": kind, "created": created, "model": model, "choices": [choice_]}
    return {**body, "usage": usage} if usage is not None or not chunk else body


def server_sent_event(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
