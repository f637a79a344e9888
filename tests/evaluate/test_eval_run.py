import dataclasses
import json
import re
import shutil
import subprocess
import sys

import pytest

from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions.run import EvalConfig, Evaluation, evaluate_model
from xlit_jax.evaluate.report import write_report

from support import REPO, FakeOpenAI, ScriptedModel

KEY = "sk-run-test-4411"
GOOD = ('{"Language": 3, "Fluency": 2, "Helpfulness": 3, "Accuracy": 3, "Logical coherence": 3, '
        '"Harmlessness": 3}')


@pytest.fixture
def config(shared_data):
    return EvalConfig(languages=("en", "fr"), limit=3, metrics=("language", "spelling"), batch_size=2,
                      max_new_tokens=16, data_dir=str(shared_data))


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_generates_scores_and_reports(tmp_path, config):
    model = ScriptedModel()
    written = evaluate_model(model, tmp_path, config)
    generations = rows(tmp_path / "generations.jsonl")
    assert len(generations) == 6 and len({(g["set"], g["language"], g["id"]) for g in generations}) == 6
    assert model.calls == [{"max_new_tokens": 16, "repetition_penalty": 1.1}]
    assert generations[0]["decoding"] == {"max_new_tokens": 16, "repetition_penalty": 1.1}
    assert generations[0]["response"] == generations[0]["messages"][-1]["content"]
    assert len(rows(tmp_path / "item_scores.jsonl")) == 12
    aggregates = {(r["language"], r["metric"]): r for r in rows(written["scores"])}
    assert aggregates[("fr", "language_correct")]["mean"] == 1.0 and aggregates[("fr", "language_correct")]["n"] == 3
    assert 0.9 <= aggregates[("en", "spelling")]["mean"] <= 1.0  # the prompts themselves, well spelled
    assert "| scripted | fr | 100.0 (3) |" in written["markdown"].read_text()
    assert written["csv"].read_text().startswith("model,set,language,modifier,scorer,metric,mean,n,items,errors\n")
    assert written["surface_metrics.chirkova"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupted_run_resumes_without_redoing_work(tmp_path, config):
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(ScriptedModel(stop_after=2), tmp_path, config)
    generations = tmp_path / "generations.jsonl"
    assert len(rows(generations)) == 2
    with open(generations, "a", encoding="utf-8") as f:
        f.write('{"model": "scripted", "set": "chir')  # a writer killed mid-line
    model = ScriptedModel()
    evaluate_model(model, tmp_path, config)
    assert len(model.prompts_seen) == 4
    assert len({(g["language"], g["id"]) for g in rows(generations)}) == len(rows(generations)) == 6
    scores_before = (tmp_path / "item_scores.jsonl").read_text()
    again = ScriptedModel()
    evaluate_model(again, tmp_path, config)
    assert again.prompts_seen == [] and (tmp_path / "item_scores.jsonl").read_text() == scores_before


def test_another_model_or_other_settings_are_refused_before_work(tmp_path, config):
    evaluate_model(ScriptedModel(), tmp_path, config)
    other = ScriptedModel(name="other")
    with pytest.raises(InputError, match=r"generations.jsonl:1: holds results of model 'scripted'.*'other'"):
        evaluate_model(other, tmp_path, config)
    with pytest.raises(InputError, match="generated with .*'max_new_tokens': 16.* asks for .*32"):
        evaluate_model(other, tmp_path, dataclasses.replace(config, max_new_tokens=32), model_name="scripted")
    assert other.calls == []


@pytest.mark.parametrize("change, message", [
    ({"languages": ("en", "xx")}, "has no language 'xx'"),
    ({"lid_model": "/nonexistent/lid.176.bin"}, "no fastText language-id model"),
    ({"dictionary_dir": "/nonexistent"}, "missing Hunspell dictionary"),
    ({"metrics": ("language", "fluency")}, "unknown metrics"),
    ({"metrics": ("relevance",)}, "needs --relevance_judge"),
    ({"metrics": ("relevance",), "relevance_prompt": "/nonexistent.txt"}, "no such relevance prompt template"),
    ({"metrics": ("judge",)}, "needs --judge_model"),
])
def test_bad_input_fails_before_anything_is_written(tmp_path, config, change, message):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message):
        Evaluation(out, dataclasses.replace(config, **change))
    assert not out.exists()


