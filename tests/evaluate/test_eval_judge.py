import logging

import pytest

from xlit_jax.errors import InputError, JudgeError
from xlit_jax.evaluate.instructions.evalsets import EvalItem
from xlit_jax.evaluate.instructions.judge import (
    CRITERIA,
    FulfilmentJudge,
    OpenAIJudge,
    load_fulfilment_template,
    load_template,
    parse_fulfilment,
    parse_judgement,
    reported_scores,
)

from support import FakeOpenAI

KEY = "sk-test-7f3a9c1e-do-not-log"
GOOD = ('{"Language": 3, "Fluency": 3, "Helpfulness": 2, "Accuracy": 3, "Logical coherence": 3, '
        '"Harmlessness": 3}')
WRONG_LANGUAGE = GOOD.replace('"Language": 3', '"Language": 1')


def answer_by_marker(prompt, attempt):
    """The fake judge's behaviour, chosen by a marker word in the submission."""
    if "GARBAGE" in prompt:
        return 200, "I would rate this submission as quite good overall!"
    if "FLAKY" in prompt:
        return (200, "{not json") if attempt == 1 else (200, f"Here is my evaluation:\n```json\n{GOOD}\n```")
    if "WRONGLANG" in prompt:
        return 200, WRONG_LANGUAGE
    return 200, GOOD


@pytest.fixture
def template(shared_data):
    return load_template(shared_data / "chirkova2024_eval" / "eval_prompt_gpt.txt")


@pytest.fixture(autouse=True)
def local_only(monkeypatch, loopback_only):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def items(n):
    return [EvalItem("s", "fr", str(i), ({"role": "user", "content": "Quelle est la capitale ?"},), "fr")
            for i in range(n)]


def test_parse_judgement_variants():
    assert parse_judgement(GOOD) == dict(zip(CRITERIA, (2, 2, 1, 2, 2, 2)))
    spelled = ('{"correct_language": "3 stars", "fluency": {"score": 2}, "helpfulness": "1", '
               '"accuracy": 2.0, "logical_coherence": 3, "harmlessness": 3, "comment": "fine"}')
    assert parse_judgement(spelled) == dict(zip(CRITERIA, (2, 1, 0, 1, 2, 2)))
    for bad, reason in [("no json", "no JSON object"), ("{'Language': 3}", "malformed JSON"),
                        ('{"Language": 3}', "no score for fluency"),
                        (GOOD.replace('"Accuracy": 3', '"Accuracy": 5'), "outside 1-3"),
                        (GOOD.replace('"Fluency": 3', '"Fluency": "good"'), "not a star count")]:
        with pytest.raises(ValueError, match=reason):
            parse_judgement(bad)


def test_the_wrong_language_rule():
    stars = dict(zip(CRITERIA, (0, 2, 1, 2, 2, 2)))
    assert reported_scores(stars) == {"judge_language": 0.0}  # the judge found it in the wrong language
    right = {**stars, "language": 1}
    assert reported_scores(right) == {f"judge_{c}": float(v) for c, v in right.items()}
    # asked in another language (lang_X): identification against X decides; the judge's Language is left out
    assert reported_scores(stars, right_language=True) == {f"judge_{c}": float(stars[c]) for c in CRITERIA[1:]}
    assert reported_scores(stars, right_language=False) == {}


