"""Evaluation prompt sets: the paper's instructions and modifier prompts, AlpacaFarm's 805, the Language
Confusion Benchmark's prompts (LCB), any JSONL.

Every item carries the id that aligns it across languages, so the same selection (subset, limit,
seed) picks the same items in every language.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import io
import json
from pathlib import Path

from xlit_jax.errors import InputError
from xlit_jax.evaluate.items import choose_ids
from xlit_jax.io.files import read_jsonl
from xlit_jax.resources import shared_data_dir

PAPER_LANGUAGES = ("en", "fr", "pt", "ru")
CHIRKOVA_DIR = "chirkova2024_eval"
ALPACA_FARM_FILE = "alpaca_farm_eval/alpaca_farm_evaluation_805.gpt-3.5-turbo-0301.json"
JSONL_PREFIX = "jsonl:"
LANG_PLACEHOLDER = "{lang}"
PAPER_SETS = ("chirkova", "chirkova_modifiers")
# LCB (Marchisio et al. 2024): `lcb` is both tasks, each also a set of its own. In the cross-lingual task the
# prompt is English and asks for an answer in the item's language, which is the language LCB files it under.
LCB_DIR = "language_confusion"
LCB_SETS = ("lcb_monolingual", "lcb_crosslingual")
LCB = "lcb"
LCB_LANGUAGES = ("en", "fr", "pt", "ru", "de", "es", "it", "ar", "zh", "tr", "vi", "id", "hi", "ja", "ko")
# LCB's decoding: at most 100 new tokens, no repetition penalty, nucleus sampling at top-p 0.75 and
# temperature 0.3 (each response seeded by its item, run.item_seed).
LCB_DECODING = {"max_new_tokens": 100, "repetition_penalty": 1.0, "temperature": 0.3, "top_p": 0.75}
EVAL_SETS = (*PAPER_SETS, "alpaca_farm", LCB, *LCB_SETS)  # and jsonl:PATH


@dataclasses.dataclass(frozen=True)
class EvalItem:
    set: str
    language: str  # the language of the prompt
    id: str  # the same item has the same id in every language
    messages: tuple[dict, ...]
    expected_language: str  # the language the answer should be in (differs for "answer in X" modifiers)
    modifier: str | None = None  # modifier type label, e.g. "num_items_5", "lang_fr"
    group: str | None = None  # what --subset filters on: the modifier type, AlpacaFarm's or LCB's source dataset
    source: str | None = None  # the benchmark source LCB's tables group by (aya_human_annotated, okapi, ...)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.set, self.language, self.id)


def instruction_text(messages) -> str:
    """The user's side of a conversation, as a judge should read it."""
    return "\n\n".join(m["content"] for m in messages if m["role"] == "user")


def modifier_target_language(modifier: str | None) -> str | None:
    """`lang_fr` asks for an answer in French; other modifiers keep the prompt's language."""
    if modifier and modifier.startswith("lang_"):
        return modifier.removeprefix("lang_")
    return None


def _check_messages(messages, where: str) -> tuple[dict, ...]:
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: expected a non-empty list of chat messages")
    for m in messages:
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)):
            raise InputError(f"{where}: each message needs a role (system/user/assistant) and a string content")
    if messages[-1]["role"] != "user":
        raise InputError(f"{where}: the last message must be the user's")
    return tuple(messages)


def _chirkova(data_dir: Path, stem: str, set_name: str, language: str) -> list[EvalItem]:
    path = data_dir / CHIRKOVA_DIR / f"{stem}.{language}.jsonl"
    rows = [(n, _check_messages(obj, f"{path}:{n}")) for n, obj in read_jsonl(path)]
    types = [None] * len(rows)
    if stem == "modifiers":
        types_path = path.with_suffix(".types")
        if not types_path.is_file():
            raise InputError(f"{types_path}: no such file (the modifier type labels)")
        types = types_path.read_text(encoding="utf-8").split()
        if len(types) != len(rows):
            raise InputError(f"{types_path}: {len(types)} type labels for the {len(rows)} prompts of {path}")
    return [EvalItem(set_name, language, f"{i:04d}", messages,
                     modifier_target_language(kind) or language, modifier=kind, group=kind)
            for i, ((_, messages), kind) in enumerate(zip(rows, types))]


def _alpaca_farm(data_dir: Path, set_name: str, language: str) -> list[EvalItem]:
    path = data_dir / ALPACA_FARM_FILE
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    items = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str):
            raise InputError(f"{path}: record {i}: no string field 'instruction'")
        text = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        items.append(EvalItem(set_name, language, f"{i:04d}", ({"role": "user", "content": text},),
                              language, group=r.get("dataset")))
    return items


