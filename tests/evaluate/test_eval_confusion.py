"""Language confusion as LCB's compute_metrics.py measures it, xlit-eval --responses, and LCB as an eval set."""

import csv
import json
import subprocess
import sys

import pytest

from xlit_jax.data.confusion import ENGLISH_WORDS_FILE, english_words
from xlit_jax.data.langid import LanguageIdentifier
from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions import confusion
from xlit_jax.evaluate.instructions.evalsets import LCB_DECODING, EvalItem, load_eval_set
from xlit_jax.evaluate.instructions.responses import read_responses
from xlit_jax.evaluate.instructions.run import GENERATIONS_FILE, EvalConfig, Evaluation, evaluate_model

from support import REPO, ScriptedModel

FRENCH = "La capitale de la France est Paris, une très belle ville.\nElle compte plus de deux millions d'habitants."
RUSSIAN = "Москва является столицей России и крупнейшим городом страны.\nЭто очень большой и красивый город."


@pytest.fixture(scope="module")
def scorer(shared_data):
    return confusion.LanguageConfusionScorer(
        LanguageIdentifier(), english_words(shared_data / ENGLISH_WORDS_FILE))


def item(language, set_name="chirkova", prompt_language=None):
    return EvalItem(set_name, prompt_language or language, "1", ({"role": "user", "content": "x"},), language)


def test_line_and_word_verdicts_on_known_answers(scorer):
    cases = [  # (wanted language, response, scores)
        ("fr", FRENCH + "\nThe city is also famous for its museums and its food.",  # one English line of three
         {"line_pass": 0.0, "line_share": pytest.approx(2 / 3)}),
        ("ru", RUSSIAN + " Это really", {"line_pass": 1.0, "line_share": 1.0, "word_pass": 0.0}),  # an English word
        ("ru", RUSSIAN, {"line_pass": 1.0, "line_share": 1.0, "word_pass": 1.0}),
        # lines under 5 tokens are not counted
        ("fr", "Bonjour !\nOK, thanks a lot\n" + FRENCH, {"line_pass": 1.0, "line_share": 1.0}),
        # "plus" and "belle" are English words too: LCB reports no word level for Latin scripts
        ("fr", FRENCH + "\nQ: And what is the capital city of Germany, then?", {"line_pass": 1.0, "line_share": 1.0}),
        ("fr", "!!! ... ---\n* * * * * *\n", {}),  # punctuation only: no line counts, the response is left out
        ("fr", "", {}),
        ("zh", "北京是中国的首都，也是一座历史悠久的城市。\n我们昨天去了故宫和长城，玩得非常开心 with my friends。",  # noqa: E501 - wide characters
         {"line_pass": 1.0, "line_share": 1.0, "word_pass": 0.0}),
    ]
    results = scorer.score([item(lang) for lang, _, _ in cases], [text for _, text, _ in cases])
    assert [r["scores"] for r in results] == [scores for _, _, scores in cases]
    assert results[0]["details"]["wrong_lines"] == [["The city is also famous for its museums and its food", "en"]]
    assert results[1]["details"]["english_words"] == ["really"]
    assert results[7]["details"]["english_words"] == ["with", "friends"]
    assert results[5]["details"]["skipped"] == "no line of 5 tokens or more"
    assert {k: results[0]["details"][k] for k in ("task", "source", "language")} == {
        "task": "monolingual", "source": "chirkova", "language": "fr"}
    asked_in_french = scorer.score([item("fr", "chirkova_modifiers", prompt_language="en")], [FRENCH])[0]
    assert asked_in_french["details"]["task"] == "crosslingual"  # a lang_X item is LCB's cross-lingual setting


def lcb_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\r\n")  # as LCB's released outputs
        writer.writerow(["id", "model", "completion", "task", "source", "language"])
        writer.writerows([i, "m", text, task, source, lang] for i, (text, task, source, lang) in enumerate(rows))
    return path


