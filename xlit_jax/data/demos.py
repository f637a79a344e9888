"""Translation-following demonstrations (CrossAlpaca): "translate this" instructions answered by a reference
translation, built from a parallel corpus and mixed into instruction data.

A demonstration's user turn is an instruction phrasing, a blank line, then the sentence; its answer is the
aligned sentence in the other language. The phrasing is drawn at random from `PHRASINGS[lang]`, where
`lang` is the source or the target language of that demonstration (`instruction_lang="source"`/`"target"`)
or a fixed language code. Directions: `forward` (corpus source -> target), `backward`, or both (one
demonstration each way per sentence pair). The record's `lang` is the language of its answer.

Corpora: two line-aligned text files (`load_parallel`), NTREX-128 by language code (`load_ntrex`), or
an HF dataset with two text fields (`load_parallel_hf`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from xlit_jax.data.languages import ENGLISH_NAMES, NTREX_CODES, base
from xlit_jax.data.pipeline import downsample
from xlit_jax.data.records import Record, Turn
from xlit_jax.errors import InputError

DIRECTIONS = ("forward", "backward")

# Language names as each phrasing language's sentences need them (French "en anglais", German "ins
# Englische", Russian "на английский язык").
NAMES = {
    "en": ENGLISH_NAMES,
    "fr": {"en": "anglais", "fr": "français", "pt": "portugais", "ru": "russe", "de": "allemand"},
    "pt": {"en": "inglês", "fr": "francês", "pt": "português", "ru": "russo", "de": "alemão"},
    "ru": {"en": "английский", "fr": "французский", "pt": "португальский", "ru": "русский", "de": "немецкий"},
    "de": {"en": "Englische", "fr": "Französische", "pt": "Portugiesische", "ru": "Russische", "de": "Deutsche",
           "es": "Spanische", "it": "Italienische", "zh": "Chinesische", "ar": "Arabische"},
    # CrossAlpaca's benchmark languages. Arabic names take the article: "إلى اللغة الإنجليزية".
    "es": {"en": "inglés", "es": "español", "de": "alemán", "it": "italiano", "zh": "chino", "ar": "árabe",
           "fr": "francés"},
    "it": {"en": "inglese", "it": "italiano", "de": "tedesco", "es": "spagnolo", "zh": "cinese", "ar": "arabo",
           "fr": "francese"},
    "zh": {"en": "英文", "zh": "中文", "de": "德文", "es": "西班牙文", "it": "意大利文", "ar": "阿拉伯文",
           "fr": "法文"},
    "ar": {"en": "الإنجليزية", "ar": "العربية", "de": "الألمانية", "es": "الإسبانية", "it": "الإيطالية",
           "zh": "الصينية", "fr": "الفرنسية"},
}

PHRASINGS = {
    "en": ("Translate the following text from {src} into {tgt}.",
           "What is the {tgt} translation of this sentence?",
           "Please render this text in {tgt}.",
           "How would you say this in {tgt}?",
           "Translate into {tgt}:"),
    "fr": ("Traduis le texte suivant en {tgt}.",
           "Peux-tu traduire cette phrase en {tgt} ?",
           "Donne la traduction en {tgt} du texte ci-dessous.",
           "Comment dit-on ceci en {tgt} ?"),
    "pt": ("Traduza o seguinte texto para {tgt}.",
           "Qual é a tradução em {tgt} desta frase?",
           "Por favor, traduza para {tgt}:",
           "Como se diz isto em {tgt}?"),
    "ru": ("Переведи следующий текст на {tgt} язык.",
           "Переведите это предложение на {tgt} язык, пожалуйста.",
           "Сделай перевод на {tgt} язык:",
           "Нужен перевод этого текста на {tgt} язык."),
    "de": ("Übersetze den folgenden Text ins {tgt}.",
           "Bitte übersetze diesen Satz ins {tgt}.",
           "Wie lautet die Übersetzung ins {tgt}?",
           "Gib die Übersetzung ins {tgt} an:"),
    "es": ("Traduce el siguiente texto al {tgt}.",
           "¿Cómo se dice esto en {tgt}?",
           "Por favor, traduce esta frase al {tgt}:",
           "Dame la traducción al {tgt} de este texto."),
    "it": ("Traduci il seguente testo in {tgt}.",
           "Come si dice questo in {tgt}?",
           "Per favore, traduci questa frase in {tgt}:",
           "Qual è la traduzione in {tgt} di questo testo?"),
    "zh": ("请把下面的文字翻译成{tgt}。",
           "这句话用{tgt}怎么说？",
           "请将以下内容译为{tgt}：",
           "把这段话翻译成{tgt}。"),
    "ar": ("ترجم النص التالي إلى اللغة {tgt}.",
           "ما الترجمة {tgt} لهذه الجملة؟",
           "من فضلك ترجم هذا إلى {tgt}:",
           "كيف نقول هذا باللغة {tgt}؟"),
}
# CrossAlpaca's benchmark languages besides English: xlit-demos's default.
BENCHMARK_LANGUAGES = ("ar", "de", "es", "it", "zh")


def load_parallel(src_path: str | Path, tgt_path: str | Path) -> list[tuple[str, str]]:
    """Aligned (source, target) lines; CRLF endings are stripped. A pair with an empty side is an error."""
    sides = [Path(p).read_text(encoding="utf-8").splitlines() for p in (src_path, tgt_path)]
    if len(sides[0]) != len(sides[1]):
        raise InputError(f"{src_path} has {len(sides[0])} lines but {tgt_path} has {len(sides[1])}: "
                         "parallel files must be line-aligned")
    pairs = []
    for number, (src, tgt) in enumerate(zip(*sides), 1):
        for path, text in ((src_path, src), (tgt_path, tgt)):
            if not text.strip():
                raise InputError(f"{path}:{number}: empty line in a parallel file")
        pairs.append((src.strip(), tgt.strip()))
    return pairs


def load_ntrex(directory: str | Path, src: str, tgt: str) -> list[tuple[str, str]]:
    """NTREX-128 pairs: English is newstest2019-src.eng.txt, other languages newstest2019-ref.{code}.txt."""
    def path(lang):
        if lang not in NTREX_CODES:
            raise InputError(f"NTREX language {lang!r}: one of {', '.join(NTREX_CODES)}")
        kind = "src" if lang == "en" else "ref"
        return Path(directory) / f"newstest2019-{kind}.{NTREX_CODES[lang]}.txt"
    return load_parallel(path(src), path(tgt))


def load_parallel_hf(name: str, src_field: str, tgt_field: str, split: str = "train") -> list[tuple[str, str]]:
    """Pairs from an HF dataset; a field may be dotted into nested columns, e.g. translation.fr."""
    import datasets

    def get(row, field, i):
        value = row
        for key in field.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{name}[{split}]:row {i}:{field}: missing or empty")
        return value.strip()

    table = datasets.load_dataset(name, split=split)
    return [(get(row, src_field, i), get(row, tgt_field, i)) for i, row in enumerate(table)]


def instruction(rng: random.Random, phrasing_lang: str, src: str, tgt: str) -> str:
    lang = base(phrasing_lang)
    if lang not in PHRASINGS:
        raise InputError(f"no translation instructions written in {phrasing_lang!r}: one of {', '.join(PHRASINGS)}")
    names = NAMES[lang]
    missing = [x for x in (src, tgt) if base(x) not in names]
    if missing:
        raise InputError(f"no name for {missing[0]!r} in {lang} phrasings: one of {', '.join(names)}")
    return rng.choice(PHRASINGS[lang]).format(src=names[base(src)], tgt=names[base(tgt)])


def make_demos(pairs: Sequence[tuple[str, str]], src: str, tgt: str, corpus: str = "parallel",
               directions: Sequence[str] = DIRECTIONS, instruction_lang: str = "target", seed: int = 0,
               max_pairs: int | None = None) -> list[Record]:
    """Demonstrations from aligned pairs in languages (src, tgt), from a random subset of `max_pairs` pairs if
    given; ids name the pair's line in the corpus: `{corpus}-{line index}-{from}-{to}`."""
    unknown = set(directions) - set(DIRECTIONS)
    if unknown or not directions:
        raise InputError(f"directions must be some of {DIRECTIONS}, got {list(directions)}")
    chosen = range(len(pairs))
    if max_pairs is not None and max_pairs < len(pairs):
        chosen = downsample(chosen, max_pairs, seed)
    rng = random.Random(seed)
    demos = []
    for i in chosen:
        for direction in directions:
            (a, b), (la, lb) = (pairs[i], (src, tgt)) if direction == "forward" else (pairs[i][::-1], (tgt, src))
            phrasing_lang = {"source": la, "target": lb}.get(instruction_lang, instruction_lang)
            turns = (Turn("user", f"{instruction(rng, phrasing_lang, la, lb)}\n\n{a}"), Turn("assistant", b))
            demos.append(Record(f"{corpus}-{i}-{la}-{lb}", turns, lb, f"demos/{corpus}"))
    return demos


def mix(instructions: Sequence[Record], demos: Sequence[Record], ratio: float, seed: int = 0) -> list[Record]:
    """Instruction records plus demonstrations drawn so that they make up `ratio` of the result."""
    if not 0 <= ratio < 1:
        raise InputError(f"the demonstration ratio must be in [0, 1), got {ratio}")
    n = round(ratio / (1 - ratio) * len(instructions))
    if n > len(demos):
        raise InputError(f"ratio {ratio} with {len(instructions)} instruction records needs {n} demonstrations; "
                         f"only {len(demos)} were made: lower the ratio or give more parallel pairs")
    return [*instructions, *downsample(list(demos), n, seed)]
