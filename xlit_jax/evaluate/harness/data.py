"""CrossAlpaca's four benchmarks (XQuAD, MLQA, MMLU, BBH in ar/de/en/es/it/zh) read from ../shared/data,
with the prompts of lm-evaluation-harness 0.4.

Columns are read by position (several headers were machine-translated). What is wrong in a file is
repaired where the data allows and counted in `Loaded.defects`; a row is only left out when nothing
scorable remains, and that is counted too. See docs/evaluation.md for the list.
"""

from __future__ import annotations

import ast
import collections
import csv
import dataclasses
import re
from pathlib import Path

from xlit_jax.errors import InputError
from xlit_jax.evaluate.items import choose_ids
from xlit_jax.resources import shared_data_dir

BENCH_DIR = "crossalpaca_bench"
LANGUAGE_DIRS = {"ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "it": "Italian", "zh": "Chinese"}
BENCHMARKS = ("xquad", "mlqa", "mmlu", "bbh")
GENERATIVE = frozenset({"xquad", "mlqa", "bbh"})
LM_EVAL_PREFIX = "lm_eval:"  # --eval_set=lm_eval:TASK: the harness's own task (lm_eval_tasks.py), not ours
# Question-answering labels: English for every language (the harness's MLQA tasks), or the language's own
# (its XQuAD tasks), chosen with native_labels.
QA_LABELS = {"en": ("Context", "Question", "Answer"), "de": ("Kontext", "Frage", "Antwort"),
             "es": ("Contexto", "Pregunta", "Respuesta"), "it": ("Contesto", "Domanda", "Risposta"),
             "ar": ("السياق", "السؤال", "الإجابة"), "zh": ("上下文", "问题", "答案")}
LETTERS = ("A", "B", "C", "D")
# Translated BBH targets -> the English answer of the same (row-aligned) item; derived from the data.
BBH_TARGET_ALIASES = {
    "ar": {"(أ)": "(A)", "(ب)": "(B)", "(ج)": "(C)", "(د)": "(D)", "(هـ)": "(E)", "(و)": "(E)", "(ز)": "(G)",
           "(ح)": "(H)", "(أنا)": "(I)", "(ي)": "(J)", "(ك)": "(K)", "(ل)": "(L)", "(م)": "(M)", "(ن)": "(N)",
           "(ع)": "(P)", "(ص)": "(R)", "نعم": "Yes", "حقيقي": "True", "خطأ شنيع": "False", "صالح": "valid",
           "غير صالح": "invalid"},
    "de": {"(UND)": "(E)", "(ICH)": "(I)", "(Ö)": "(O)", "Ja": "Yes", "WAHR": "True", "FALSCH": "False",
           "gültig": "valid", "ungültig": "invalid"},
    "es": {"(Y)": "(E)", "(GRAMO)": "(G)", "(j)": "(J)", "(METRO)": "(M)", "(NORTE)": "(N)", "(PAG)": "(P)",
           "Sí": "Yes", "Verdadero": "True", "FALSO": "False", "válido": "valid", "inválido": "invalid"},
    "zh": {"真的": "True", "错误的": "False", "有效的": "valid", "无效的": "invalid"},
}


@dataclasses.dataclass(frozen=True)
class BenchItem:
    benchmark: str
    language: str
    task: str  # BBH task or MMLU subject; the benchmark's name for XQuAD/MLQA
    id: str  # aligned across languages where the files are (XQuAD, MMLU, BBH)
    prompt: str  # the harness's prompt text, before any chat template
    gold: tuple[str, ...]  # reference answers (XQuAD/MLQA), the letter (MMLU), the file's target (BBH)
    options: tuple[tuple[str, str], ...] = ()  # BBH: (label, text) of the options listed in the input

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.benchmark, self.language, self.id)


@dataclasses.dataclass
class Loaded:
    items: list[BenchItem]
    rows: collections.Counter  # (benchmark, language) -> data rows read
    defects: collections.Counter  # (benchmark, language, what) -> rows


