"""CrossAlpaca benchmarks: harness metrics on hand-computed cases, loaders on the real files, a real run."""

import json
import subprocess
import sys

import pytest

from xlit_jax.errors import InputError
from xlit_jax.evaluate.harness import metrics as hm
from xlit_jax.evaluate.harness.data import BBH_TARGET_ALIASES, load_benchmarks, parse_answers
from xlit_jax.evaluate.harness.run import BenchConfig, BenchmarkEvaluation
from xlit_jax.evaluate.report import write_report

from support import REPO

LANGUAGES = ("ar", "de", "en", "es", "it", "zh")


@pytest.mark.parametrize("language, text, normalized", [
    ("en", "The  Eiffel Tower!", "eiffel tower"),
    ("en", "an apple, a pear", "apple pear"),
    ("es", "¡La casa de los árboles!", "casa de árboles"),
    ("de", "Die Grade von Privilegien.", "grade von privilegien"),
    ("it", "L'acqua e il vino", "lacqua e vino"),
    ("ar", "الجامعة الأمريكية", "جامعة أمريكية"),
    ("ar", "مالك", "م ك"),  # MLQA's rule removes every "ال", inside words too
    ("zh", "北京大学，1898年。", "北 京 大 学 1898 年"),
    ("zh", "«the» Beijing", "the beijing"),  # no articles in zh; Unicode quotes are punctuation
])
def test_mlqa_normalisation(language, text, normalized):
    assert hm.normalize_answer(text, language) == normalized


def test_f1_and_exact_match_by_hand():
    assert hm.f1("the Rhine delta region", "Rhine Delta", "en") == pytest.approx(0.8)  # P 2/3, R 1
    assert hm.f1("北京", "北京大学", "zh") == pytest.approx(2 / 3)  # characters: P 1, R 1/2
    assert hm.f1("Die Spitze", "der Berg", "de") == 0.0
    assert hm.exact_match("El Prado.", "prado", "es") == 1.0
    assert hm.qa_scores(" 1943", ["in the year 1900", "1943"], "en") == {"exact_match": 1.0, "f1": 1.0}
    assert hm.qa_scores("in 1943", ["in the year 1900", "1943"], "en") == {"exact_match": 0.0,
                                                                           "f1": pytest.approx(2 / 3)}


@pytest.mark.parametrize("prediction, gold, em, f1", [
    # SQuAD's normalisation (the harness's XQuAD, through transformers' squad_metrics), hand-computed
    (" The Eiffel Tower!\n", "Eiffel Tower", 1.0, 1.0),
    ("Die Grade von Privilegien.", "Grade von Privilegien", 0.0, pytest.approx(6 / 7)),  # "die" stays: P 3/4, R 1
    ("«Paris»", "Paris", 0.0, 0.0),  # « » are not ASCII punctuation: the token is «paris»
    ("北京大学", "北京", 0.0, 0.0),  # no CJK segmentation: one token each
    ("", "Paris", 0.0, 0.0), ("the", "a", 1.0, 1.0),  # both normalise to nothing: F1 is 1
])
def test_squad_normalisation_as_the_harness_xquad(prediction, gold, em, f1):
    assert hm.squad_scores(prediction, gold) == {"exact_match": em, "f1": f1}


def test_squad_and_mlqa_rules_differ_where_expected():
    assert hm.f1("北京", "北京大学", "zh") == pytest.approx(2 / 3)  # MLQA: characters
    assert hm.squad_scores("北京", "北京大学")["f1"] == 0.0  # SQuAD: whole strings
    assert hm.exact_match("Die Grade", "Grade", "de") == 1.0
    assert hm.squad_scores("Die Grade", "Grade")["exact_match"] == 0.0


def test_stop_sequences_and_choices():
    assert hm.cut_at_stop(" Paris\nQuestion: x", ("\n",)) == " Paris"
    assert hm.cut_at_stop(" (A)\n\nQ: next", ("</s>", "Q:")) == " (A)\n\n"
    assert hm.cut_at_stop("no stop", ("Q:",)) == "no stop"
    assert hm.choice_scores([-3, -1, -2, -4], 1, [1, 1, 1, 1]) == {"acc": 1.0, "acc_norm": 1.0}
    assert hm.choice_scores([-2, -3], 1, [1, 6]) == {"acc": 0.0, "acc_norm": 1.0}


OPTIONS = (("(A)", "red"), ("(B)", "blue"))
AR_OPTIONS = (("(أ)", "أحمر"), ("(ب)", "أزرق"))