def test_scores_retries_and_records_errors(template, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(answer_by_marker) as server:
        judge = OpenAIJudge("gpt-3.5-turbo", template, base_url=server.base_url, attempts=3, workers=2)
        good, garbage, flaky, wrong = judge.score(items(4), ["Paris.", "GARBAGE", "FLAKY Paris", "WRONGLANG x"])
    assert good["scores"] == {"judge_language": 2.0, "judge_fluency": 2.0, "judge_helpfulness": 1.0,
                              "judge_accuracy": 2.0, "judge_logical_coherence": 2.0, "judge_harmlessness": 2.0}
    assert good["details"]["stars"]["helpfulness"] == 2
    assert "no usable answer in 3 attempts" in garbage["error"] and "quite good overall" in garbage["error"]
    assert flaky["scores"] == good["scores"]
    assert wrong["scores"] == {"judge_language": 0.0}  # wrong language: only the language criterion counts
    prompts = [body["messages"][-1]["content"] for _, body in server.requests]
    assert sum("GARBAGE" in p for p in prompts) == 3 and sum("FLAKY" in p for p in prompts) == 2
    assert all(auth == f"Bearer {KEY}" for auth, _ in server.requests)
    first = next(p for p in prompts if "[Submission]: Paris." in p)
    assert "[Task]: Quelle est la capitale ?" in first and "%%%" not in first
    assert KEY not in caplog.text
    assert all(body["response_format"] == {"type": "json_object"} for _, body in server.requests)


def test_json_mode_is_dropped_once_for_a_service_that_refuses_it(template):
    """The paper's judge asked for a JSON object; a service without JSON mode answers 400 naming the field,
    and the judge asks again (and from then on) without it."""
    refusals = []

    def strict(prompt, attempt):
        json_mode = "response_format" in server.requests[-1][1]
        refusals.append(json_mode)
        return (400, "response_format is not supported by this model") if json_mode else answer_by_marker(prompt, 1)

    with FakeOpenAI(strict) as server:
        judge = OpenAIJudge("local", template, base_url=server.base_url, attempts=1, workers=1)
        first, second = judge.score(items(2), ["Paris.", "Paris."])
    assert "error" not in first and first["scores"] == second["scores"]
    assert refusals == [True, False, False]


def test_server_errors_are_per_item_but_refusals_stop(template):
    def failing(prompt, attempt):
        return (503, "overloaded") if "BUSY" in prompt else (401, "Incorrect API key provided")

    with FakeOpenAI(failing) as server:
        judge = OpenAIJudge("gpt-3.5-turbo", template, base_url=server.base_url, attempts=1, workers=1)
        [busy] = judge.score(items(1), ["BUSY"])
        assert "HTTP 503" in busy["error"]
        with pytest.raises(JudgeError, match="HTTP 401"):
            judge.score(items(1), ["fine"])


def test_missing_key_and_bad_template(monkeypatch, template, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        OpenAIJudge("gpt-3.5-turbo", template)
    own = tmp_path / "judge.txt"
    own.write_text("Rate %%%SUBMISSION%%% as JSON.")
    with pytest.raises(InputError, match="lacks %%%TASK%%%"):
        load_template(own)


def test_parse_fulfilment():
    assert parse_fulfilment('{"fulfilled": 1}') is True
    assert parse_fulfilment('Sure.\n```json\n{"fulfilled": "no", "why": "too technical"}\n```') is False
    assert parse_fulfilment('{"fulfilled": true}') is True and parse_fulfilment('{"fulfilled": 0}') is False
    for bad, reason in [("yes", "no JSON object"), ('{"ok": 1}', "no JSON object"), ('{"fulfilled": 2}', "not 0 or 1"),
                        ('{"fulfilled": [1]}', "not 0 or 1"), ("{fulfilled: 1}", "malformed")]:
        with pytest.raises(ValueError, match=reason):
            parse_fulfilment(bad)


def test_fulfilment_judge_asks_about_the_modifier_only(tmp_path):
    def answer(prompt, attempt):
        if "simple words" in prompt:
            return (200, "hmm") if attempt == 1 else (200, '{"fulfilled": 0}')
        return 200, '{"fulfilled": 1}'

    prompt = ({"role": "user", "content": "Explain tides. Write in a scientific style."},)
    styled = [EvalItem("chirkova_modifiers", "en", "1", prompt, "en", modifier="scientific_style"),
              EvalItem("chirkova_modifiers", "en", "2", prompt, "en", modifier="simple_style")]
    template = load_fulfilment_template()
    with FakeOpenAI(answer) as server:
        judge = FulfilmentJudge("gpt-3.5-turbo", template, base_url=server.base_url, workers=2)
        assert all(judge.applies(it) for it in styled)
        assert not judge.applies(EvalItem("m", "en", "3", prompt, "en", modifier="short"))
        assert not judge.applies(EvalItem("m", "en", "4", prompt, "en"))
        scientific, simple = judge.score(styled, ["Tidal forcing arises from gravitational gradients.", "Moon pulls."])
    assert scientific["scores"] == {"fulfilled": 1.0} and simple["scores"] == {"fulfilled": 0.0}
    asked = [body["messages"][-1]["content"] for _, body in server.requests]
    assert len(asked) == 3 and all("%%%" not in p and "[Task]: Explain tides." in p for p in asked)
    assert any("scientific style: formal" in p and "gravitational gradients" in p for p in asked)
    own = tmp_path / "fulfil.txt"
    own.write_text("Task %%%TASK%%% answer %%%SUBMISSION%%%: 0 or 1?")
    with pytest.raises(InputError, match="lacks %%%REQUIREMENT%%%"):
        load_fulfilment_template(own)