def _read_csv(path: Path, header: bool, columns: int):
    """The rows of a CSV, each checked to have `columns` fields."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    csv.field_size_limit(1 << 30)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        if header:
            next(reader, None)
        for fields in reader:
            if len(fields) != columns:
                raise InputError(f"{path}:{reader.line_num}: {len(fields)} fields, expected {columns}")
            yield fields


def _strip_bom(fields: list[str], defects, where: tuple) -> list[str]:
    if any("\ufeff" in f for f in fields):
        defects[where + ("U+FEFF stripped",)] += 1
    return [f.replace("\ufeff", "") for f in fields]


_TEXT_LIST = re.compile(r"'(?:text|testo)'\s*:\s*\[\s*['\"](.*?)['\"]\s*\]", re.S)


def parse_answers(raw: str, defects, where: tuple) -> tuple[str, ...]:
    """Answer texts of a SQuAD-style `answers` field written as a Python dict literal (never eval'd).
    Translated keys (`testo`) and unescaped apostrophes inside a quoted answer are repaired and counted."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        match = _TEXT_LIST.search(raw)
        if not match:
            return ()
        defects[where + ("answers repaired (not a valid literal)",)] += 1
        return (match.group(1),)
    if not isinstance(value, dict):
        return ()
    if "text" not in value and "testo" in value:
        defects[where + ("answers under translated key 'testo'",)] += 1
    texts = value.get("text", value.get("testo", []))
    return tuple(t for t in texts if isinstance(t, str) and t.strip())


def qa_prompt(context: str, question: str, language: str, native_labels: bool) -> str:
    c, q, a = QA_LABELS[language if native_labels else "en"]
    return f"{c}: {context}\n\n{q}: {question}\n\n{a}:"


def _qa_items(benchmark, language, path, columns, native_labels, loaded: Loaded, ids=None) -> None:
    """columns: positions of (id or None for row numbers, context, question, answers); `ids` replaces the
    file's ids where they are broken."""
    where = (benchmark, language)
    for n, fields in enumerate(_read_csv(path, header=True, columns=4)):
        loaded.rows[where] += 1
        fields = _strip_bom(fields, loaded.defects, where)
        row_id, context, question, raw = (None if i is None else fields[i] for i in columns)
        answers = parse_answers(raw, loaded.defects, where)
        if not answers:
            loaded.defects[where + ("left out: no readable answer",)] += 1
            continue
        if not any(a in context for a in answers):
            loaded.defects[where + ("answer not found in the context",)] += 1
        item_id = ids[n] if ids else row_id or f"{n:05d}"
        loaded.items.append(BenchItem(benchmark, language, benchmark, item_id,
                                      qa_prompt(context, question, language, native_labels), answers))


def _load_xquad(data_dir: Path, language: str, loaded: Loaded, native_labels: bool = False, **_) -> None:
    path = data_dir / LANGUAGE_DIRS[language] / "XQUAD" / f"xquad_{language.upper()}.csv"
    ids = None
    if language == "it":  # ids machine-translated; Italian is row-aligned with English, whose ids stand in
        english = data_dir / LANGUAGE_DIRS["en"] / "XQUAD" / "xquad_EN.csv"
        ids = [fields[0] for fields in _read_csv(english, header=True, columns=4)]
        loaded.defects[("xquad", "it", "ids taken from the English file (translated ids)")] += len(ids)
    _qa_items("xquad", language, path, (0, 1, 2, 3), native_labels, loaded, ids)


def _load_mlqa(data_dir: Path, language: str, loaded: Loaded, native_labels: bool = False, **_) -> None:
    # Columns context, question, answers, id; the Italian ids are garbled, so rows are numbered instead.
    path = data_dir / LANGUAGE_DIRS[language] / "MLQA" / f"mlqa_{language.upper()}.csv"
    _qa_items("mlqa", language, path, (None, 0, 1, 2), native_labels, loaded)


def mmlu_files(folder: Path) -> dict[str, Path]:
    """Subject -> file; matched without underscores because the Arabic names drop some."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    return {p.name.removesuffix("_test.csv").replace("_", ""): p for p in sorted(folder.glob("*_test.csv"))}


def mmlu_question(fields: list[str], answer: str | None = None) -> str:
    lines = [fields[0].strip()] + [f"{letter}. {text}" for letter, text in zip(LETTERS, fields[1:5])]
    return "\n".join(lines) + "\nAnswer:" + (f" {answer}" if answer else "")


def _load_mmlu(data_dir: Path, language: str, loaded: Loaded, num_fewshot: int = 0, **_) -> None:
    """Subjects are those of the English folder, named as there. The first `num_fewshot` rows of a subject
    are its examples (the data has no dev split) and are not scored."""
    where = ("mmlu", language)
    english = mmlu_files(data_dir / LANGUAGE_DIRS["en"] / "MMLU")
    mine = mmlu_files(data_dir / LANGUAGE_DIRS[language] / "MMLU")
    for key, english_path in english.items():
        if key not in mine:
            raise InputError(f"{data_dir / LANGUAGE_DIRS[language] / 'MMLU'}: no file for subject "
                             f"{english_path.name.removesuffix('_test.csv')}")
        subject = english_path.name.removesuffix("_test.csv")
        rows = []
        for fields in _read_csv(mine[key], header=False, columns=6):
            loaded.rows[where] += 1
            fields = [f.strip() if i == 5 else f for i, f in enumerate(_strip_bom(fields, loaded.defects, where))]
            if fields[5] not in LETTERS:
                loaded.defects[where + ("left out: answer not A-D",)] += 1
                continue
            rows.append(fields)
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        examples = "".join(mmlu_question(f, f[5]) + "\n\n" for f in rows[:num_fewshot])
        for n, fields in enumerate(rows[num_fewshot:], num_fewshot):
            loaded.items.append(BenchItem("mmlu", language, subject, f"{subject}/{n:04d}",
                                          header + examples + mmlu_question(fields), (fields[5],)))


_OPTION = re.compile(r"^\s*(\([^()\s]{1,3}\))\s*(.+?)\s*$", re.M)


def _load_bbh(data_dir: Path, language: str, loaded: Loaded, **_) -> None:
    where = ("bbh", language)
    folder = data_dir / LANGUAGE_DIRS[language] / "BBH"
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise InputError(f"{folder}: no BBH task files")
    aliases = BBH_TARGET_ALIASES.get(language, {})
    for path in files:
        task = path.stem
        for n, fields in enumerate(_read_csv(path, header=True, columns=2)):
            loaded.rows[where] += 1
            question, target = (f.strip() for f in _strip_bom(fields, loaded.defects, where))
            if not target:
                loaded.defects[where + ("left out: empty target",)] += 1
                continue
            if target in aliases:
                loaded.defects[where + ("target translated (English alias used for flexible match)",)] += 1
            options = tuple((m.group(1), m.group(2)) for m in _OPTION.finditer(question))
            loaded.items.append(BenchItem("bbh", language, task, f"{task}/{n:04d}", f"Q: {question}\nA:",
                                          (target,), options))


LOADERS = {"xquad": _load_xquad, "mlqa": _load_mlqa, "mmlu": _load_mmlu, "bbh": _load_bbh}


def available_languages(benchmark: str, data_dir: Path) -> tuple[str, ...]:
    folder = {"xquad": "XQUAD", "mlqa": "MLQA", "mmlu": "MMLU", "bbh": "BBH"}[benchmark]
    return tuple(code for code, name in LANGUAGE_DIRS.items() if (data_dir / BENCH_DIR / name / folder).is_dir())


def check_request(benchmarks, languages, data_dir: Path) -> dict[str, tuple[str, ...]]:
    """benchmark -> languages to load; unknown benchmarks, or a language a benchmark lacks, are errors."""
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise InputError(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
    plan = {}
    for benchmark in benchmarks:
        have = available_languages(benchmark, data_dir)
        if not have:
            raise InputError(f"{data_dir / BENCH_DIR}: no {benchmark} data (see its README)")
        wanted = tuple(languages) if languages else have
        for code in wanted:
            if code not in LANGUAGE_DIRS:
                raise InputError(f"--languages: {code!r} is not one of {', '.join(LANGUAGE_DIRS)}")
            if code not in have:
                # With several benchmarks and an explicit list, a benchmark runs on the languages it has.
                if len(benchmarks) == 1:
                    raise InputError(f"{benchmark} has no data in {code!r} under {data_dir / BENCH_DIR}; "
                                     f"it has {', '.join(have)}")
        plan[benchmark] = tuple(c for c in wanted if c in have)
    return plan


def load_benchmarks(benchmarks, languages=None, data_dir=None, limit: int | None = None, seed: int | None = None,
                    num_fewshot: int = 0, native_labels: bool = False) -> Loaded:
    """Items of each benchmark in each language it has of `languages`; `limit` items per benchmark (the same
    ids in every language), the first ones or a seeded sample. Defects are counted over whole files."""
    data_dir = Path(data_dir) if data_dir else shared_data_dir()
    plan = check_request(benchmarks, languages, data_dir)
    loaded = Loaded([], collections.Counter(), collections.Counter())
    for benchmark, codes in plan.items():
        mine = Loaded([], loaded.rows, loaded.defects)
        for code in codes:
            LOADERS[benchmark](data_dir / BENCH_DIR, code, mine, num_fewshot=num_fewshot,
                               native_labels=native_labels)
        chosen = choose_ids([it.id for it in mine.items], limit, seed)
        loaded.items += [it for it in mine.items if it.id in chosen]
    return loaded