@pytest.mark.parametrize("language, task, options, prediction, target, strict, flexible", [
    ("en", "date_understanding", OPTIONS, " (B).", "(B)", 1, 1),
    ("en", "date_understanding", OPTIONS, " The answer is (B) because", "(B)", 0, 1),
    ("en", "date_understanding", OPTIONS, " It is blue", "(B)", 0, 1),
    ("en", "date_understanding", OPTIONS, " I do not know", "(B)", 0, 0),
    ("ar", "date_understanding", AR_OPTIONS, " (ب)", "(ب)", 1, 1),
    ("ar", "date_understanding", AR_OPTIONS, " (B)", "(ب)", 0, 1),  # Latin label, Arabic target
    ("de", "date_understanding", OPTIONS + (("(E)", "grün"),), " (E)", "(UND)", 0, 1),  # "(E)" became "and"
    ("de", "boolean_expressions", (), " Die Antwort ist WAHR.", "WAHR", 0, 1),
    ("de", "boolean_expressions", (), ' "True"', "WAHR", 0, 1),
    ("es", "navigate", (), " Sí, claro", "Sí", 0, 1),
    ("es", "navigate", (), " no.", "No", 1, 1),
    ("zh", "formal_fallacies", (), " 无效的", "无效的", 1, 1),
    ("en", "formal_fallacies", (), " valid", "invalid", 0, 0),  # "valid" is not "invalid"
    ("en", "multistep_arithmetic_two", (), " The answer is -169.", "-169", 0, 1),
    ("en", "word_sorting", (), " apple, banana", "apple banana", 1, 1),  # commas ignored
])
def test_bbh_strict_and_flexible(language, task, options, prediction, target, strict, flexible):
    scores = hm.bbh_scores(prediction, target, task, options, BBH_TARGET_ALIASES.get(language, {}))
    assert scores == {"exact_match_strict": strict, "exact_match_flexible": flexible}


def test_answers_literal_is_parsed_never_evaluated():
    import collections

    defects = collections.Counter()
    assert parse_answers("{'text': ['308'], 'answer_start': [34]}", defects, ("x",)) == ("308",)
    assert parse_answers("{'testo': ['l'inno nazionale'], 'risposta_inizio': [3]}", defects, ("x",)) == (
        "l'inno nazionale",)
    assert parse_answers("__import__('os').system('true')", defects, ("x",)) == ()
    assert defects == {("x", "answers repaired (not a valid literal)"): 1}


def test_loaders_on_the_real_files(shared_data):
    loaded = load_benchmarks(("xquad", "mlqa", "mmlu", "bbh"), data_dir=shared_data)
    counts = {}
    for it in loaded.items:
        counts[(it.benchmark, it.language)] = counts.get((it.benchmark, it.language), 0) + 1
    for code in LANGUAGES:
        assert loaded.rows[("xquad", code)] == 1190 and loaded.rows[("mmlu", code)] == 1369
        assert counts[("mmlu", code)] == 1369 and counts[("bbh", code)] == 6511
        assert counts[("xquad", code)] == (1185 if code == "it" else 1190)
    assert counts[("mlqa", "it")] == 1621 and {lang for b, lang in counts if b == "mlqa"} == {"it"}
    d = loaded.defects
    assert d[("xquad", "it", "left out: no readable answer")] == 5
    assert d[("xquad", "it", "answers repaired (not a valid literal)")] == 47
    assert d[("xquad", "it", "answers under translated key 'testo'")] == 230
    assert d[("xquad", "ar", "U+FEFF stripped")] == 47 and d[("xquad", "zh", "U+FEFF stripped")] == 33
    assert d[("mlqa", "it", "answers repaired (not a valid literal)")] == 100
    assert d[("mlqa", "it", "answers under translated key 'testo'")] == 595
    assert d[("mmlu", "en", "U+FEFF stripped")] == 2
    assert d[("bbh", "it", "target translated (English alias used for flexible match)")] == 0
    assert d[("bbh", "de", "target translated (English alias used for flexible match)")] == 1279
    by_key = {it.key: it for it in loaded.items}
    en, ar = by_key[("xquad", "en", "56beb4343aeaaa14008c925b")], by_key[("xquad", "ar", "56beb4343aeaaa14008c925b")]
    assert en.gold == ("308",) and en.prompt.startswith("Context: The Panthers") and en.prompt.endswith("\n\nAnswer:")
    assert ar.prompt.startswith("Context: ")  # English labels by default, as the harness's MLQA
    college_cs = by_key[("mmlu", "ar", "college_computer_science/0000")]  # Arabic file name lacks an underscore
    assert college_cs.prompt.startswith("The following are multiple choice questions (with answers) about "
                                        "college computer science.\n\n")
    assert by_key[("bbh", "ar", "date_understanding/0000")].options[0][0] == "(أ)"


def test_fewshot_takes_each_subjects_first_rows_and_limit_aligns_languages(shared_data):
    loaded = load_benchmarks(("mmlu",), ("en", "de"), shared_data, num_fewshot=2)
    assert len(loaded.items) == 2 * (1369 - 10 * 2)
    first = next(it for it in loaded.items if it.language == "en")
    assert first.id == "abstract_algebra/0002" and first.prompt.count("\nAnswer:") == 3
    assert "\nAnswer: B\n\n" in first.prompt  # the first example's answer
    sampled = load_benchmarks(("xquad", "bbh"), ("en", "zh"), shared_data, limit=5, seed=1)
    ids = {(it.benchmark, it.language): set() for it in sampled.items}
    for it in sampled.items:
        ids[(it.benchmark, it.language)].add(it.id)
    assert ids[("xquad", "en")] == ids[("xquad", "zh")] and len(ids[("bbh", "en")]) == 5


