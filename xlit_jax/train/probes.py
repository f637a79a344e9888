"""Evaluation while training: the held-out loss and the language-drift probes, every train.eval_every steps.

A round (at step 0, before the first update; every eval_every steps; and at the last step) takes the state
being trained, as it is on the mesh:
  eval/loss                    the mean response-token NLL on data.eval_sources (held-out files: never in
                               data.sources), its first train.eval_batches micro-batches, fixed for the run
  probe/{lang}/language_correct  greedy answers to a fixed probe set (train.probe_prompts, one JSONL per
                               language) identified by fastText lid.176 as the prompt's language: the share
  probe/{lang}/line_pass       LCB's line-level pass rate (LPR, data/confusion.py) of those answers: the share
                               whose every line of 5 tokens or more fastText identifies as the prompt's
                               language (answers with no such line are left out, as LCB leaves them out)
  probe/{lang}/spelling        Hunspell's share of correctly spelled words, averaged over the answers in
                               the right language that have words to check (as xlit-eval's spelling scorer)
  probe/{lang}/response_tokens the mean number of new tokens (EOS not counted)
  harness/{task}/{metric}      lm-evaluation-harness's score of train.eval_harness's tasks, their first
                               train.harness_limit documents (evaluate/harness/training.py, handed to train())
Every process of a multi-process run takes part in each round (the sharded forward passes need every host);
process 0 writes. The row goes to metrics.jsonl and TensorBoard; the answers to workdir/probes.jsonl, one line
per prompt, keyed by step. A resumed run drops the rows after its checkpoint and redoes a round missing at its
step, so each curve has every round once. The optional stop rule ends a run whose language correctness in some
probe language stays below train.stop_below for train.stop_rounds rounds in a row.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import jax
import numpy as np

from xlit_jax import sharding
from xlit_jax.data import pipeline
from xlit_jax.data.confusion import Detector
from xlit_jax.data.langid import LanguageIdentifier
from xlit_jax.data.records import Turn, parse_source
from xlit_jax.data.spelling import SpellChecker
from xlit_jax.data.templates import get_template, prompt_text
from xlit_jax.decode.engine import generate_ids
from xlit_jax.errors import InputError
from xlit_jax.io.files import append_jsonl, read_jsonl
from xlit_jax.loader import Model
from xlit_jax.train import metrics

PROBES_FILE = "probes.jsonl"
LANG_PLACEHOLDER = "{lang}"


@dataclasses.dataclass(frozen=True)
class Probe:
    language: str
    id: str
    prompt: str


@dataclasses.dataclass
class Tools:
    """What a round needs that is read before training starts: the probe prompts, fastText, Hunspell and
    LCB's line-level detector (on the same fastText)."""

    probes: list[Probe]
    lid: LanguageIdentifier | None
    speller: SpellChecker | None
    lines: Detector | None


def read_rounds(workdir: str | Path) -> list[dict]:
    """The evaluation rows of a training workdir's metrics.jsonl, by step (none when it has none)."""
    path = Path(workdir) / metrics.METRICS_FILE
    rows = [row for _, row in read_jsonl(path, truncated_tail_ok=True)] if path.is_file() else []
    return sorted((r for r in rows if r.get("kind") == "eval"), key=lambda r: r["step"])


def languages(cfg) -> list[str]:
    return [lang.strip() for lang in cfg.train.probe_languages.split(",") if lang.strip()]


def read_probes(pattern: str, langs: list[str]) -> list[Probe]:
    """Every language's prompts (JSONL lines with "prompt" or "instruction", and "id"), keeping the ids that
    every language has, in the first language's order."""
    by_language = {}
    for lang in langs:
        path = Path(pattern.replace(LANG_PLACEHOLDER, lang))
        rows = {}
        for n, obj in read_jsonl(path):
            text = obj.get("prompt", obj.get("instruction")) if isinstance(obj, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"train.probe_prompts: {path}:{n}: no string field 'prompt' or 'instruction'")
            rows[str(obj.get("id", n))] = text
        if not rows:
            raise InputError(f"train.probe_prompts: {path} has no prompts")
        by_language[lang] = rows
    common = [i for i in by_language[langs[0]] if all(i in rows for rows in by_language.values())]
    if not common:
        raise InputError(f"train.probe_prompts: the files of {', '.join(langs)} share no prompt id")
    return [Probe(lang, i, by_language[lang][i]) for i in common for lang in langs]