def read_csv(path: Path):
    """Yield (line number where the record starts, {column: value}) for each record of a UTF-8 CSV file with
    a header; a file that is not UTF-8 or not CSV is an InputError naming the line. A short record's
    missing columns are None."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    start = 2
    try:
        for record in reader:
            yield start, record
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"{path}:{start}: malformed CSV ({e})") from None


def _lcb(data_dir: Path, set_name: str, language: str) -> list[EvalItem]:
    """LCB's prompts in `language` (the language the answer should be in), every source of the task; ids are
    SOURCE_DIR/ROW so that --limit takes the same rows of every source."""
    items = []
    for path in sorted((data_dir / LCB_DIR / set_name.removeprefix("lcb_")).glob(f"*/{language}.csv")):
        for n, (line, row) in enumerate(read_csv(path)):
            for field in ("prompt", "source"):
                if not row.get(field):
                    raise InputError(f"{path}:{line}: no field {field!r}")
            items.append(EvalItem(set_name, language, f"{path.parent.name}/{n:03d}",
                                  ({"role": "user", "content": row["prompt"]},), language, group=row["source"],
                                  source=row["source"]))
    return items


def _jsonl_messages(obj, where: str) -> tuple[dict, ...]:
    """A line is a list of messages, or an object with `messages`, or `prompt`/`instruction` (+ `input`)."""
    if isinstance(obj, list):
        return _check_messages(obj, where)
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a list of messages or an object")
    if "messages" in obj:
        return _check_messages(obj["messages"], f"{where}: field 'messages'")
    for field in ("prompt", "instruction"):
        if isinstance(obj.get(field), str):
            text = obj[field] + (f"\n\n{obj['input']}" if obj.get("input") else "")
            return ({"role": "user", "content": text},)
    raise InputError(f"{where}: no field 'messages', 'prompt' or 'instruction'")


def _jsonl(pattern: str, set_name: str, language: str) -> list[EvalItem]:
    path = Path(pattern.replace(LANG_PLACEHOLDER, language))
    items = []
    for n, obj in read_jsonl(path):
        messages = _jsonl_messages(obj, f"{path}:{n}")
        item_id = str(obj["id"]) if isinstance(obj, dict) and "id" in obj else f"{n:04d}"
        items.append(EvalItem(set_name, language, item_id, messages, language))
    if len({it.id for it in items}) != len(items):
        raise InputError(f"{path}: ids are not unique")
    return items


def _jsonl_name(pattern: str) -> str:
    name = Path(pattern).name.removesuffix(".jsonl").replace(LANG_PLACEHOLDER, "")
    return name.strip("._-") or "jsonl"


def set_languages(spec: str) -> tuple[str, ...] | None:
    """The languages a set has, or None where any code may be asked for (a JSONL with {lang})."""
    if spec in PAPER_SETS:
        return PAPER_LANGUAGES
    if spec == "alpaca_farm":
        return ("en",)
    if spec == LCB or spec in LCB_SETS:
        return LCB_LANGUAGES
    if spec.startswith(JSONL_PREFIX):
        return None if LANG_PLACEHOLDER in spec else ()
    raise InputError(f"unknown eval set {spec!r}; known: {', '.join(EVAL_SETS)}, "
                     f"jsonl:PATH (PATH may contain {LANG_PLACEHOLDER})")


def check_languages(spec: str, languages) -> tuple[str, ...]:
    """The languages to evaluate; an unknown code is an error here, before any work starts."""
    known = set_languages(spec)
    if known == ():  # one JSONL file without {lang}: its language must be named, once
        if not languages or len(languages) != 1:
            raise InputError(f"{spec}: name the file's one language with --languages, or put "
                             f"{LANG_PLACEHOLDER} in the path")
        return tuple(languages)
    if not languages:
        if known is None:
            raise InputError(f"{spec}: name the languages to read with --languages")
        return known
    for code in languages:
        if not code.isascii() or not code.replace("-", "").isalpha():
            raise InputError(f"{spec}: {code!r} is not a language code")
        if known is not None and code not in known:
            raise InputError(f"eval set {spec!r} has no language {code!r}; it has {', '.join(known)}")
    return tuple(languages)


def _read(spec: str, language: str, data_dir: Path) -> list[EvalItem]:
    if spec == "chirkova":
        return _chirkova(data_dir, "alpacaeval_test_subset", spec, language)
    if spec == "chirkova_modifiers":
        return _chirkova(data_dir, "modifiers", spec, language)
    if spec == "alpaca_farm":
        return _alpaca_farm(data_dir, spec, language)
    if spec == LCB:
        return [it for name in LCB_SETS for it in _lcb(data_dir, name, language)]
    if spec in LCB_SETS:
        return _lcb(data_dir, spec, language)
    return _jsonl(spec.removeprefix(JSONL_PREFIX), _jsonl_name(spec), language)


def load_eval_set(spec: str, languages=None, data_dir=None, subset=None, limit: int | None = None,
                  seed: int | None = None) -> list[EvalItem]:
    """Items of one set in the given languages (default: all it has).

    `subset` is a list of glob patterns on the item group (modifier type such as `num_items_*`, or
    AlpacaFarm's or LCB's source dataset). `limit` keeps that many ids, the first ones or, with `seed`, a
    seeded sample; ids are chosen once, so every language gets the same items (for LCB: the same rows of
    every source).
    """
    languages = check_languages(spec, languages)
    data_dir = Path(data_dir) if data_dir else shared_data_dir()
    per_language = {lang: _read(spec, lang, data_dir) for lang in languages}
    sizes = {lang: len(items) for lang, items in per_language.items()}
    if spec in PAPER_SETS and len(set(sizes.values())) > 1:
        raise InputError(f"{spec}: the languages are not line-aligned (items per language: {sizes})")
    if subset:
        per_language = {lang: [it for it in items if it.group and any(fnmatch.fnmatch(it.group, p) for p in subset)]
                        for lang, items in per_language.items()}
    row = (lambda it: it.id.rpartition("/")[2]) if spec == LCB or spec in LCB_SETS else (lambda it: it.id)
    chosen = choose_ids([row(it) for items in per_language.values() for it in items], limit, seed)
    return [it for items in per_language.values() for it in items if row(it) in chosen]