@pytest.mark.parametrize("benchmarks, languages, message", [
    (("squad",), None, "unknown benchmark 'squad'; known: xquad, mlqa, mmlu, bbh"),
    (("mlqa",), ("de",), "mlqa has no data in 'de'"),
    (("xquad",), ("fr",), "'fr' is not one of ar, de, en, es, it, zh"),
])
def test_bad_requests_fail_before_work(shared_data, benchmarks, languages, message):
    with pytest.raises(InputError, match=message):
        load_benchmarks(benchmarks, languages, shared_data)


def test_binary_names_the_problem_before_loading(tmp_path, shared_data):
    done = subprocess.run(
        [sys.executable, "-m", "launch.evaluate", "--model=preset:tiny", "--eval_set=xquad,chirkova",
         f"--data_dir={shared_data}", f"--out_dir={tmp_path / 'out'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    refusal = done.stderr.strip()
    assert refusal.startswith("xlit-eval: --eval_set") and refusal.endswith("name only one kind")


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # ~20-40 s: CI runs it (.ci/run), make test does not, to stay under 10 minutes
def test_smollm2_runs_each_benchmark_and_resumes(tmp_path, smollm2, shared_data):
    assert (BenchConfig().max_new_tokens, BenchConfig().xquad_normalization) == (256, "squad")  # the harness's
    # a 32-token budget keeps the test short; the setting still reaches every generative row
    config = BenchConfig(languages=("en", "it"), limit=1, batch_size=2, data_dir=str(shared_data), max_new_tokens=32)
    written = BenchmarkEvaluation(tmp_path, config).run(smollm2)
    first = rows(written["item_scores"])
    for r in first:
        if r["set"] == "xquad":  # scored as the harness's XQuAD: SQuAD's rules against the first answer
            assert r["scores"] == hm.squad_scores(r["prediction"], r["gold"][0])
            assert r["settings"]["normalization"] == "squad" and r["settings"]["max_new_tokens"] == 32
    assert sorted((r["set"], r["language"]) for r in first) == sorted(
        [(b, lang) for b in ("xquad", "mmlu", "bbh") for lang in ("en", "it")] + [("mlqa", "it")])
    assert all("\n" not in r["prediction"] for r in first if r["set"] in ("xquad", "mlqa"))
    assert {r["prediction"] for r in first if r["set"] == "mmlu"} <= set("ABCD")
    table = written["markdown"].read_text()
    assert f"| {smollm2.name} | it |" in table and "| xquad f1 |" in table and "Data defects" in table
    assert written["benchmarks_png"].stat().st_size > 0
    assert "mmlu_acc" in written["benchmarks_csv"].read_text().splitlines()[0]
    # interrupted after all but the last row: a rerun does exactly that row again
    written["item_scores"].write_text("".join(json.dumps(r) + "\n" for r in first[:-1]))
    BenchmarkEvaluation(tmp_path, config).run(smollm2)
    again = rows(written["item_scores"])
    assert len(again) == len(first) and again[-1]["id"] == first[-1]["id"]
    for change in ({"num_fewshot": 1}, {"max_new_tokens": 64}, {"xquad_normalization": "mlqa"}):
        with pytest.raises(InputError, match="scored with"):
            BenchmarkEvaluation(tmp_path, BenchConfig(**{**config.__dict__, **change})).run(smollm2)
    # a second model's run, side by side (--compare)
    other = tmp_path.parent / f"{tmp_path.name}-other"
    other.mkdir()
    (other / "item_scores.jsonl").write_text("".join(json.dumps({**r, "model": "other"}) + "\n" for r in again))
    compared = write_report([tmp_path, other], tmp_path / "compare")
    csv_rows = compared["benchmarks_csv"].read_text().splitlines()
    assert sorted(r.split(",")[:2] for r in csv_rows[1:]) == [["other", "en"], ["other", "it"],
                                                              [smollm2.name, "en"], [smollm2.name, "it"]]


def test_smollm2_chat_template_wraps_prompts(tmp_path, smollm2, shared_data):
    config = BenchConfig(benchmarks=("mmlu", "xquad"), languages=("en",), limit=1, chat_template=True,
                         data_dir=str(shared_data))
    found = rows(BenchmarkEvaluation(tmp_path, config).run(smollm2)["item_scores"])
    assert [r["set"] for r in found] == ["mmlu", "xquad"] and found[0]["prediction"] in "ABCD"
    assert all(r["settings"]["chat_template"] for r in found)
    assert found[1]["prediction"].strip()  # the assistant answers; nothing is cut before its text