def check(cfg, harness=None) -> Tools | None:
    """The settings checked, and the probe tools loaded, before any weights are: a bad one is a one-line
    InputError naming it. None when evaluation is off. `harness`: the lm-eval round of train.eval_harness."""
    t = cfg.train
    if not check_cadence(cfg):
        return None
    if t.eval_harness.strip() and harness is None:
        raise InputError("train.eval_harness: pass train() its tasks, harness=harness_round(cfg) "
                         "(xlit_jax.evaluate.harness.training), as xlit-train does")
    overlap = {parse_source(s).path for s in cfg.data.eval_sources} & {parse_source(s).path for s in cfg.data.sources}
    if overlap:
        raise InputError(f"data.eval_sources: {', '.join(sorted(overlap))} is also in data.sources; held-out "
                         "data must not be trained on")
    langs = languages(cfg)
    if not t.probe_prompts or not langs:
        if t.stop_below > 0:
            raise InputError("train.stop_below needs probes: set train.probe_prompts and train.probe_languages")
        if not cfg.data.eval_sources and harness is None:
            raise InputError("train.eval_every: nothing to evaluate; set data.eval_sources, train.probe_prompts "
                             "or train.eval_harness")
        return Tools([], None, None, None)
    lid = LanguageIdentifier()
    try:
        lid.check_languages(langs)
        speller = SpellChecker(langs)
    except InputError as e:
        raise InputError(f"train.probe_languages={t.probe_languages}: {e}") from None
    return Tools(read_probes(t.probe_prompts, langs), lid, speller, Detector(lid))


def check_cadence(cfg) -> bool:
    """Whether evaluation while training is on, after the checks that read nothing (a study runs them for
    every cell before its first stage): eval_every within the run, and the stop rule's checkpoints kept."""
    t = cfg.train
    if t.eval_every == 0:
        return False
    if not 0 < t.eval_every <= t.max_steps:
        raise InputError(f"train.eval_every={t.eval_every} must be between 1 and the run's train.max_steps="
                         f"{t.max_steps} (0 turns evaluation off)")
    if t.stop_below > 0:
        check_stop_rule(t.stop_rounds, t.eval_every, t.save_every, t.keep)
    return True


def check_stop_rule(rounds: int, every: int, save_every: int, keep: int) -> None:
    """The checkpoint before a fall must survive the saves of the `rounds` rounds that confirm it."""
    if rounds < 1:
        raise InputError(f"train.stop_rounds={rounds} must be at least 1")
    needed = math.ceil(rounds * every / save_every) + 1
    if keep and keep < needed:
        raise InputError(f"train.keep={keep} is too few for the stop rule: the checkpoint before a fall must "
                         f"outlive {rounds} rounds of {every} steps at one save per {save_every}; keep >= {needed}")


def fall(rounds: list[tuple[int, dict]], threshold: float, k: int) -> tuple[str, int, int | None] | None:
    """(language, step of its fall, step of the last round before it or None) when some language's value
    in `rounds` ((step, {language: language_correct}), by step) was below `threshold` in the last k rounds."""
    if threshold <= 0 or len(rounds) < k:
        return None
    for lang in rounds[-1][1]:
        below = [step for step, values in rounds[-k:] if values.get(lang, 1.0) < threshold]
        if len(below) == k:
            first = len(rounds) - k
            while first > 0 and rounds[first - 1][1].get(lang, 1.0) < threshold:
                first -= 1
            return lang, rounds[first][0], rounds[first - 1][0] if first else None
    return None


def eval_batches(cfg, tokenizer) -> dict[str, np.ndarray] | None:
    """The held-out micro-batches, stacked [n, B, L]: the first epoch of data.eval_sources, seeded as the
    training data, cut to train.eval_batches."""
    d = cfg.data
    if not d.eval_sources:
        return None
    mix = pipeline.load_mix(list(d.eval_sources), d.seed, d.skip_invalid)
    batches, _ = pipeline.build(mix, tokenizer, d.template, d.seq_len, d.tokens_per_batch, d.seed,
                                truncation=d.truncation, epochs=1)
    micro = [b for b, _ in zip(batches, range(cfg.train.eval_batches))]
    if not micro:
        raise InputError(f"data.eval_sources: {', '.join(d.eval_sources)} gave no examples")
    return {key: np.stack([m[key] for m in micro]) for key in pipeline.BATCH_KEYS}


def encode_probes(probes: list[Probe], template: str, tokenizer, limit: int, max_tokens: int):
    """(the probes kept, their prompt ids): the first `limit` ids whose prompt, in the training template, has
    at most `max_tokens` tokens in every language."""
    fmt = get_template(template, tokenizer)
    texts = [prompt_text(fmt, [Turn("user", p.prompt)]) for p in probes]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    too_long = {p.id for p, i in zip(probes, ids) if len(i) > max_tokens}
    chosen = [i for i in dict.fromkeys(p.id for p in probes) if i not in too_long][:limit]
    kept = [(p, i) for p, i in zip(probes, ids) if p.id in chosen]
    if not kept:
        raise InputError(f"train.probe_max_prompt_tokens={max_tokens}: no probe prompt is that short")
    return [p for p, _ in kept], [i for _, i in kept]


def respond(params, config, mesh, prompt_ids, max_new_tokens: int, repetition_penalty: float, lora=None,
            attention: str = "auto"):
    """Greedy answers (token ids, EOS stripped) of `params` (with `lora`'s adapters unmerged) as they lie on
    `mesh`, a slot per prompt. The engine decodes every slot over its whole cache (shrink=False), so a round
    compiles what the first did."""
    with sharding.activate(mesh):
        return generate_ids(params, config, prompt_ids, max_new_tokens=max_new_tokens,
                            repetition_penalty=repetition_penalty, slots=len(prompt_ids), attention=attention,
                            lora=lora, shrink=False)