def list_when_asked(text):
    asked = re.search(r"List (\d+) options", text)
    return "\n".join(f"- option {i}" for i in range(int(asked.group(1)))) if asked else text


def test_modifier_fulfilment_by_type(tmp_path, shared_data):
    config = EvalConfig(eval_sets=("chirkova_modifiers",), languages=("en",), subset=("num_items_*", "lang_*"),
                        metrics=("modifiers",), data_dir=str(shared_data))
    written = evaluate_model(ScriptedModel(reply=list_when_asked), tmp_path, config)
    fulfilled = {r["modifier"]: r for r in rows(written["scores"]) if r["metric"] == "fulfilled"}
    assert fulfilled["num_items"]["mean"] == 1.0 and fulfilled["num_items"]["n"] == 12
    assert fulfilled["lang"]["mean"] == 0.0 and fulfilled["lang"]["n"] == 100  # echoed English, asked fr/pt/ru
    assert fulfilled["all"]["n"] == 112
    assert "| scripted | num_items | 100.0 (12) |" in written["markdown"].read_text()


def test_answer_in_x_modifiers_take_x_as_the_right_language(tmp_path, shared_data, monkeypatch, loopback_only):
    """`lang_fr` on an English prompt: a French answer is in the right language for the surface metrics and
    for the judge's wrong-language rule (decided by language identification, since the judge compares with
    the prompt's language: it gives Language 1 star to every answer here); an English answer is not."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    french = "La capitale de la France est Paris, une très belle ville au bord de la Seine."
    english = "The capital of France is Paris, a very beautiful city on the river Seine."
    with FakeOpenAI(lambda prompt, attempt: (200, GOOD.replace('"Language": 3', '"Language": 1'))) as server:
        results = {}
        for name, reply in (("french", french), ("english", english)):
            config = EvalConfig(eval_sets=("chirkova_modifiers",), languages=("en",), subset=("lang_fr",), limit=2,
                                metrics=("language", "spelling", "modifiers", "judge"), judge_model="gpt-3.5-turbo",
                                judge_base_url=server.base_url, data_dir=str(shared_data))
            written = evaluate_model(ScriptedModel(name=name, reply=lambda text, r=reply: r), tmp_path / name, config)
            results[name] = {(r["scorer"], r["id"]): r for r in rows(written["item_scores"])}
    for (scorer, _), row in results["french"].items():
        assert row["modifier"] == "lang_fr"
        if scorer == "language":
            assert row["scores"] == {"language_correct": 1.0} and row["details"]["detected"] == "fr"
        elif scorer == "spelling":
            assert row["scores"]["spelling"] == 1.0  # checked with the French dictionary
        elif scorer == "modifiers":
            assert row["scores"] == {"fulfilled": 1.0}
        else:  # the judge's Language (vs the prompt's English) is left out; the rest counts
            assert set(row["scores"]) == {f"judge_{c}" for c in ("fluency", "helpfulness", "accuracy",
                                                                 "logical_coherence", "harmlessness")}
            assert row["details"]["detected"] == "fr" and row["details"]["stars"]["language"] == 1
    english_rows = results["english"].values()
    assert {r["scorer"]: r["scores"] for r in english_rows if r["scorer"] in ("language", "modifiers", "judge")} == {
        "language": {"language_correct": 0.0}, "modifiers": {"fulfilled": 0.0}, "judge": {}}
    assert all(r["scores"] == {} for r in english_rows if r["scorer"] == "spelling")  # wrong language: left out


def test_all_eleven_modifier_types_with_length_and_judge(tmp_path, shared_data, monkeypatch, loopback_only):
    """Table 1's 11 types: rules, short/long against the base prompt's answer (the chirkova set, generated in
    the same run), and the three styles by the LLM judge over HTTP; a rerun asks the judge nothing."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    def reply(text):
        if text.endswith("Answer briefly in just a few sentences."):
            return "Briefly: no."
        return text + " " + text if text.endswith("Give a detailed answer.") else list_when_asked(text)

    def verdict(prompt, attempt):
        if "two things" in prompt and attempt == 1:
            return 200, "It does both."  # unusable: asked again
        return 200, '{"fulfilled": %d}' % ("simple words" not in prompt)

    with FakeOpenAI(verdict) as server:
        config = EvalConfig(eval_sets=("chirkova", "chirkova_modifiers"), languages=("en",),
                            metrics=("modifiers", "modifier_judge"), judge_model="gpt-3.5-turbo",
                            judge_base_url=server.base_url, data_dir=str(shared_data))
        evaluate_model(ScriptedModel(reply=reply), tmp_path, config)
        assert len(server.requests) == 14 + 14 + 2 * 15
        written = evaluate_model(ScriptedModel(reply=reply), tmp_path, config)
        assert len(server.requests) == 58  # resumed from item_scores.jsonl
    fulfilled = {r["modifier"]: r for r in rows(written["scores"]) if r["metric"] == "fulfilled"}
    assert len(fulfilled) == 12  # 11 types and all
    for kind, mean, n, scorer in [("short", 1.0, 20, "modifiers"), ("long", 1.0, 20, "modifiers"),
                                  ("scientific_style", 1.0, 14, "modifier_judge"),
                                  ("simple_style", 0.0, 14, "modifier_judge"),
                                  ("complex_inst", 1.0, 15, "modifier_judge")]:
        assert (fulfilled[kind]["mean"], fulfilled[kind]["n"], fulfilled[kind]["scorer"]) == (mean, n, scorer)
    # Average: the unweighted mean over the 11 types (echoed prompts fail cap/arrow/markdown/html and lang).
    types = [r["mean"] for kind, r in fulfilled.items() if kind != "all"]
    assert f"| scripted | Average | {100 * sum(types) / 11:.1f} (11 types) |" in written["markdown"].read_text()


