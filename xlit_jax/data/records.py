"""One record type for every instruction and chat dataset, and the loaders that produce it.

A `Record` is a conversation: an optional system turn, then user and assistant turns alternating, starting
with the user. It carries an `id` (stable across translations, so the same item lines up in every
language), a `lang` code and a `source` tag.

Formats (`Source.format`):
  dolly   rows {instruction, context, response, category}: Dolly-15k and anything in its schema.
  alpaca  rows {instruction, input, output}; self-instruct seed tasks ({instruction, instances: [{input,
          output}, ...]}) use their first instance.
  lima    rows {conversations: [user, assistant, user, ...], source}: plain strings, roles by position.
  chat    rows that are a list of {role, content} messages, or an object holding one under `messages`,
          `conversation` or `conversations` (our own output: {id, lang, source, messages}).
  hf      any of the above through `map.FIELD=column` options (see `Source`).

An instruction row becomes two turns: the user turn is the instruction, followed by a blank line and the
context (Dolly) or input (Alpaca) when that is non-empty; the assistant turn is the response. Every
turn's text is stripped of surrounding whitespace. A conversation whose last turn is an unanswered user
turn loses that turn (it cannot be trained on); `require_response=False` keeps it, for prompt sets.

Containers: a local .jsonl, .json (an array, or lines if it does not start with '['), or .parquet file,
or a name `datasets.load_dataset` understands (a hub dataset such as databricks/databricks-dolly-15k, or a
local dataset directory).

Bad rows raise `InputError("FILE:LINE:FIELD: ...")` (JSON arrays: the line where the item starts;
parquet and HF datasets: `row N`). With `skip_invalid` they are left out and their errors returned.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from xlit_jax.errors import InputError
from xlit_jax.io.files import TOO_DEEP, read_jsonl

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"human": "user", "prompter": "user", "utilisateur": "user",
                "gpt": "assistant", "bot": "assistant", "model": "assistant"}
DOLLY_HUB = "databricks/databricks-dolly-15k"
DOLLY_FIELDS = {"instruction": "instruction", "context": "context", "response": "response",
                "category": "category"}
ALPACA_FIELDS = {"instruction": "instruction", "context": "input", "response": "output"}
CHAT_FIELDS = ("messages", "conversation", "conversations")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
_LANG_IN_NAME = re.compile(r"[._-]([a-z]{2}(?:-[A-Z]{2})?)\.(?:jsonl|json|parquet)$")


@dataclasses.dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclasses.dataclass(frozen=True)
class Record:
    id: str
    turns: tuple[Turn, ...]
    lang: str
    source: str

    def messages(self) -> list[dict]:
        return [{"role": t.role, "content": t.content} for t in self.turns]

    def to_json(self) -> dict:
        return {"id": self.id, "lang": self.lang, "source": self.source, "messages": self.messages()}

    def replace(self, **changes) -> Record:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class Loaded:
    records: list[Record]
    skipped: list[str]  # the error of each row left out under skip_invalid


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a dataset is and how to read it; the CLI spelling is FORMAT:PATH[,key=value...] (`parse_source`).

    `fields` maps our names to the container's columns: instruction, context, response, category, id for
    instruction sets; messages for conversations. `n` down-samples to n records (pipeline.load_mix).
    """

    format: str
    path: str
    lang: str | None = None
    split: str = "train"
    n: int | None = None
    fields: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.format not in FORMATS:
            raise InputError(f"unknown data format {self.format!r}: one of {', '.join(FORMATS)}")

    def field_map(self) -> dict[str, str]:
        return dict(self.fields)


def parse_source(spec: str) -> Source:
    """'dolly:data/dolly.jsonl,n=1030' or 'hf:org/set,split=test,map.instruction=question,map.response=answer'."""
    fmt, sep, rest = spec.partition(":")
    if not sep:
        raise InputError(f"data source {spec!r}: expected FORMAT:PATH[,key=value...]")
    path, *options = rest.split(",")
    kwargs, fields = {}, []
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise InputError(f"data source {spec!r}: option {option!r} is not key=value")
        if key.startswith("map."):
            fields.append((key[4:], value))
        elif key in ("lang", "split"):
            kwargs[key] = value
        elif key == "n" and value.isdigit():
            kwargs[key] = int(value)
        else:
            raise InputError(f"data source {spec!r}: bad option {option!r} (lang=, split=, n=COUNT, map.FIELD=)")
    return Source(fmt, path, fields=tuple(fields), **kwargs)


