import json
import shutil

import pytest

from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions.evalsets import PAPER_LANGUAGES, instruction_text, load_eval_set


def test_paper_set_is_aligned_across_languages(shared_data):
    items = load_eval_set("chirkova", data_dir=shared_data)
    assert len(items) == 113 * 4
    by_lang = {lang: [it for it in items if it.language == lang] for lang in PAPER_LANGUAGES}
    assert [it.id for it in by_lang["en"]] == [it.id for it in by_lang["ru"]]
    assert "kickball" in instruction_text(by_lang["en"][0].messages)
    assert "кикбол" in instruction_text(by_lang["ru"][0].messages)
    assert all(it.expected_language == it.language and it.modifier is None for it in items)


def test_modifiers_carry_their_types_and_answer_language(shared_data):
    items = load_eval_set("chirkova_modifiers", data_dir=shared_data)
    assert len(items) == 251 * 4
    en = {it.id: it for it in items if it.language == "en"}
    ru = {it.id: it for it in items if it.language == "ru"}
    assert en["0000"].modifier == "short"
    assert en["0000"].messages[0]["content"].endswith("Answer briefly in just a few sentences.")
    asked_in_other = [it for it in items if it.modifier.startswith("lang_")]
    assert asked_in_other and all(it.expected_language == it.modifier[5:] for it in asked_in_other)
    assert any(it.expected_language == "de" for it in ru.values())  # ru asks for German, fr, pt
    same_family = sum(en[i].modifier.split("_")[0] == ru[i].modifier.split("_")[0] for i in en)
    assert same_family == 251


def test_alpaca_farm_joins_instruction_and_input(shared_data):
    items = load_eval_set("alpaca_farm", data_dir=shared_data)
    assert len(items) == 805 and {it.language for it in items} == {"en"}
    with_input = [it for it in items if "\n\n" in it.messages[0]["content"]]
    assert len(with_input) >= 208
    assert {it.group for it in items} == {"helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}
    koala = load_eval_set("alpaca_farm", data_dir=shared_data, subset=["koala"])
    assert koala and all(it.group == "koala" for it in koala)


@pytest.mark.parametrize("spec, languages, message", [
    ("chirkova", ["en", "xx"], "has no language 'xx'"),
    ("alpaca_farm", ["fr"], "has no language 'fr'"),
    ("chirkova", ["e n"], "not a language code"),
    ("mmlu", None, "unknown eval set"),
])
def test_bad_set_or_language_is_a_clear_error(shared_data, spec, languages, message):
    with pytest.raises(InputError, match=message):
        load_eval_set(spec, languages, data_dir=shared_data)


def test_limit_and_seed_pick_the_same_ids_in_every_language(shared_data):
    first = load_eval_set("chirkova", ["en", "fr"], shared_data, limit=3)
    assert sorted({it.id for it in first}) == ["0000", "0001", "0002"]
    sample = load_eval_set("chirkova", ["en", "fr"], shared_data, limit=5, seed=7)
    ids = {lang: {it.id for it in sample if it.language == lang} for lang in ("en", "fr")}
    assert ids["en"] == ids["fr"] and len(ids["en"]) == 5
    assert {it.id for it in load_eval_set("chirkova", ["en"], shared_data, limit=5, seed=7)} == ids["en"]
    assert {it.id for it in load_eval_set("chirkova", ["en"], shared_data, limit=5, seed=8)} != ids["en"]


def test_subset_selects_modifier_types_by_pattern(shared_data):
    items = load_eval_set("chirkova_modifiers", ["en", "pt"], shared_data, subset=["num_items_*", "cap_template"])
    assert {it.modifier.rsplit("_", 1)[0] if it.modifier.startswith("num") else it.modifier for it in items} == {
        "num_items", "cap_template"}
    assert len(items) == 2 * (12 + 14)


def test_jsonl_sets_take_a_language_placeholder(shared_data):
    spec = f"jsonl:{shared_data}/hplt_oasst_test/test_{{lang}}.jsonl"
    items = load_eval_set(spec, ["fr", "ru"], shared_data, limit=4)
    assert len(items) == 8 and {it.set for it in items} == {"test"}
    assert {it.id for it in items if it.language == "fr"} == {it.id for it in items if it.language == "ru"}
    with pytest.raises(InputError, match="test_pt.jsonl: no such file"):
        load_eval_set(spec, ["pt"], shared_data)
    with pytest.raises(InputError, match="name the languages"):
        load_eval_set(spec, None, shared_data)


def test_jsonl_rows_are_checked_with_file_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps([{"role": "user", "content": "Hi"}]) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "Hi", "extra": 1}], "id": "b"}) + "\n"
                    + json.dumps({"instruction": "Sum", "input": "1 2"}) + "\n", encoding="utf-8")
    items = load_eval_set(f"jsonl:{path}", ["en"])
    assert [it.id for it in items] == ["0001", "b", "0003"]
    assert items[2].messages[0]["content"] == "Sum\n\n1 2"
    with pytest.raises(InputError, match="name the file's one language"):
        load_eval_set(f"jsonl:{path}", ["en", "fr"])
    path.write_text(json.dumps([{"role": "user", "content": "Hi"}]) + "\n"
                    + json.dumps([{"role": "assistant", "content": "Hi"}]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"prompts.jsonl:2: the last message must be the user's"):
        load_eval_set(f"jsonl:{path}", ["en"])


def test_modifier_types_must_match_the_prompts(shared_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shared_data / "chirkova2024_eval", data / "chirkova2024_eval")
    types = data / "chirkova2024_eval" / "modifiers.fr.types"
    types.write_text("\n".join(types.read_text().split()[:-1]) + "\n")
    with pytest.raises(InputError, match=r"modifiers.fr.types: 250 type labels for the 251 prompts"):
        load_eval_set("chirkova_modifiers", ["fr"], data)
    prompts = data / "chirkova2024_eval" / "alpacaeval_test_subset.pt.jsonl"
    prompts.write_text("".join(prompts.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(InputError, match="not line-aligned"):
        load_eval_set("chirkova", ["en", "pt"], data)
