"""The paper's LLM judge: a GPT-style chat model scores 6 criteria on 1-3 stars, reported as 0-2, a
response in the wrong language counting only for language (for a lang_X modifier: not in X, by language
identification).

The prompt is the released template (`eval_prompt_gpt.txt`, placeholders %%%TASK%%% and
%%%SUBMISSION%%%) or a user's file with the same placeholders. Any server speaking the OpenAI chat
API works (`--judge_base_url`, e.g. xlit-serve's). The API key comes from OPENAI_API_KEY and goes nowhere
else; a server given by URL may need none.

FulfilmentJudge asks the same judge, through the same client, whether a response fulfils a modifier
no rule can check (scientific_style, simple_style, complex_inst): a prompt of our own,
`modifier_fulfilment_prompt.txt` beside this module (placeholders %%%TASK%%%, %%%REQUIREMENT%%% and
%%%SUBMISSION%%%), answered by a JSON object {"fulfilled": 0 or 1}.
"""

from __future__ import annotations

import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xlit_jax.errors import InputError, JudgeError
from xlit_jax.evaluate.instructions.evalsets import CHIRKOVA_DIR, instruction_text
from xlit_jax.evaluate.instructions.scorer import Scorer
from xlit_jax.io.files import read_text
from xlit_jax.resources import package_file

log = logging.getLogger(__name__)

TEMPLATE_FILE = "eval_prompt_gpt.txt"
TASK, SUBMISSION = "%%%TASK%%%", "%%%SUBMISSION%%%"
CRITERIA = ("language", "fluency", "helpfulness", "accuracy", "logical_coherence", "harmlessness")
# How the judge may spell a criterion's key: matched on the start of the key, case and spacing ignored.
KEY_PREFIXES = {"lang": "language", "correctlang": "language", "flu": "fluency", "help": "helpfulness",
                "inform": "helpfulness", "acc": "accuracy", "logic": "logical_coherence",
                "coheren": "logical_coherence", "harm": "harmlessness", "safe": "harmlessness"}
# Refusals that would hit every item alike (key, permission, model or URL): stop at once rather
# than record them item by item. Others (rate limits, server errors, one over-long prompt) are per item.
FATAL_STATUS = (401, 403, 404)
ANSWER_SHOWN = 200  # characters of an unusable answer kept in its error message


def load_template(path: str | Path) -> str:
    template = read_text(path, "judge prompt template")
    missing = [p for p in (TASK, SUBMISSION) if p not in template]
    if missing:
        raise InputError(f"{path}: the template lacks {' and '.join(missing)}")
    return template


def default_template_path(data_dir: Path) -> Path:
    return data_dir / CHIRKOVA_DIR / TEMPLATE_FILE


def _criterion(key: str) -> str | None:
    squashed = re.sub(r"[^a-z]", "", key.lower())
    return next((name for prefix, name in KEY_PREFIXES.items() if squashed.startswith(prefix)), None)


def _stars(value) -> int:
    if isinstance(value, dict):  # {"score": 3} or {"stars": 3, "reason": ...}
        value = next((value[k] for k in ("score", "stars", "rating") if k in value), None)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a star count")
    if isinstance(value, (int, float)) and float(value).is_integer():
        stars = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[123](?:\s*stars?)?\s*", value):
        stars = int(value.strip()[0])
    else:
        raise ValueError(f"{value!r} is not a star count")
    if stars not in (1, 2, 3):
        raise ValueError(f"{stars} stars is outside 1-3")
    return stars


def parse_judgement(answer: str) -> dict[str, int]:
    """The 6 criteria as 0-2 (stars minus one) from the judge's JSON answer; ValueError says what is wrong."""
    start, end = answer.find("{"), answer.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the answer")
    try:
        obj = json.loads(answer[start:end + 1])
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg})") from None
    except RecursionError:  # a judge's answer of thousands of brackets
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("the JSON is not an object")
    scores = {}
    for key, value in obj.items():
        name = _criterion(key)
        if name is not None:
            try:
                scores[name] = _stars(value) - 1
            except ValueError as e:
                raise ValueError(f"criterion {key!r}: {e}") from None
    missing = [c for c in CRITERIA if c not in scores]
    if missing:
        raise ValueError(f"no score for {', '.join(missing)}")
    return scores


def kept_criteria(right_language: bool) -> tuple[str, ...]:
    """The paper's rule: a response in the wrong language counts only for the language criterion."""
    return CRITERIA if right_language else ("language",)


def reported_scores(scores: dict[str, int], right_language: bool | None = None) -> dict[str, float]:
    """The criteria (0-2) as the paper reports them. The judge's Language criterion (0: wrong) decides the
    rule, unless the answer should be in another language than the prompt's (a lang_X modifier): then
    `right_language` (language identification against X) decides, and Language, which the judge rates
    against the prompt's language, is left out."""
    if right_language is None:
        return {f"judge_{c}": float(scores[c]) for c in kept_criteria(scores["language"] > 0)}
    return {f"judge_{c}": float(scores[c]) for c in kept_criteria(right_language) if c != "language"}