SMALL = [(FRENCH, "monolingual", "okapi", "fr"),
         ("The capital of France is Paris, a very beautiful city.", "monolingual", "okapi", "fr"),
         (RUSSIAN.replace("\n", "\r\n") + " Это really", "monolingual", "okapi", "ru"),
         (FRENCH, "crosslingual", "okapi", "fr"),
         ("", "crosslingual", "okapi", "fr"),
         ("Ja.", "crosslingual", "sharegpt", "de")]  # no counted response: LCB's arithmetic reads 100%
EXPECTED = """model,task,source,language,lpr,wpr
m,crosslingual,okapi,fr,100.00,
m,crosslingual,sharegpt,de,100.00,
m,crosslingual,okapi,all,100.00,
m,crosslingual,sharegpt,all,100.00,
m,crosslingual,all,fr,100.00,
m,crosslingual,all,de,100.00,
m,crosslingual,all,all,100.00,
m,monolingual,okapi,fr,50.00,
m,monolingual,okapi,ru,100.00,0.00
m,monolingual,okapi,all,75.00,0.00
m,monolingual,all,fr,50.00,
m,monolingual,all,ru,100.00,0.00
m,monolingual,all,all,75.00,0.00
"""


def test_responses_in_lcbs_format_through_the_binary(tmp_path, shared_data):
    path = lcb_csv(tmp_path / "m.csv", SMALL)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--responses={path}", f"--out_dir={out}",
                           f"--data_dir={shared_data}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "language_confusion.csv").read_text() == EXPECTED
    scored = [json.loads(line) for line in (out / "item_scores.jsonl").read_text().splitlines()]
    assert {r["scorer"] for r in scored} == {"language", "language_confusion"}  # --responses' default metrics
    assert {(r["set"], r["language"], r["id"]) for r in scored} >= {("lcb_monolingual", "ru", "okapi/2")}
    assert "| m | okapi | 50.00 | 100.00 / 0.00 | 75.00 / 0.00 |" in done.stdout


def test_responses_resume_and_a_changed_file_is_refused(tmp_path, shared_data):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"response": FRENCH, "language": "fr", "prompt": "Parle-moi de Paris."},
        {"response": "Paris is the capital of France and its largest city.", "language": "fr"}]))
    config = EvalConfig(metrics=("language_confusion",), data_dir=str(shared_data))
    responses = read_responses(path)
    written = Evaluation(tmp_path / "out", config, responses=responses).run_responses(responses)
    rows = [json.loads(line) for line in written["item_scores"].read_text().splitlines()]
    assert [(r["id"], r["scores"].get("line_pass")) for r in rows] == [("000001", 1.0), ("000002", 0.0)]
    assert "m,responses" not in written["language_confusion"].read_text()
    assert "answers,monolingual,responses,fr,50.00," in written["language_confusion"].read_text()
    Evaluation(tmp_path / "out", config, responses=responses).run_responses(responses)  # resumes: nothing new
    assert written["item_scores"].read_text().count("\n") == 2
    path.write_text(path.read_text().replace("largest", "biggest"))
    changed = read_responses(path)
    with pytest.raises(InputError, match=r"answers.jsonl:2: the response differs from the one scored"):
        Evaluation(tmp_path / "out", config, responses=changed).run_responses(changed)
    with pytest.raises(InputError, match=r"answers.jsonl:2: field 'prompt': missing or empty \(the judge metric"):
        Evaluation(tmp_path / "judged", EvalConfig(metrics=("judge",), judge_model="x"), responses=changed)
    with pytest.raises(InputError, match="the modifiers metric needs the eval set's modifier types"):
        Evaluation(tmp_path / "mod", EvalConfig(metrics=("modifiers",)), responses=changed)


HEADER = "id,model,completion,task,source,language\n"


