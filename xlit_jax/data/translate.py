"""Machine translation of instruction datasets, keeping their layout.

Every turn of a record is cut into units (`split_units`): fenced code blocks (``` or ~~~) and lines with
no letters are kept verbatim; a list or heading marker (`- `, `* `, `1. `, `2) `, `## `) and the
indentation before it are kept and only the text after it is translated; the rest is split into sentences,
each translated alone (MT models do best on single sentences), and joined back with the original spacing
and line breaks. Identical units are translated once.

Engines: `Seq2SeqTranslator`, an NLLB-200 model through transformers (default facebook/nllb-200-3.3B, as
in the paper; any NLLB-family checkpoint works), or `LLMTranslator`, which asks one of our own models
(`xlit_jax.load`) to translate. `translate_file` writes one JSONL of records per target language, appending
each finished chunk, so an interrupted run resumes where it stopped; a translated record keeps its id.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from xlit_jax.data.languages import english_name, nllb_code
from xlit_jax.data.records import Record, Turn
from xlit_jax.errors import InputError
from xlit_jax.io.files import append_jsonl, output_lock, resume_jsonl

DEFAULT_MT_MODEL = "facebook/nllb-200-3.3B"
LLM_PROMPT = "Translate the following text from {src} into {tgt}. Reply with the translation only.\n\n{text}"

Translator = Callable[[list[str], str, str], list[str]]  # (texts, source lang, target lang) -> translations

_FENCE = re.compile(r"\s*(```|~~~)")
_MARKER = re.compile(r"\s*(?:[-*+•]|\d{1,3}[.)]|#{1,6})\s+")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])\s+(?=[\"'“«(\[]?[A-ZÀ-ÞА-ЯЁ0-9])")


@dataclasses.dataclass(frozen=True)
class Unit:
    text: str
    translate: bool


def split_units(text: str) -> list[Unit]:
    """`text` as units whose texts join back to it exactly (see the module docstring)."""
    units: list[Unit] = []
    in_code = False
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        if _FENCE.match(body) or in_code:
            in_code ^= bool(_FENCE.match(body))
            units.append(Unit(line, False))
            continue
        marker = _MARKER.match(body)
        start = marker.end() if marker else 0
        units.append(Unit(body[:start], False))
        pos = start
        for br in _SENTENCE_BREAK.finditer(body, start):
            units += [_sentence(body[pos:br.start()]), Unit(br.group(), False)]
            pos = br.end()
        units += [_sentence(body[pos:]), Unit(line[len(body):], False)]
    return _joined(units)


def _sentence(text: str) -> Unit:
    return Unit(text, any(c.isalpha() for c in text))


def _joined(units: list[Unit]) -> list[Unit]:
    out: list[Unit] = []
    for u in units:
        if not u.text:
            continue
        if out and not out[-1].translate and not u.translate:
            out[-1] = Unit(out[-1].text + u.text, False)
        else:
            out.append(u)
    return out


def translate_records(records: Sequence[Record], translator: Translator, src: str, tgt: str) -> list[Record]:
    """The records with every turn translated from `src` to `tgt` (roles, ids and sources kept)."""
    split = [[split_units(t.content) for t in r.turns] for r in records]
    wanted = list(dict.fromkeys(u.text for turns in split for units in turns for u in units if u.translate))
    done = dict(zip(wanted, translator(wanted, src, tgt))) if wanted else {}
    return [r.replace(lang=tgt, turns=tuple(Turn(t.role, "".join(done[u.text] if u.translate else u.text
                                                                   for u in units))
                                            for t, units in zip(r.turns, turns)))
            for r, turns in zip(records, split)]


def translated_ids(output: str | Path, made_by: dict | None = None) -> set:
    """The ids already in `output`, after checking, given `made_by` (the engine and its settings), that each was
    translated so: a rerun never mixes translators in one file (rows of older versions, which recorded none,
    are taken as this run's)."""
    done = set()
    for number, row in enumerate(resume_jsonl(output), 1):  # our rows are one per line
        theirs = row.get("translated_by", made_by)
        if made_by is not None and theirs != made_by:
            raise InputError(f"{output}:{number}: translated by {theirs}, but this run translates with {made_by}; "
                             "use another output folder or the same settings")
        done.add(row.get("id"))
    return done


def translate_file(records: Sequence[Record], translator: Translator, src: str, tgt: str, output: str | Path,
                   chunk_size: int = 64, progress: bool = True, made_by: dict | None = None) -> dict[str, int]:
    """Translates the records not yet in `output` (by id), appending chunk by chunk, each row recording
    `made_by` as "translated_by" when given (translated_ids). A record with a turn that translated to nothing
    is left out and counted as `failed` (a rerun tries it again)."""
    output = Path(output)
    with output_lock(output):  # a second translator of the same file is refused while this one writes
        output.parent.mkdir(parents=True, exist_ok=True)
        done = translated_ids(output, made_by)
        todo = [r for r in records if r.id not in done]
        counts = {"translated": 0, "failed": 0, "done_before": len(records) - len(todo)}
        with tqdm(total=len(records), initial=counts["done_before"], desc=f"{src}->{tgt}", unit="record",
                  disable=not progress) as bar:
            for i in range(0, len(todo), chunk_size):
                chunk = translate_records(todo[i:i + chunk_size], translator, src, tgt)
                good = [r for r in chunk if all(t.content.strip() for t in r.turns)]
                append_jsonl(output, [r.to_json() | ({"translated_by": made_by} if made_by else {}) for r in good])
                counts["translated"] += len(good)
                counts["failed"] += len(chunk) - len(good)
                bar.update(len(chunk))
        return counts


class Seq2SeqTranslator:
    """An NLLB-200-family model (hub name or local directory) through transformers' generate."""

    def __init__(self, model: str = DEFAULT_MT_MODEL, device: str | None = None, batch_size: int = 16,
                 num_beams: int = 4, max_new_tokens: int = 256, max_input_tokens: int = 512):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(model).to(self.device).eval()
        except OSError as e:  # not on the hub, no network (transformers says which), or a path that is not there
            reason = "no such directory" if model.startswith(("/", ".", "~")) else str(e).splitlines()[0]
            raise InputError(f"{model}: cannot load the MT model: {reason}") from None
        self.batch_size, self.num_beams = batch_size, num_beams
        self.max_new_tokens, self.max_input_tokens = max_new_tokens, max_input_tokens

    def _language_id(self, lang: str) -> int:
        code = nllb_code(lang)
        token_id = self.tokenizer.convert_tokens_to_ids(code)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the MT model's tokenizer has no language token {code!r} (for {lang!r})")
        return token_id

    def __call__(self, texts: list[str], src: str, tgt: str) -> list[str]:
        import torch

        self._language_id(src)
        self.tokenizer.src_lang = nllb_code(src)
        forced = self._language_id(tgt)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths share a batch
        out = [""] * len(texts)
        for k in range(0, len(order), self.batch_size):
            batch = order[k:k + self.batch_size]
            inputs = self.tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                                    truncation=True, max_length=self.max_input_tokens).to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, forced_bos_token_id=forced, num_beams=self.num_beams,
                                          max_new_tokens=self.max_new_tokens)
            for i, text in zip(batch, self.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                out[i] = text.strip()
        return out


class LLMTranslator:
    """Asks a chat model loaded by `xlit_jax.load` to translate, one unit per prompt (greedy decoding)."""

    def __init__(self, model, slots: int = 8, max_new_tokens: int = 256, repetition_penalty: float = 1.0):
        self.model, self.slots = model, slots
        self.max_new_tokens, self.repetition_penalty = max_new_tokens, repetition_penalty

    def __call__(self, texts: list[str], src: str, tgt: str) -> list[str]:
        prompts = [[{"role": "user", "content": LLM_PROMPT.format(src=english_name(src), tgt=english_name(tgt),
                                                                  text=text)}] for text in texts]
        outputs = self.model.generate(prompts, max_new_tokens=self.max_new_tokens, slots=self.slots,
                                      repetition_penalty=self.repetition_penalty)
        return [o.strip() for o in outputs]