def test_judge_errors_are_recorded_then_retried(tmp_path, config, monkeypatch, loopback_only):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    state = {"garbage": True}

    def answer(prompt, attempt):
        return (200, "Great answer!") if state["garbage"] and "kickball" in prompt else (200, GOOD)

    with FakeOpenAI(answer) as server:
        judged = dataclasses.replace(config, languages=("en",), metrics=("judge",), judge_model="gpt-3.5-turbo",
                                     judge_base_url=server.base_url, judge_attempts=2)
        evaluate_model(ScriptedModel(), tmp_path, judged)
        assert len(server.requests) == 3 + 1  # two fine items, the kickball one twice
        [failed] = [r for r in rows(tmp_path / "item_scores.jsonl") if "error" in r]
        assert failed["id"] == "0000" and "Great answer!" in failed["error"]
        state["garbage"] = False
        written = evaluate_model(ScriptedModel(), tmp_path, judged)
        assert len(server.requests) == 5  # only the failed item asked again
    helpful = next(r for r in rows(written["scores"]) if r["metric"] == "judge_fluency")
    assert (helpful["mean"], helpful["n"], helpful["errors"]) == (1.0, 3, 0)
    assert written["judge.chirkova"].read_bytes()[:4] == b"\x89PNG"
    assert all(KEY not in p.read_text(errors="replace") for p in tmp_path.iterdir() if p.is_file())


def test_models_side_by_side(tmp_path, config):
    evaluate_model(ScriptedModel(name="base"), tmp_path / "base", config)
    evaluate_model(ScriptedModel(name="tuned", reply=lambda t: "The answer is simple."), tmp_path / "tuned", config)
    written = write_report([tmp_path / "base", tmp_path / "tuned"], tmp_path / "both")
    table = written["markdown"].read_text()
    assert "| base | fr | 100.0 (3) |" in table and "| tuned | fr | 0.0 (3) |" in table
    assert written["surface_metrics.chirkova"].is_file()
    assert write_report([tmp_path / "base", tmp_path / "base"], tmp_path / "once")["markdown"].read_text() == \
        write_report([tmp_path / "base"], tmp_path / "single")["markdown"].read_text()
    shutil.copytree(tmp_path / "base", tmp_path / "copy")
    with pytest.raises(InputError, match="'base' is in both"):
        write_report([tmp_path / "base", tmp_path / "copy"], tmp_path / "again")


