"""Responses made anywhere else, read as eval items with their responses (`xlit-eval --responses=FILE`).

A JSONL or CSV file, one response per record: `response` (or LCB's `completion`) and `language` (the
language the answer should be in); optional `id` (default: the line number), `model`, `prompt` (the
judges need it), `source`, and `task` (LCB's monolingual or crosslingual). LCB's released outputs/*.csv
(`id, model, completion, task, source, language`) are read as they are.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions.evalsets import EvalItem, read_csv
from xlit_jax.io.files import read_jsonl

RESPONSE_FIELDS = ("response", "completion")  # ours, LCB's
TASKS = ("monolingual", "crosslingual")
PLAIN_SET = "responses"  # the set of a file without LCB's `task` column


@dataclasses.dataclass
class Responses:
    path: Path
    model: str
    items: list[EvalItem]
    texts: dict[tuple, str]  # response by item key
    lines: dict[tuple, int]  # where each item is in the file


def _records(path: Path):
    if path.suffix == ".csv":
        return read_csv(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    raise InputError(f"{path}: responses must be a .csv or a .jsonl file")


def _text(record: dict, field: str, where: str, required: bool = True) -> str | None:
    """A field's value as text (a JSONL id may be a number); None for an optional field left out."""
    value = record.get(field)
    if value is None and not required:
        return None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{where}: field {field!r}: missing or empty")
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InputError(f"{where}: field {field!r}: expected a string, got {value!r}")
    return str(value)


def _item(record, where: str, line: int) -> tuple[EvalItem, str, str | None]:
    """The item, its response and its model (None when the record names none)."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object with a response and a language")
    field = next((f for f in RESPONSE_FIELDS if f in record), RESPONSE_FIELDS[0])
    response = record.get(field)
    if not isinstance(response, str):
        raise InputError(f"{where}: field {field!r}: " + ("missing" if response is None
                                                          else f"expected a string, got {response!r}"))
    language = _text(record, "language", where)
    if not language.isascii() or not language.replace("-", "").isalpha():
        raise InputError(f"{where}: field 'language': {language!r} is not a language code")
    task = _text(record, "task", where, required=False)
    if task is not None and task not in TASKS:
        raise InputError(f"{where}: field 'task': {task!r} is not one of LCB's tasks ({', '.join(TASKS)})")
    source = _text(record, "source", where, required=False)
    item_id = _text(record, "id", where, required=False) or f"{line:06d}"
    if source:  # LCB numbers the rows of each source and language: the source makes the id unique
        item_id = f"{source}/{item_id}"
    prompt = _text(record, "prompt", where, required=False)
    messages = ({"role": "user", "content": prompt},) if prompt else ()
    item = EvalItem(f"lcb_{task}" if task else PLAIN_SET, language, item_id, messages, language, group=source,
                    source=source)
    return item, response, _text(record, "model", where, required=False)


def read_responses(path, model_name: str | None = None) -> Responses:
    """The file's items and responses; one model per file (`model_name`, else the file's `model` column,
    else the file's name). Every malformed record is an InputError naming the file, line and field."""
    path = Path(path)
    items, texts, lines = [], {}, {}
    first_model = None  # (model, line) of the first record that names one
    for line, record in _records(path):
        where = f"{path}:{line}"
        item, response, model = _item(record, where, line)
        if item.key in lines:
            raise InputError(f"{where}: field 'id': {item.id!r} repeats line {lines[item.key]} "
                             f"({item.set}, {item.language})")
        if model is not None and model_name is None:
            first_model = first_model or (model, line)
            if model != first_model[0]:
                raise InputError(f"{where}: field 'model': {model!r}, but line {first_model[1]} has "
                                 f"{first_model[0]!r} (one model per file; split it, or name one with --model_name)")
        items.append(item)
        texts[item.key], lines[item.key] = response, line
    if not items:
        raise InputError(f"{path}: no responses")
    name = model_name or (first_model[0] if first_model else path.stem)
    return Responses(path, name, items, texts, lines)


def check_prompts(responses: Responses, metrics) -> None:
    """The judges read the prompt: refuse, naming the first record without one."""
    judged = [m for m in metrics if m in ("judge", "relevance")]
    missing = next((it for it in responses.items if not it.messages), None)
    if judged and missing is not None:
        raise InputError(f"{responses.path}:{responses.lines[missing.key]}: field 'prompt': missing or empty "
                         f"(the {judged[0]} metric reads it)")
