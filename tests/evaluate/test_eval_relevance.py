import pytest

from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions.evalsets import EvalItem
from xlit_jax.evaluate.instructions.relevance import (
    OUR_TEMPLATE,
    RelevanceJudge,
    fill,
    last_binary_digit,
    load_template,
    template_path,
)
from xlit_jax.evaluate.instructions.run import EvalConfig

from support import ScriptedModel


@pytest.mark.parametrize("answer, verdict", [
    ("1", 1), ("0", 0), ("The reply is relevant. Answer: 1.", 1),
    ("At first I thought 1, but on reflection: 0", 0), ("Score: 10/10, so 1", 1),
    ("It covers 0.5 of the topic, 2,1 percent", None), ("Yes, it is relevant.", None), ("", None),
])
def test_last_binary_digit(answer, verdict):
    assert last_binary_digit(answer) == verdict


def test_the_papers_table3_prompt_is_the_default(shared_data):
    assert EvalConfig().relevance_prompt == "table3"
    table3 = load_template(template_path("table3", shared_data))
    filled = fill(table3, "Name a fruit.", "Apple.")
    assert "[Task]: Name a fruit.\n**\n[Submission]: Apple.\n**" in filled
    assert filled.endswith("Does the submission meet the criterion? Print 0 or 1. Do not output anything else.\n")
    assert "%%%" not in filled


def test_templates(tmp_path, shared_data):
    template = load_template(template_path("ours", shared_data))
    assert template_path("ours", shared_data) == OUR_TEMPLATE and template_path("x.txt", shared_data).name == "x.txt"
    filled = fill(template, "Explain {response} and %%%SUBMISSION%%% in C", "Use {instruction} braces")
    assert "Explain {response} and %%%SUBMISSION%%% in C" in filled and "Use {instruction} braces" in filled
    own = tmp_path / "mine.txt"
    own.write_text("Q: {instruction}\nA: %%%SUBMISSION%%%\nIs it relevant? 0/1")  # two halves of two styles
    with pytest.raises(InputError, match=r"mine.txt: the template needs \{instruction\} and \{response\}, or "
                                         r"%%%TASK%%% and %%%SUBMISSION%%%"):
        load_template(own)
    with pytest.raises(InputError, match="no such relevance prompt template"):
        load_template(tmp_path / "none.txt")


def test_judge_reads_the_verdicts():
    verdicts = iter(["Relevant: 1", "0", "I cannot decide."])
    judge_model = ScriptedModel("judge", reply=lambda prompt: next(verdicts))
    judge = RelevanceJudge(judge_model, "Q: {instruction}\nA: {response}\n0 or 1?", max_new_tokens=8)
    item = EvalItem("s", "en", "1", ({"role": "user", "content": "Name a fruit."},), "en")
    results = judge.score([item] * 3, ["Apple.", "I like trains.", "Pear."])
    assert [r["scores"] for r in results] == [{"relevance": 1.0}, {"relevance": 0.0}, {}]
    assert results[2]["details"]["judge_answer"] == "I cannot decide."
    assert judge_model.prompts_seen[1] == [{"role": "user", "content": "Q: Name a fruit.\nA: I like trains.\n0 or 1?"}]
    assert judge_model.calls == [{"max_new_tokens": 8, "repetition_penalty": 1.0}]


def test_smollm2_as_judge(smollm2):
    judge = RelevanceJudge(smollm2, load_template(OUR_TEMPLATE), max_new_tokens=6, batch_size=2)
    item = EvalItem("s", "en", "1", ({"role": "user", "content": "What is the capital of France?"},), "en")
    results = judge.score([item, item], ["The capital of France is Paris.", "Bananas are yellow."])
    for r in results:
        verdict = last_binary_digit(r["details"]["judge_answer"])
        assert r["scores"] == ({} if verdict is None else {"relevance": float(verdict)})
