"""Language codes and names used by the data tools (ISO 639-1 codes, optionally with a region: pt-BR)."""

from __future__ import annotations

from xlit_jax.errors import InputError

# FLORES-200 codes, as NLLB-200's tokenizer names its languages.
NLLB_CODES = {"en": "eng_Latn", "fr": "fra_Latn", "pt": "por_Latn", "ru": "rus_Cyrl", "de": "deu_Latn",
              "es": "spa_Latn", "it": "ita_Latn", "zh": "zho_Hans", "ar": "arb_Arab", "fi": "fin_Latn",
              "nl": "nld_Latn", "pl": "pol_Latn", "uk": "ukr_Cyrl", "ja": "jpn_Jpan", "ko": "kor_Hang"}

# NTREX-128 file codes (newstest2019-ref.{code}.txt).
NTREX_CODES = {"en": "eng", "fr": "fra", "pt": "por", "pt-BR": "por-BR", "ru": "rus", "de": "deu", "ar": "arb",
               "es": "spa", "it": "ita", "zh": "zho-CN"}

ENGLISH_NAMES = {"en": "English", "fr": "French", "pt": "Portuguese", "ru": "Russian", "de": "German",
                 "es": "Spanish", "it": "Italian", "zh": "Chinese", "ar": "Arabic", "fi": "Finnish",
                 "nl": "Dutch", "pl": "Polish", "uk": "Ukrainian", "ja": "Japanese", "ko": "Korean"}


def base(lang: str) -> str:
    """'pt-BR' -> 'pt'."""
    return lang.split("-")[0]


def english_name(lang: str) -> str:
    try:
        return ENGLISH_NAMES[base(lang)]
    except KeyError:
        raise InputError(f"no English name known for language {lang!r}: one of {', '.join(ENGLISH_NAMES)}") from None


def nllb_code(lang: str) -> str:
    """NLLB's code for `lang`; a code already in NLLB's form (fra_Latn) is returned as is."""
    if "_" in lang:
        return lang
    try:
        return NLLB_CODES[base(lang)]
    except KeyError:
        raise InputError(f"no NLLB code known for {lang!r}: pass it in NLLB's form (e.g. fra_Latn)") from None