def load_source(source: Source | str, skip_invalid: bool = False, require_response: bool = True) -> Loaded:
    source = parse_source(source) if isinstance(source, str) else source
    fields = {**FORMATS[source.format], **source.field_map()}
    convert = _instruction if "instruction" in fields else _conversation
    context = _Context(source, fields, _default_lang(source), dataset_name(source.path), require_response)
    records, skipped = [], []
    for index, (where, row) in enumerate(_rows(source, skipped if skip_invalid else None)):
        try:
            records.append(convert(context, index, where, row))
        except InputError as e:
            if not skip_invalid:
                raise
            skipped.append(str(e))
    if not records:  # an empty file, or every row skipped: nothing downstream could train on or translate it
        left_out = f" ({len(skipped)} rows skipped as invalid, the first: {skipped[0]})" if skipped else ""
        raise InputError(f"{source.path}: no records{left_out}")
    return Loaded(records, skipped)


def load_dolly(path: str = DOLLY_HUB, lang: str | None = None, skip_invalid: bool = False) -> Loaded:
    return load_source(Source("dolly", path, lang), skip_invalid)


@dataclasses.dataclass(frozen=True)
class _Context:
    source: Source
    fields: dict[str, str]
    lang: str | None
    id_prefix: str
    require_response: bool


