"""Relevance: a chat model, run through our own JAX generation, answers 0 or 1 per response.

The prompt is a template file, named or given by path (`--relevance_prompt`):
- `table3` (default): the paper's Table 3 prompt for LLaMA-2-chat-7B, read from the data folder
  (chirkova2024_eval/relevance_prompt_table3.txt), with the GPT judge's placeholders %%%TASK%%% and
  %%%SUBMISSION%%%;
- `ours`: our own wording (`relevance_prompt.txt` beside this module), placeholders {instruction} and
  {response}, which says what counts as relevant and tells the judge to ignore language and style.
A user's file may use either pair of placeholders.
"""

from __future__ import annotations

import re
from pathlib import Path

from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions.evalsets import CHIRKOVA_DIR, instruction_text
from xlit_jax.evaluate.instructions.scorer import Scorer
from xlit_jax.io.files import read_text
from xlit_jax.resources import package_file

TABLE3_FILE = "relevance_prompt_table3.txt"  # in the data folder's CHIRKOVA_DIR
OUR_TEMPLATE = package_file(__package__, "relevance_prompt.txt")
PROMPTS = ("table3", "ours")  # the named prompts; the first is the default
# Each style's (instruction, response) placeholders: ours, and the paper's (as in eval_prompt_gpt.txt).
PLACEHOLDERS = (("{instruction}", "{response}"), ("%%%TASK%%%", "%%%SUBMISSION%%%"))
PLACEHOLDER = re.compile("|".join(re.escape(p) for pair in PLACEHOLDERS for p in pair))
# A lone 0 or 1: not part of a longer number such as 10, 0.5 or 2,1.
BINARY_DIGIT = re.compile(r"(?<![\d.,])[01](?![.,]?\d)")


def template_path(prompt: str, data_dir: Path) -> Path:
    """The file of a named prompt (`table3`, `ours`), else `prompt` itself as a path."""
    if prompt == "table3":
        return Path(data_dir) / CHIRKOVA_DIR / TABLE3_FILE
    return OUR_TEMPLATE if prompt == "ours" else Path(prompt)


def load_template(path: str | Path) -> str:
    template = read_text(path, "relevance prompt template")
    if not any(all(p in template for p in pair) for pair in PLACEHOLDERS):
        raise InputError(f"{path}: the template needs {' and '.join(PLACEHOLDERS[0])}, or "
                         f"{' and '.join(PLACEHOLDERS[1])} (the paper's)")
    return template


def fill(template: str, instruction: str, response: str) -> str:
    """One pass, so placeholders inside the instruction or the response are left alone."""
    values = {p: (instruction, response)[k] for pair in PLACEHOLDERS for k, p in enumerate(pair)}
    return PLACEHOLDER.sub(lambda m: values[m.group(0)], template)


def last_binary_digit(answer: str) -> int | None:
    """The judge's verdict: the last lone 0 or 1 in its answer, as the paper takes "the last 0 or 1 digit"
    (a judge may reason before concluding); digits inside a number (10, 0.5) are not verdicts."""
    found = BINARY_DIGIT.findall(answer)
    return int(found[-1]) if found else None


class RelevanceJudge(Scorer):
    """Scores relevance with any chat model that has `.generate(prompts, ...)` (greedy decoding)."""

    name = "relevance"

    def __init__(self, model, template: str, max_new_tokens: int = 48, batch_size: int = 8):
        self._model = model
        self._template = template
        self._max_new_tokens = max_new_tokens
        self._batch_size = batch_size
        self.chunk_size = batch_size

    def score(self, items, responses) -> list[dict]:
        prompts = [[{"role": "user", "content": fill(self._template, instruction_text(item.messages), text)}]
                   for item, text in zip(items, responses)]
        answers = self._model.generate(prompts, max_new_tokens=self._max_new_tokens, repetition_penalty=1.0,
                                       slots=self._batch_size)
        results = []
        for answer in answers:
            verdict = last_binary_digit(answer)
            # An answer without a verdict is a result too (greedy decoding would repeat it): no score.
            scores = {} if verdict is None else {"relevance": float(verdict)}
            results.append({"scores": scores, "details": {"judge_answer": answer}})
        return results
