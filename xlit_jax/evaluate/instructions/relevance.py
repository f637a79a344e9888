"""Relevance: a chat model, run through our own JAX generation, answers 0 or 1 per response.

The prompt lives in a template file (`relevance_prompt.txt` beside this module by default) with the
placeholders {instruction} and {response}, so a user can swap in their own wording.
"""

from __future__ import annotations

import re
from pathlib import Path

from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions.evalsets import instruction_text
from xlit_jax.resources import package_file

DEFAULT_TEMPLATE = package_file(__package__, "relevance_prompt.txt")
PLACEHOLDER = re.compile(r"\{(instruction|response)\}")
# A lone 0 or 1: not part of a longer number such as 10, 0.5 or 2,1.
BINARY_DIGIT = re.compile(r"(?<![\d.,])[01](?![.,]?\d)")


def load_template(path: str | Path = DEFAULT_TEMPLATE) -> str:
    path = Path(path)
    try:
        template = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such relevance prompt template") from None
    missing = {"instruction", "response"} - set(PLACEHOLDER.findall(template))
    if missing:
        raise InputError(f"{path}: the template lacks {', '.join('{' + m + '}' for m in sorted(missing))}")
    return template


def fill(template: str, instruction: str, response: str) -> str:
    """One pass, so braces inside the instruction or the response are left alone."""
    values = {"instruction": instruction, "response": response}
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def last_binary_digit(answer: str) -> int | None:
    """The judge's verdict: the last lone 0 or 1 in its answer (it may reason before concluding)."""
    found = BINARY_DIGIT.findall(answer)
    return int(found[-1]) if found else None


class RelevanceJudge:
    """Scores relevance with any chat model that has `.generate(prompts, ...)` (greedy decoding)."""

    name = "relevance"

    def __init__(self, model, template: str, max_new_tokens: int = 48, batch_size: int = 8):
        self._model = model
        self._template = template
        self._max_new_tokens = max_new_tokens
        self._batch_size = batch_size
        self.chunk_size = batch_size

    def applies(self, item) -> bool:
        return True

    def score(self, items, responses) -> list[dict]:
        prompts = [[{"role": "user", "content": fill(self._template, instruction_text(item.messages), text)}]
                   for item, text in zip(items, responses)]
        answers = self._model.generate(prompts, max_new_tokens=self._max_new_tokens, repetition_penalty=1.0,
                                       batch_size=self._batch_size)
        results = []
        for answer in answers:
            verdict = last_binary_digit(answer)
            # An answer without a verdict is a result too (greedy decoding would repeat it): no score.
            scores = {} if verdict is None else {"relevance": float(verdict)}
            results.append({"scores": scores, "details": {"judge_answer": answer}})
        return results