def _rows(source: Source, skipped: list | None):
    """(where, row) pairs; `where` is FILE:LINE (or NAME[split]:row N) for error messages."""
    path = Path(source.path)
    if path.is_file():
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return ((f"{path}:row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist()))
        if path.suffix == ".json":  # a .json file may hold one array or JSON lines
            with open(path, encoding="utf-8-sig", errors="replace") as f:
                if f.read(4096).lstrip().startswith("["):
                    return _json_array_rows(path)
        return _jsonl_rows(path, skipped)
    if path.suffix not in FILE_SUFFIXES:  # a hub name or a local dataset directory
        import datasets

        table = datasets.load_dataset(source.path, split=source.split)
        return ((f"{source.path}[{source.split}]:row {i}", row) for i, row in enumerate(table))
    raise InputError(f"{path}: no such file")


def _jsonl_rows(path: Path, skipped: list | None):
    for number, row in read_jsonl(path, skipped=skipped):
        yield f"{path}:{number}", row


def _json_array_rows(path: Path):
    """Items of a top-level JSON array, each with the line it starts on."""
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        pos = _skip(text, pos, " \t\r\n")
        if text.startswith("]", pos):
            return
        line = text.count("\n", 0, pos) + 1
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
        except RecursionError:
            raise InputError(f"{path}:{line}: {TOO_DEEP}") from None
        yield f"{path}:{line}", item
        pos = _skip(text, pos, " \t\r\n")
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            raise InputError(f"{path}:{text.count(chr(10), 0, pos) + 1}: malformed JSON: expected ',' or ']'")


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _default_lang(source: Source) -> str | None:
    if source.lang:
        return source.lang
    match = _LANG_IN_NAME.search(Path(source.path).name)
    if match:
        return match.group(1)
    return "en" if source.path == DOLLY_HUB else None


def dataset_name(path: str) -> str:
    """The prefix of generated ids: 'data/lima.en.jsonl' -> 'lima'; 'databricks/databricks-dolly-15k' ->
    'databricks-dolly-15k'."""
    name = Path(path).name
    name = _LANG_IN_NAME.sub("", name) if _LANG_IN_NAME.search(name) else name
    return name.split(".")[0]


def _field(row: dict, where: str, name: str, required: bool = True) -> str:
    """row[name] stripped; "" when absent and not required."""
    label = f"{where}:{name}"
    if name not in row or row[name] is None:
        if required:
            raise InputError(f"{label}: missing")
        return ""
    if not isinstance(row[name], str):
        raise InputError(f"{label}: expected a string, got {type(row[name]).__name__}")
    return row[name].strip()


def _row_dict(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _record(context: _Context, index: int, where: str, row, turns: list[Turn], source: str) -> Record:
    if context.require_response:
        if turns and turns[-1].role == "user":
            turns = turns[:-1]
        if not any(t.role == "assistant" for t in turns):
            raise InputError(f"{where}: no assistant turn to train on")
    lang = row.get("lang") if isinstance(row, dict) and isinstance(row.get("lang"), str) else context.lang
    if lang is None:
        raise InputError(f"{where}: the language is unknown: name the file NAME.LANG.jsonl or pass lang=")
    row_id = row.get(context.fields.get("id", "id")) if isinstance(row, dict) else None
    return Record(str(row_id) if row_id is not None else f"{context.id_prefix}-{index}",
                  tuple(turns), lang, source)


def _instruction(context: _Context, index: int, where: str, row) -> Record:
    row = _row_dict(row, where)
    fields = context.fields
    if "instances" in row and fields["response"] not in row:  # a self-instruct seed task
        instances = row["instances"]
        if not isinstance(instances, list) or not instances:
            raise InputError(f"{where}:instances: expected a non-empty list")
        row = {**row, **_row_dict(instances[0], f"{where}:instances[0]")}
    instruction = _field(row, where, fields["instruction"])
    extra = _field(row, where, fields["context"], required=False) if "context" in fields else ""
    response = _field(row, where, fields["response"], required=context.require_response)
    if not instruction:
        raise InputError(f"{where}:{fields['instruction']}: empty")
    if context.require_response and not response:
        raise InputError(f"{where}:{fields['response']}: empty response")
    turns = [Turn("user", f"{instruction}\n\n{extra}" if extra else instruction)]
    if response:
        turns.append(Turn("assistant", response))
    category = _field(row, where, fields["category"], required=False) if "category" in fields else ""
    name = context.id_prefix if context.source.format == "hf" else context.source.format
    return _record(context, index, where, row, turns, f"{name}/{category}" if category else name)


def _conversation(context: _Context, index: int, where: str, row) -> Record:
    key = context.fields.get("messages")
    if key is None:
        key = next((k for k in CHAT_FIELDS if isinstance(row, dict) and k in row), None)
    messages = row if isinstance(row, list) else _row_dict(row, where).get(key)
    label = key or "messages"
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}:{label}: expected a non-empty list of messages")
    turns = [_turn(m, i, f"{where}:{label}[{i}]") for i, m in enumerate(messages)]
    _check_order(turns, f"{where}:{label}", context.require_response)
    source = row.get("source") if isinstance(row, dict) and isinstance(row.get("source"), str) else None
    return _record(context, index, where, row, turns, source or context.id_prefix)


def _turn(message, index: int, where: str) -> Turn:
    """A message is a {role, content} object, or a bare string whose role follows from its position."""
    if isinstance(message, str):
        return Turn("user" if index % 2 == 0 else "assistant", message.strip())
    if not isinstance(message, dict):
        raise InputError(f"{where}: expected a message object or a string, got {type(message).__name__}")
    role = message.get("role")
    if not isinstance(role, str):
        raise InputError(f"{where}.role: missing or not a string")
    role = ROLE_ALIASES.get(role.lower(), role.lower())
    if role not in ROLES:
        raise InputError(f"{where}.role: unknown role {message['role']!r}")
    content = message.get("content")
    if not isinstance(content, str):
        raise InputError(f"{where}.content: missing or not a string")
    return Turn(role, content.strip())


def _check_order(turns: list[Turn], where: str, require_response: bool) -> None:
    """An optional system turn first, then user/assistant alternating from the user; no empty turns."""
    start = 1 if turns[0].role == "system" else 0
    for i, turn in enumerate(turns):
        expected = "system" if i < start else ("user", "assistant")[(i - start) % 2]
        if turn.role != expected:
            raise InputError(f"{where}[{i}].role: expected {expected}, got {turn.role}")
        if not turn.content and (require_response or turn.role != "assistant"):
            raise InputError(f"{where}[{i}].content: empty {turn.role} turn")


# Default field maps; `map.FIELD=column` options override them. An instruction field makes an instruction
# set, anything else a conversation set; "hf" has no defaults, for datasets in neither schema.
FORMATS = {"dolly": DOLLY_FIELDS, "alpaca": ALPACA_FIELDS, "lima": {"messages": "conversations"},
           "chat": {}, "hf": {}}
