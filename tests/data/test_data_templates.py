"""Chat templates: exact text, which tokens are targets, and prompts that are prefixes of training data."""

import types

import pytest

from xlit_jax.data.records import Turn
from xlit_jax.data.templates import TEMPLATES, encode, get_template, prompt_text

CONVERSATION = (Turn("system", "Be brief."), Turn("user", "Hi there"), Turn("assistant", "Hello!"),
                Turn("user", "Capital of Peru?"), Turn("assistant", "Lima."))


class TextTokenizer:
    """A stand-in with just what the text side of the templates reads; `adds_bos` as LLaMA's tokenizer."""

    bos_token, eos_token, bos_token_id = "<s>", "</s>", 1

    def __init__(self, adds_bos=False, **fields):
        self.adds_bos = adds_bos
        self.__dict__.update(fields)

    def __call__(self, text):
        return types.SimpleNamespace(input_ids=[1, 7] if self.adds_bos else [7])


def test_llama2_text_is_the_papers():
    template = get_template("llama2", TextTokenizer())
    text = "".join(p.text for p in template.pieces(CONVERSATION))
    assert text == ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! </s>"
                    "<s>[INST] Capital of Peru? [/INST] Lima. </s>")
    assert [p.text for p in template.pieces(CONVERSATION) if p.target] == [" Hello! </s>", " Lima. </s>"]
    assert prompt_text(template, CONVERSATION[:4]) == text[:text.index(" Lima.")]


def test_alpaca_text():
    pieces = get_template("alpaca", TextTokenizer()).pieces(CONVERSATION[1:3])
    assert "".join(p.text for p in pieces) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nHi there\n\n### Response:\nHello!</s>")
    assert [p.text for p in pieces if p.target] == ["Hello!</s>"]
    assert get_template("alpaca", TextTokenizer()).pieces(CONVERSATION)[0].text == "Be brief."
    assert get_template("alpaca", TextTokenizer(adds_bos=True)).pieces(CONVERSATION)[0].text == "<s>Be brief."


@pytest.mark.parametrize("name", TEMPLATES)
def test_targets_are_the_answers_and_prompts_are_prefixes(tok, name):
    template = get_template(name, tok)
    ((ids, target),) = encode(template, tok, [CONVERSATION])
    answers = tok.decode(ids[target])
    assert answers.replace(" ", "") == "Hello!<|im_end|>Lima.<|im_end|>"
    assert ids[-1] == tok.eos_token_id and target[-1]  # nothing after the last answer
    for end in (2, 4):  # a generation prompt tokenizes to the start of the training sequence
        prompt = tok(prompt_text(template, CONVERSATION[:end]), add_special_tokens=False).input_ids
        assert list(ids[:len(prompt)]) == prompt
        assert target[len(prompt)]  # the answer starts right after the prompt
    first_prompt = tok(prompt_text(template, CONVERSATION[:2]), add_special_tokens=False).input_ids
    assert not target[:len(first_prompt)].any()


def test_chatml_pieces(tok):
    pieces = get_template("chat", tok).pieces(CONVERSATION[1:3])
    assert [(p.text, p.target) for p in pieces] == [
        ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
         "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello!<|im_end|>", True), ("\n", False)]


def test_a_template_that_is_not_prefix_stable_is_refused():
    def render(messages, tokenize, add_generation_prompt):  # a turn count in front changes every prefix
        return f"{len(messages)}|" + "".join(m["content"] for m in messages)

    tokenizer = TextTokenizer(chat_template="x", apply_chat_template=render)
    with pytest.raises(ValueError, match="renders a conversation's first turns differently"):
        get_template("chat", tokenizer).pieces(CONVERSATION[1:3])


def test_unknown_template():
    with pytest.raises(ValueError, match="unknown template"):
        get_template("vicuna", TextTokenizer())
