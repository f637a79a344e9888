"""Score one model on XQuAD, MLQA, MMLU and BBH as lm-evaluation-harness 0.4 does, resumably.

Generative benchmarks decode greedily (no repetition penalty) up to the harness's token budget (256, its
HF backend's `max_gen_toks`) and cut the text at the first stop sequence, which is what the harness's
`until` gives. MMLU is scored by the log-likelihood of " A" ... " D" after the prompt. Each item
is written to item_scores.jsonl as soon as its batch finishes, keyed like every other score of
xlit-eval, so a rerun only does what is missing. Timing per benchmark and language goes to timings.jsonl.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from pathlib import Path

from tqdm import tqdm

from xlit_jax.errors import InputError
from xlit_jax.evaluate.harness import metrics
from xlit_jax.evaluate.harness.data import BBH_TARGET_ALIASES, GENERATIVE, LETTERS, BenchItem, load_benchmarks
from xlit_jax.evaluate.items import ITEM_SCORES_FILE, check_model, score_key
from xlit_jax.evaluate.report import BENCHMARK_SCORER, DEFECTS_FILE, write_report
from xlit_jax.io.files import append_jsonl, atomic_write_text, output_lock, resume_jsonl

log = logging.getLogger(__name__)

TIMINGS_FILE = "timings.jsonl"
# lm-evaluation-harness 0.4's generate_until budget (HFLM max_gen_toks) when a task sets none, as XQuAD,
# MLQA and BBH's zero-shot tasks do. A smaller one (--bench_max_new_tokens) cuts long answers short.
HARNESS_MAX_NEW_TOKENS = 256
STOPS = {"xquad": ("\n",), "mlqa": ("\n",), "bbh": ("</s>", "Q:", "<|im_end|>")}
# XQuAD's scoring: squad (the harness's XQuAD tasks) or mlqa (MLQA's per-language rules, as its MLQA tasks).
QA_NORMALIZATIONS = ("squad", "mlqa")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    benchmarks: tuple[str, ...] = ("xquad", "mlqa", "mmlu", "bbh")
    languages: tuple[str, ...] | None = None  # None: every language each benchmark has
    limit: int | None = None  # items per benchmark, the same ids in every language
    seed: int | None = None  # with limit: a seeded sample instead of the first ids
    num_fewshot: int = 0  # MMLU examples, taken from each subject's first rows
    chat_template: bool = False  # wrap each prompt in the model's chat template
    native_labels: bool = False  # XQuAD/MLQA labels in the prompt's language instead of English
    max_new_tokens: int = HARNESS_MAX_NEW_TOKENS  # XQuAD, MLQA, BBH
    xquad_normalization: str = QA_NORMALIZATIONS[0]
    batch_size: int = 8  # the decoding engine's slots (XQuAD, MLQA, BBH); packs per call (MMLU)
    data_dir: str | None = None

    def settings(self, benchmark: str) -> dict:
        """What a stored row of `benchmark` must have been produced with to be reused."""
        if benchmark == "mmlu":
            return {"chat_template": self.chat_template, "num_fewshot": self.num_fewshot}
        budget = {"chat_template": self.chat_template, "max_new_tokens": self.max_new_tokens}
        if benchmark == "bbh":
            return budget
        scoring = {"normalization": self.xquad_normalization} if benchmark == "xquad" else {}
        return {**budget, "native_labels": self.native_labels, **scoring}


class ScoredOutDir:
    """An out_dir's item-score file, as our benchmarks and lm-eval's tasks share it: rows of another model are
    refused, and `scorer`'s rows of a set count as done only under this run's settings (`config.settings`)."""
    scorer: str
    out_dir: Path
    config: BenchConfig  # or lm-eval's config: whatever has `settings(set)`

    @property
    def scores_path(self) -> Path:
        return self.out_dir / ITEM_SCORES_FILE

    def _done(self, model_name: str) -> set[tuple]:
        done = set()
        for number, row in enumerate(resume_jsonl(self.scores_path), 1):
            where = f"{self.scores_path}:{number}"
            check_model(where, row, model_name)
            wanted = self.config.settings(row.get("set")) if row.get("scorer") == self.scorer else None
            if wanted is not None and row.get("settings") != wanted:
                raise InputError(f"{where}: scored with {row.get('settings')}, but this run asks for {wanted}; "
                                 "use another --out_dir or the same settings")
            done.add(score_key(row))
        return done

    def check(self, model_name: str) -> None:
        """Refuse, before a model loads, an out_dir that holds another model's results or other settings'."""
        self._done(model_name)


def defects_csv(loaded) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["benchmark", "language", "rows", "defect", "count"])
    for (benchmark, language, what), count in sorted(loaded.defects.items()):
        writer.writerow([benchmark, language, loaded.rows[(benchmark, language)], what, count])
    return buffer.getvalue()


class BenchmarkEvaluation(ScoredOutDir):
    """One model's benchmark scores in `out_dir`. Construction reads and checks all data; `run` scores."""
    scorer = BENCHMARK_SCORER

    def __init__(self, out_dir, config: BenchConfig = BenchConfig()):
        if config.batch_size < 1:
            raise InputError("batch_size must be positive")
        if config.num_fewshot < 0:
            raise InputError("--num_fewshot must be 0 or more")
        if config.max_new_tokens < 1:
            raise InputError("--bench_max_new_tokens must be positive")
        if config.xquad_normalization not in QA_NORMALIZATIONS:
            raise InputError(f"--xquad_normalization: {config.xquad_normalization!r} is not one of "
                             f"{', '.join(QA_NORMALIZATIONS)}")
        self.config, self.out_dir = config, Path(out_dir)
        self.loaded = load_benchmarks(config.benchmarks, config.languages, config.data_dir, config.limit,
                                      config.seed, config.num_fewshot, config.native_labels)
        if not self.loaded.items:
            raise InputError(f"no items selected from {', '.join(config.benchmarks)}")

    def _text(self, model, item: BenchItem) -> str:
        """The harness's prompt, or it as a user turn in the model's chat template."""
        if not self.config.chat_template:
            return item.prompt
        return model.tokenizer.apply_chat_template([{"role": "user", "content": item.prompt}], tokenize=False,
                                                   add_generation_prompt=True)

    def _prompt_ids(self, model, item: BenchItem) -> list[int]:
        """No special tokens (no BOS) beyond the template's, as the harness encodes a raw prompt."""
        return model.tokenizer(self._text(model, item), add_special_tokens=False).input_ids

    def _row(self, model_name: str, item: BenchItem, prediction, scores: dict, **details) -> dict:
        return {"model": model_name, "set": item.benchmark, "language": item.language, "id": item.id,
                "scorer": BENCHMARK_SCORER, "task": item.task, "prediction": prediction, "gold": list(item.gold),
                "scores": scores, **details, "settings": self.config.settings(item.benchmark)}

    def _generate(self, model, model_name: str, items: list[BenchItem]) -> dict:
        benchmark = items[0].benchmark
        ids = [self._prompt_ids(model, it) for it in items]
        progress = tqdm(total=len(items), desc=f"{benchmark}/{items[0].language}", unit="item")
        new_tokens = 0

        def save(index, output):
            nonlocal new_tokens
            new_tokens += len(output)
            item = items[index]
            text = metrics.cut_at_stop(model.tokenizer.decode(output, skip_special_tokens=True), STOPS[benchmark])
            append_jsonl(self.scores_path, [self._row(model_name, item, text, self._score_text(item, text))])
            progress.update(1)

        model.generate_ids(ids, self.config.max_new_tokens, 1.0, slots=self.config.batch_size, on_finished=save)
        progress.close()
        return {"prompt_tokens": sum(map(len, ids)), "new_tokens": new_tokens}

    def _score_text(self, item: BenchItem, text: str) -> dict:
        if item.benchmark == "bbh":
            return metrics.bbh_scores(text, item.gold[0], item.task, item.options,
                                      BBH_TARGET_ALIASES.get(item.language, {}))
        if item.benchmark == "xquad" and self.config.xquad_normalization == "squad":
            return metrics.squad_scores(text, item.gold[0])
        return metrics.qa_scores(text.strip(), item.gold, item.language)

    def _choose(self, model, model_name: str, items: list[BenchItem]) -> dict:
        contexts = [self._text(model, it) for it in items]
        pairs = [(context, f" {letter}") for context in contexts for letter in LETTERS]
        found: dict[int, tuple[float, bool]] = {}
        written: set[int] = set()
        progress = tqdm(total=len(items), desc=f"mmlu/{items[0].language}", unit="item")

        def save(indices, results):
            found.update(zip(indices, results))
            ready = sorted({i // len(LETTERS) for i in indices} - written)
            ready = [q for q in ready if all(q * len(LETTERS) + k in found for k in range(len(LETTERS)))]
            rows = []
            for q in ready:
                logliks = [found[q * len(LETTERS) + k][0] for k in range(len(LETTERS))]
                item = items[q]
                scores = metrics.choice_scores(logliks, LETTERS.index(item.gold[0]), [1] * len(LETTERS))
                rows.append(self._row(model_name, item, LETTERS[logliks.index(max(logliks))], scores,
                                      logliks=logliks))
            written.update(ready)
            append_jsonl(self.scores_path, rows)
            progress.update(len(rows))

        model.loglikelihood(pairs, self.config.batch_size, on_batch=save)
        progress.close()
        prompt_tokens = sum(len(model.tokenizer(c, add_special_tokens=False).input_ids) for c in contexts)
        return {"prompt_tokens": prompt_tokens, "new_tokens": 0}

    def run(self, model, model_name: str | None = None) -> dict[str, Path]:
        """Score what is not scored yet; a second run into the same out_dir is refused while this one writes."""
        with output_lock(self.out_dir, folder=True):
            return self._run(model, model_name or model.name)

    def _run(self, model, model_name: str) -> dict[str, Path]:
        done = self._done(model_name)
        atomic_write_text(self.out_dir / DEFECTS_FILE, defects_csv(self.loaded))
        groups: dict[tuple, list[BenchItem]] = {}
        for item in self.loaded.items:
            if (model_name, *item.key, BENCHMARK_SCORER) not in done:
                groups.setdefault((item.benchmark, item.language), []).append(item)
        for (benchmark, language), items in groups.items():
            start = time.perf_counter()
            stage = self._generate if benchmark in GENERATIVE else self._choose
            counts = stage(model, model_name, items)
            seconds = time.perf_counter() - start
            tokens = counts["prompt_tokens"] + counts["new_tokens"]
            append_jsonl(self.out_dir / TIMINGS_FILE, [
                {"model": model_name, "benchmark": benchmark, "language": language, "items": len(items),
                 **counts, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}])
            log.info("%s/%s: %d items in %.1f s (%.0f tokens/s)", benchmark, language, len(items), seconds,
                     tokens / seconds)
        written = write_report([self.out_dir], self.out_dir)
        written["item_scores"] = self.scores_path
        written["defects"] = self.out_dir / DEFECTS_FILE
        return written
