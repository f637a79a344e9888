"""xlit_jax.load's Model as docs and README use it: one prompt or many, the CLI's defaults."""

import pytest

import xlit_jax
from xlit_jax.errors import InputError
from xlit_jax.loader import REPETITION_PENALTY


@pytest.fixture(scope="module")
def tiny(tok):
    model = xlit_jax.load("preset:tiny", vocab_size=49152, eos_token_ids=(2,), pad_token_id=2)
    model.tokenizer = tok
    return model


def test_a_bare_prompt_is_one_prompt_and_the_defaults_are_the_clis(tiny, monkeypatch):
    chat = [{"role": "user", "content": "Say hello"}]
    one, several = tiny.generate("Say hello", max_new_tokens=4), tiny.generate(["Say hello", chat], max_new_tokens=4)
    assert isinstance(one, str) and one == several[0]
    assert tiny.generate(chat, max_new_tokens=4) == several[1]
    seen = []
    monkeypatch.setattr(type(tiny), "generate_ids", lambda self, ids, new, penalty, *a, **k: seen.append(penalty) or
                        [[] for _ in ids])
    tiny.generate("Say hello")
    assert seen == [REPETITION_PENALTY] == [1.1]  # xlit-generate's and xlit-eval's --repetition_penalty default


def test_text_without_a_tokenizer_is_one_line_that_names_the_model():
    bare = xlit_jax.load("preset:tiny")
    for use in (lambda: bare.generate("Hi"), lambda: bare.loglikelihood([("Hi", " there")])):
        with pytest.raises(InputError, match=r"^preset:tiny has no tokenizer to read text with: use a model that"):
            use()
    assert len(bare.generate_ids([[1, 2, 3]], max_new_tokens=2)[0]) <= 2  # token ids need none


def test_generate_to_jsonl_resumes_one_model_under_one_setting(tiny, tmp_path):
    """A rerun adds the missing ids; another model's or another max_new_tokens' rerun is refused, line named."""
    from xlit_jax.decode.to_jsonl import generate_to_jsonl

    out = tmp_path / "out.jsonl"
    rows = [{"id": i, "prompt": f"Say {i}"} for i in range(3)]
    first = generate_to_jsonl(tiny, rows[:2], out, max_new_tokens=3, repetition_penalty=1.1, slots=2)
    assert [r["decoding"] for r in first] == [{"max_new_tokens": 3, "repetition_penalty": 1.1}] * 2
    assert generate_to_jsonl(tiny, rows, out, max_new_tokens=3, repetition_penalty=1.1, slots=2)[:2] == first
    with pytest.raises(InputError, match=r"out.jsonl:1: made by model 'preset:tiny' with \{'max_new_tokens': 3, "
                                         r"'repetition_penalty': 1.1\}, but this run uses 'preset:tiny' with "
                                         r"\{'max_new_tokens': 4, "):
        generate_to_jsonl(tiny, rows, out, max_new_tokens=4, repetition_penalty=1.1, slots=2)
    assert len(out.read_text().splitlines()) == 3