@pytest.mark.parametrize("name, content, message", [
    ("a.csv", HEADER + '0,m,"ok",monolingual,okapi,fr\n1,m,"ok",monolingual,okapi,\n', ":3: field 'language': missing"),
    ("a.csv", HEADER + '0,m,"ok",bilingual,okapi,fr\n', ":2: field 'task': 'bilingual' is not one of LCB's tasks"),
    ("a.csv", HEADER + '0,m,"ok",monolingual,okapi,fr\n0,m,"a\nb",monolingual,okapi,fr\n',
     ":3: field 'id': 'okapi/0' repeats line 2"),
    ("a.csv", HEADER + '0,m,"ok",monolingual,okapi,fr\n1,n,"ok",monolingual,okapi,fr\n',
     ":3: field 'model': 'n', but line 2 has 'm'"),
    ("a.csv", HEADER + '0,m,"ok",monolingual,okapi,f r\n', ":2: field 'language': 'f r' is not a language code"),
    ("a.csv", "language\nfr\n", ":2: field 'response': missing"),
    ("a.csv", HEADER.encode() + b'0,m,"\xff",monolingual,okapi,fr\n', ":2: not UTF-8 text"),
    ("a.jsonl", '{"response": "ok", "language": "fr"}\n{"response": 3, "language": "fr"}\n',
     ":2: field 'response': expected a string, got 3"),
    ("a.jsonl", '["ok", "fr"]\n', ":1: expected an object with a response and a language"),
    ("a.txt", "x", ": responses must be a .csv or a .jsonl file"),
    ("a.csv", HEADER, ": no responses"),
])
def test_malformed_responses_name_file_line_and_field(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError) as error:
        read_responses(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_lcb_eval_set_sources_limit_and_decoding(tmp_path, shared_data):
    items = load_eval_set("lcb", ["fr", "ja"], shared_data, subset=["okapi", "native*"], limit=2, seed=0)
    assert {(it.set, it.language, it.source) for it in items} == {
        ("lcb_monolingual", "fr", "okapi"), ("lcb_monolingual", "fr", "native_prompts"),
        ("lcb_monolingual", "ja", "native_prompts"), ("lcb_crosslingual", "fr", "okapi"),
        ("lcb_crosslingual", "ja", "okapi")}
    assert len(items) == 10 and len({it.id.split("/")[1] for it in items}) == 2  # the same rows everywhere
    crosslingual = next(it for it in items if it.set == "lcb_crosslingual")
    assert crosslingual.expected_language == crosslingual.language == "fr"  # LCB files it under the asked language
    config = EvalConfig(eval_sets=("lcb_crosslingual",), languages=("fr",), limit=1, metrics=("language_confusion",),
                        data_dir=str(shared_data), max_new_tokens=100, repetition_penalty=1.0)
    written = evaluate_model(ScriptedModel(reply=lambda text: FRENCH), tmp_path, config)
    assert written["language_confusion"].read_text().count("scripted,crosslingual,") == 8  # 3 sources, averages


@pytest.mark.slow  # ~10 s of SmolLM2 sampling: CI runs it; the engine's own seeding tests are in make test
def test_lcb_sampling_is_seeded_by_the_item(tmp_path, shared_data, smollm2):
    """LCB's decoding samples (temperature 0.3, top-p 0.75) through the engine; each response is seeded by its
    item, so it is the same decoded alone or beside others, and another --sampling_seed changes the draws."""
    def responses(out, **changes):
        config = EvalConfig(**{"eval_sets": ("lcb_monolingual",), "languages": ("fr",), "subset": ("okapi",),
                               "metrics": ("language",), "data_dir": str(shared_data), **LCB_DECODING,
                               "max_new_tokens": 16, **changes})
        evaluate_model(smollm2, tmp_path / out, config)
        return {r["id"]: r for r in map(json.loads, (tmp_path / out / GENERATIONS_FILE).read_text().splitlines())}

    three, one = responses("three", limit=3), responses("one", limit=1)
    (first,) = one
    assert one[first]["response"] == three[first]["response"]
    assert one[first]["decoding"] == {**LCB_DECODING, "max_new_tokens": 16, "sampling_seed": 0}
    hot = {"limit": 3, "temperature": 1.0, "top_p": 1.0}
    assert [r["response"] for r in responses("hot0", **hot).values()] != \
        [r["response"] for r in responses("hot1", sampling_seed=1, **hot).values()]
    with pytest.raises(InputError, match="top_p=1.5"):
        EvalConfig(temperature=0.3, top_p=1.5)