def score(probes: list[Probe], texts: list[str], tools: Tools):
    """Per answer: the language fastText detects, language_correct, LCB's line_pass (answers with a line to
    count) and spelling (answers in the right language with words to check)."""
    details = []
    wanted = [p.language for p in probes]
    verdicts = tools.lines.verdicts(texts, wanted)
    for probe, text, (detected, _), verdict in zip(probes, texts, tools.lid.predict(texts), verdicts):
        row = {"detected": detected, "language_correct": float(detected == probe.language)}
        if verdict is not None:
            row["line_pass"] = float(not verdict["wrong"])
        if detected == probe.language:
            checked, bad = tools.speller.misspelled(text, probe.language)
            if checked:
                row["spelling"] = 1.0 - len(bad) / checked
        details.append(row)
    return details


class Evaluator:
    """Runs the rounds of one training run (see the module docstring)."""

    def __init__(self, cfg, tools: Tools, train_step, tokenizer, writer: metrics.MetricsWriter, workdir: Path,
                 start: int, harness=None):
        t = cfg.train
        self.harness, self.name = harness, cfg.model.hub_name or cfg.model.source
        self.every, self.max_steps, self.threshold, self.stop_rounds = t.eval_every, t.max_steps, t.stop_below, \
            t.stop_rounds
        self.train_step, self.writer, self.tools, self.tokenizer = train_step, writer, tools, tokenizer
        self.decoding = {"max_new_tokens": t.probe_max_new_tokens, "repetition_penalty": t.probe_repetition_penalty}
        batches = eval_batches(cfg, tokenizer)
        self.batches = None if batches is None else sharding.global_batch(batches, train_step.batch_sharding)
        self.probes, self.prompt_ids = ([], []) if not tools.probes else encode_probes(
            tools.probes, cfg.data.template, tokenizer, t.probe_limit, t.probe_max_prompt_tokens)
        self.path = workdir / PROBES_FILE
        done = [r for r in writer.rows if r.get("kind") == "eval"]
        self.done = {r["step"] for r in done}
        if writer.enabled:  # answers of rounds whose metrics row was lost go too: the round is redone
            metrics.rows_until(self.path, start, keep=lambda r: r["step"] in self.done)
        self.rounds = [(r["step"], self._correct(r)) for r in done]

    @staticmethod
    def _correct(row: dict) -> dict:
        return {key.split("/")[1]: v for key, v in row.items() if key.endswith("/language_correct")}

    def due(self, step: int) -> bool:
        return (step % self.every == 0 or step == self.max_steps) and step not in self.done

    def round(self, step: int, state) -> tuple[str, int, int | None] | None:
        """Evaluate `state` at `step`, write the row and the answers; the fall when the stop rule fires."""
        began = time.perf_counter()
        row = {"step": step, "kind": "eval"}
        if self.batches is not None:
            values = jax.device_get(self.train_step.evaluate(state, self.batches))
            row |= {"eval/loss": float(values["loss"]), "eval/target_tokens": float(values["target_tokens"])}
        if self.probes:
            row |= self._probe(step, state)
        if self.harness is not None:
            row |= self._harness(step, state)
        row["eval/seconds"] = time.perf_counter() - began
        self.writer.write(row)
        self.done.add(step)
        self.rounds.append((step, self._correct(row)))
        return fall(self.rounds, self.threshold, self.stop_rounds)

    def _harness(self, step: int, state) -> dict:
        """The harness tasks' scores of the state: a Model over its params as they lie on the mesh."""
        t, began = self.train_step, time.perf_counter()
        row = self.harness(Model(t.config, state.full_params(), self.tokenizer, self.name, t.attention, t.lora))
        logging.info("step %d: %s", step, {k: round(v, 4) for k, v in row.items()})
        return row | {"eval/harness_seconds": time.perf_counter() - began}

    def _probe(self, step: int, state) -> dict:
        t = self.train_step
        outputs = respond(state.full_params(), t.config, t.mesh, self.prompt_ids, **self.decoding, lora=t.lora,
                          attention=t.attention)
        texts = [self.tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
        details = score(self.probes, texts, self.tools)
        if self.writer.enabled:
            append_jsonl(self.path, [{"step": step, "language": p.language, "id": p.id, "prompt": p.prompt,
                                      "response": text, "new_tokens": len(o), **d}
                                     for p, text, o, d in zip(self.probes, texts, outputs, details)])
        row = {}
        for lang in dict.fromkeys(p.language for p in self.probes):
            mine = [(d, len(o)) for p, d, o in zip(self.probes, details, outputs) if p.language == lang]
            row[f"probe/{lang}/language_correct"] = float(np.mean([d["language_correct"] for d, _ in mine]))
            for name in ("line_pass", "spelling"):
                values = [d[name] for d, _ in mine if name in d]
                if values:
                    row[f"probe/{lang}/{name}"] = float(np.mean(values))
            row[f"probe/{lang}/response_tokens"] = float(np.mean([n for _, n in mine]))
        logging.info("step %d: %s", step, {k: round(v, 3) for k, v in row.items()})
        return row