def test_binary_rejects_bad_input_before_loading(tmp_path, shared_data):
    done = subprocess.run(
        [sys.executable, "-m", "launch.evaluate", "--model=preset:tiny", "--languages=en,xx",
         f"--data_dir={shared_data}", f"--out_dir={tmp_path / 'out'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "xlit-eval: eval set 'chirkova' has no language 'xx'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_smollm2_end_to_end(tmp_path, smollm2):
    config = EvalConfig(languages=("en", "fr"), limit=1, max_new_tokens=12, batch_size=2,
                        metrics=("language", "spelling", "relevance"), relevance_max_new_tokens=4)
    written = evaluate_model(smollm2, tmp_path, config, relevance_model=smollm2)
    generations = rows(written["generations"])
    assert [g["model"] for g in generations] == [smollm2.name] * 2
    assert all(g["response"].strip() for g in generations)
    assert {r["scorer"] for r in rows(written["item_scores"])} == {"language", "spelling", "relevance"}
    assert f"| {smollm2.name} | fr |" in written["markdown"].read_text()



def test_a_prompt_too_long_for_the_model_is_named_before_any_decoding(tmp_path, smollm2):
    prompts = tmp_path / "long.en.jsonl"
    prompts.write_text(json.dumps({"id": "short", "prompt": "Say hi."}) + "\n"
                       + json.dumps({"id": "long", "prompt": "hello " * 8180}) + "\n")
    config = EvalConfig(eval_sets=(f"jsonl:{prompts}",), languages=("en",), metrics=("language",), max_new_tokens=16)
    with pytest.raises(InputError, match=r"^long.en item long \(en\): 8\d{3} tokens plus max_new_tokens=16 exceed "
                       "the model's 8192 positions$"):
        evaluate_model(smollm2, tmp_path / "out", config)
    assert not (tmp_path / "out" / "generations.jsonl").exists() or \
        not (tmp_path / "out" / "generations.jsonl").read_text()


def test_every_scorer_implements_the_scorer_protocol():
    import importlib
    import inspect
    import pkgutil

    from xlit_jax.evaluate import instructions
    from xlit_jax.evaluate.instructions.scorer import Scorer

    modules = [importlib.import_module(f"{instructions.__name__}.{info.name}")
               for info in pkgutil.iter_modules(instructions.__path__)]
    scorers = {cls for module in modules for _, cls in inspect.getmembers(module, inspect.isclass)
               if hasattr(cls, "score") and hasattr(cls, "name") and cls is not Scorer}  # what scores responses
    assert {cls.__name__ for cls in scorers} >= {"LanguageScorer", "SpellingScorer", "ModifierScorer",
                                                  "OpenAIJudge", "RelevanceJudge"}
    assert all(Scorer in cls.__mro__ for cls in scorers), scorers  # subclasses, not look-alikes


HOLD = """import sys, time
from xlit_jax.io.files import output_lock
with output_lock(sys.argv[1], folder=sys.argv[2] == "folder"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_of_an_output_is_refused_before_writing(tmp_path, config, shared_data):
    """While one run holds an out_dir (or an output file), every appending writer refuses in one UserError:
    the instruction evaluation, the benchmarks and the translator; nothing is written."""
    from xlit_jax.data.records import Record, Turn
    from xlit_jax.data.translate import translate_file
    from xlit_jax.errors import UserError
    from xlit_jax.evaluate.harness.run import BenchConfig, BenchmarkEvaluation

    out, translated = tmp_path / "eval", tmp_path / "fr.jsonl"
    holders = [subprocess.Popen([sys.executable, "-c", HOLD, str(path), kind], cwd=REPO, stdout=subprocess.PIPE,
                                text=True) for path, kind in ((out, "folder"), (translated, "file"))]
    try:
        assert [h.stdout.readline().strip() for h in holders] == ["held", "held"]
        bench = BenchmarkEvaluation(out, BenchConfig(benchmarks=("mmlu",), languages=("en",), limit=1,
                                                     data_dir=str(shared_data)))
        record = Record(id="1", turns=(Turn("user", "Hi"), Turn("assistant", "Hello")), lang="en", source="test")
        for write in (lambda: evaluate_model(ScriptedModel(), out, config), lambda: bench.run(ScriptedModel()),
                      lambda: translate_file([record], lambda texts, s, t: texts, "en", "fr", translated)):
            with pytest.raises(UserError, match="another run is writing it now"):
                write()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert not any(out.iterdir()) and not translated.exists()