class OpenAIJudge(Scorer):
    """Judges responses through the `openai` client; `attempts` bounds the tries per item."""

    name = "judge"

    def __init__(self, model: str, template: str, base_url: str | None = None, attempts: int = 3,
                 workers: int = 4, timeout_s: float = 120.0, lid=None):
        import openai

        api_key = os.environ.get("OPENAI_API_KEY")
        if not api_key and base_url is None:
            raise InputError("the LLM judge needs OPENAI_API_KEY in the environment (or --judge_base_url)")
        if attempts < 1:
            raise InputError(f"judge attempts must be at least 1, not {attempts}")
        self._openai = openai
        self._client = openai.OpenAI(api_key=api_key or "unused", base_url=base_url, timeout=timeout_s, max_retries=1)
        self._model = model
        self._template = template
        self._attempts = attempts
        self._workers = workers
        self._lid = lid  # language identification, for items whose answer is asked in another language
        self._json_mode = True  # response_format json_object, until the service refuses it
        self.chunk_size = 4 * workers

    def _ask(self, prompt: str) -> str:
        """The judge's answer, asked in JSON mode (our prompts ask for a JSON object, as the paper's judge
        calls did) while the service takes it; a service that refuses the `response_format` field (HTTP 400
        naming it) is asked without it from then on."""
        request = {"model": self._model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        if self._json_mode:
            try:
                return self._content(response_format={"type": "json_object"}, **request)
            except self._openai.BadRequestError as e:
                if "response_format" not in str(e):
                    raise
                self._json_mode = False
                log.warning("the judge service refuses JSON mode (%s); asking without it", e.message)
        return self._content(**request)

    def _content(self, **request) -> str:
        return self._client.chat.completions.create(**request).choices[0].message.content or ""

    def _prompt(self, item, response: str) -> str:
        return self._template.replace(TASK, instruction_text(item.messages)).replace(SUBMISSION, response)

    def _result(self, item, answer: str, detected: str | None) -> dict:
        """The item's scores from the judge's answer (`detected`: the answer's language where it is asked in
        another language than the prompt's); ValueError when the answer is unusable."""
        stars = parse_judgement(answer)
        details = {"stars": {c: s + 1 for c, s in stars.items()}}
        if item.expected_language == item.language:
            return {"scores": reported_scores(stars), "details": details}
        return {"scores": reported_scores(stars, detected == item.expected_language),
                "details": details | {"detected": detected}}

    def _one(self, item, response: str, detected: str | None) -> dict:
        prompt = self._prompt(item, response)
        problem = ""
        for _ in range(self._attempts):
            try:
                answer = self._ask(prompt)
            except self._openai.APIStatusError as e:
                if e.status_code in FATAL_STATUS:
                    raise JudgeError(f"the judge service refused the request (HTTP {e.status_code}): "
                                     f"{e.message}") from None
                problem = f"HTTP {e.status_code}: {e.message}"
                continue
            except self._openai.OpenAIError as e:  # connection errors, unreadable replies
                problem = f"{type(e).__name__}: {e}"
                continue
            try:
                return self._result(item, answer, detected)
            except ValueError as e:
                problem = f"{e}; answer: {answer[:ANSWER_SHOWN]!r}"
        return {"error": f"judge gave no usable answer in {self._attempts} attempts; last: {problem}"}

    def score(self, items, responses) -> list[dict]:
        redirected = [i for i, it in enumerate(items) if it.expected_language != it.language]
        detected = {}
        if redirected:
            if self._lid is None:
                raise ValueError("items whose answer is asked in another language need the judge's `lid`")
            found = self._lid.predict([responses[i] for i in redirected])
            detected = {i: language for i, (language, _) in zip(redirected, found)}
        with ThreadPoolExecutor(self._workers) as pool:
            return list(pool.map(self._one, items, responses, [detected.get(i) for i in range(len(items))]))


FULFILMENT_TEMPLATE = package_file(__package__, "modifier_fulfilment_prompt.txt")
REQUIREMENT = "%%%REQUIREMENT%%%"
# What each judged modifier asks for, in the judge's words (the prompts' suffixes are in their own language).
REQUIREMENTS = {
    "scientific_style": "The answer is written in a scientific style: formal, precise and objective, with "
                        "the vocabulary of the field.",
    "simple_style": "The answer uses simple words and is easy to understand for a child.",
    "complex_inst": "The task asks for two things, one after the other (for example a recipe and how to serve "
                    "it); the answer does both.",
}


VERDICTS = {0: False, 1: True, "0": False, "1": True, "no": False, "yes": True}


def load_fulfilment_template(path: str | Path = FULFILMENT_TEMPLATE) -> str:
    template = load_template(path)
    if REQUIREMENT not in template:
        raise InputError(f"{path}: the template lacks {REQUIREMENT}")
    return template


def parse_fulfilment(answer: str) -> bool:
    """The verdict of a JSON answer {"fulfilled": 0/1 (or true/false, "yes"/"no")}; ValueError otherwise."""
    start, end = answer.find("{"), answer.rfind("}")
    try:
        obj = json.loads(answer[start:end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg})") from None
    except RecursionError:  # a judge's answer of thousands of brackets
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(obj, dict) or "fulfilled" not in obj:
        raise ValueError('no JSON object with "fulfilled" in the answer')
    value = obj["fulfilled"]
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, (dict, list)) or key not in VERDICTS:  # True and False are keys 1 and 0
        raise ValueError(f'"fulfilled" is {value!r}, not 0 or 1')
    return VERDICTS[key]


class FulfilmentJudge(OpenAIJudge):
    """Modifier fulfilment (1.0 / 0.0) of the types in REQUIREMENTS, by the LLM judge."""

    name = "modifier_judge"

    def applies(self, item) -> bool:
        return item.modifier in REQUIREMENTS

    def _prompt(self, item, response: str) -> str:
        return super()._prompt(item, response).replace(REQUIREMENT, REQUIREMENTS[item.modifier])

    def _result(self, item, answer: str, detected: str | None) -> dict:
        return {"scores": {"fulfilled": float(parse_fulfilment(answer))}, "details": {}}
