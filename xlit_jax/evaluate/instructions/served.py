"""A model behind an OpenAI-compatible server (xlit-serve, vLLM, ...) that looks like a loaded model to the
relevance judge: `.generate(prompts, ...)` answers greedily (temperature 0) through the `openai` client."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from xlit_jax.errors import JudgeError


def is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


class ServedModel:
    """`base_url` ends in /v1; the model is the server's first unless `model` names one. The API key, if
    the server wants one, comes from OPENAI_API_KEY."""

    def __init__(self, base_url: str, model: str | None = None, timeout_s: float = 300.0):
        import openai

        self._openai = openai
        self._base_url = base_url
        self._client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or "unused",
                                     timeout=timeout_s, max_retries=3)
        served = [m.id for m in self._call(self._client.models.list)]
        if not served or (model is not None and model not in served):
            raise JudgeError(f"{base_url} serves {served}, not {model or 'any model'}")
        self.name = model or served[0]

    def _call(self, method, **kwargs):
        try:
            return method(**kwargs)
        except self._openai.OpenAIError as e:
            raise JudgeError(f"the model server at {self._base_url} failed: {type(e).__name__}: {e}") from None

    def _answer(self, prompt, max_new_tokens: int, extra: dict) -> str:
        common = {"model": self.name, "max_tokens": max_new_tokens, "temperature": 0, "extra_body": extra}
        if isinstance(prompt, str):
            return self._call(self._client.completions.create, prompt=prompt, **common).choices[0].text
        reply = self._call(self._client.chat.completions.create, messages=list(prompt), **common)
        return reply.choices[0].message.content or ""

    def generate(self, prompts: Sequence, max_new_tokens: int = 256, repetition_penalty: float = 1.0,
                 slots: int = 8) -> list[str]:
        """Greedy answers in the order of `prompts` (text, or chat messages), `slots` requests in flight
        so that the server's engine decodes them together."""
        extra = {} if repetition_penalty == 1.0 else {"repetition_penalty": repetition_penalty}
        with ThreadPoolExecutor(slots) as pool:
            return list(pool.map(lambda p: self._answer(p, max_new_tokens, extra), prompts))
