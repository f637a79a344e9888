"""Loaders and validation: the real files in ../shared/data and fixtures in Dolly's schema."""

import json

import pytest

from xlit_jax.data.records import Source, Turn, load_dolly, load_source, parse_source
from xlit_jax.errors import InputError

DOLLY_ROWS = [
    {"instruction": "When did Virgin Australia start operating?",
     "context": "Virgin Australia commenced services on 31 August 2000.", "response": "On 31 August 2000.",
     "category": "closed_qa"},
    {"instruction": "  Name three primary colours. ", "context": "", "response": "Red, yellow and blue.\n",
     "category": "brainstorming"},
    {"instruction": "Write a Python one-liner that prints hi.", "context": "",
     "response": "```python\nprint('hi')\n```", "category": "creative_writing"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def dolly_file(tmp_path):
    return write_jsonl(tmp_path / "dolly.en.jsonl", DOLLY_ROWS)


def test_dolly_rows_become_two_turns(dolly_file):
    loaded = load_dolly(str(dolly_file))
    assert loaded.skipped == []
    first, second, _ = loaded.records
    assert first.turns == (Turn("user", "When did Virgin Australia start operating?\n\n"
                                        "Virgin Australia commenced services on 31 August 2000."),
                           Turn("assistant", "On 31 August 2000."))
    assert second.turns == (Turn("user", "Name three primary colours."), Turn("assistant", "Red, yellow and blue."))
    assert (first.id, first.lang, first.source) == ("dolly-0", "en", "dolly/closed_qa")
    assert [r.id for r in loaded.records] == ["dolly-0", "dolly-1", "dolly-2"]


def test_dolly_parquet_and_json_array_read_the_same(tmp_path, dolly_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(DOLLY_ROWS), tmp_path / "dolly.en.parquet")
    (tmp_path / "dolly.en.json").write_text(json.dumps(DOLLY_ROWS, indent=2), encoding="utf-8")
    expected = load_dolly(str(dolly_file)).records
    assert load_dolly(str(tmp_path / "dolly.en.parquet")).records == expected
    assert load_dolly(str(tmp_path / "dolly.en.json")).records == expected


@pytest.mark.parametrize("row, message", [
    ({"instruction": "Hi", "context": "", "category": "x"}, "dolly.en.jsonl:2:response: missing"),
    ({"instruction": "Hi", "context": "", "response": "  ", "category": "x"}, "dolly.en.jsonl:2:response: empty"),
    ({"instruction": 3, "context": "", "response": "a", "category": "x"},
     "dolly.en.jsonl:2:instruction: expected a string, got int"),
    ({"instruction": "Hi", "context": ["x"], "response": "a", "category": "x"},
     "dolly.en.jsonl:2:context: expected a string, got list"),
    (["not", "an", "object"], "dolly.en.jsonl:2: expected a JSON object"),
])
def test_invalid_dolly_rows_name_file_line_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "dolly.en.jsonl", [DOLLY_ROWS[0], row, DOLLY_ROWS[1]])
    with pytest.raises(InputError, match=message):
        load_dolly(str(path))
    loaded = load_dolly(str(path), skip_invalid=True)
    assert [r.turns[1].content for r in loaded.records] == ["On 31 August 2000.", "Red, yellow and blue."]
    assert len(loaded.skipped) == 1 and message in loaded.skipped[0]


def test_malformed_line_is_an_error_or_skipped_and_counted(tmp_path):
    path = tmp_path / "dolly.en.jsonl"
    path.write_text(json.dumps(DOLLY_ROWS[0]) + "\n{not json\n" + json.dumps(DOLLY_ROWS[1]) + "\n")
    with pytest.raises(InputError, match=r"dolly.en.jsonl:2: malformed JSON"):
        load_dolly(str(path))
    loaded = load_dolly(str(path), skip_invalid=True)
    assert len(loaded.records) == 2 and len(loaded.skipped) == 1


def test_a_file_without_records_is_an_error(tmp_path):
    empty = tmp_path / "dolly.en.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match=r"^\S*dolly.en.jsonl: no records$"):
        load_dolly(str(empty))
    write_jsonl(empty, [{"instruction": 5}, {"instruction": "a"}])
    with pytest.raises(InputError, match=r"dolly.en.jsonl: no records \(2 rows skipped as invalid, the first: "
                                         r"\S*dolly.en.jsonl:1:instruction: expected a string, got int\)$"):
        load_dolly(str(empty), skip_invalid=True)


def test_json_array_errors_name_the_line_of_the_item(tmp_path):
    rows = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": "", "output": 5}]
    path = tmp_path / "set.json"
    path.write_text(json.dumps(rows, indent=2))
    with pytest.raises(InputError, match=r"set.json:7:output: expected a string, got int"):
        load_source(Source("alpaca", str(path), "en"))


def test_lima(shared_data):
    loaded = load_source(f"lima:{shared_data}/lima/lima.en.jsonl")
    assert len(loaded.records) == 1030 and not loaded.skipped
    assert {r.lang for r in loaded.records} == {"en"}
    assert loaded.records[0].source == "stackexchange" and loaded.records[0].id == "lima-0"
    for r in loaded.records:  # alternation, starting with the user and ending on an answer
        assert [t.role for t in r.turns] == ["user", "assistant"] * (len(r.turns) // 2)
    # One multi-turn conversation ends with an unanswered user turn, which is dropped.
    assert sorted({len(r.turns) for r in loaded.records}) == [2, 4, 6, 8, 20]


def test_chat_jsonl_prompts_and_role_aliases(shared_data):
    prompts = load_source(f"chat:{shared_data}/chirkova2024_eval/alpacaeval_test_subset.ru.jsonl",
                          require_response=False).records
    assert len(prompts) == 113 and prompts[0].lang == "ru" and prompts[0].turns[0].role == "user"
    with pytest.raises(InputError, match=r"alpacaeval_test_subset.ru.jsonl:1: no assistant turn"):
        load_source(f"chat:{shared_data}/chirkova2024_eval/alpacaeval_test_subset.ru.jsonl")
    vigogne = load_source(f"chat:{shared_data}/vigogne_oasst_fr/oasst_20230412_fr_1k.jsonl,lang=fr").records
    assert len(vigogne) == 1183 and vigogne[0].id == "oasst-20230412-fr-00000000"
    assert {t.role for r in vigogne for t in r.turns} == {"user", "assistant"}


def test_unknown_language_is_an_error(shared_data):
    with pytest.raises(InputError, match="the language is unknown"):
        load_source(f"chat:{shared_data}/vigogne_oasst_fr/oasst_20230412_fr_1k.jsonl")


def test_alpaca_json_and_seed_tasks(shared_data):
    farm = load_source(f"alpaca:{shared_data}/alpaca_farm_eval/alpaca_farm_evaluation_805.gpt-3.5-turbo-0301.json"
                       ",lang=en").records
    assert len(farm) == 805 and farm[0].turns[0].content.startswith("What are the names of some famous actors")
    fr = load_source(f"alpaca:{shared_data}/seed_tasks_parallel/seed_tasks.fr.jsonl").records
    ru = load_source(f"alpaca:{shared_data}/seed_tasks_parallel/seed_tasks.ru.jsonl").records
    assert (len(fr), len(ru), fr[0].lang, ru[0].lang) == (175, 137, "fr", "ru")
    assert fr[0].id == ru[0].id == "seed_task_0"  # ids line up across languages


@pytest.mark.parametrize("messages, message", [
    ([{"role": "assistant", "content": "hi"}], r"messages\[0\].role: expected user, got assistant"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     r"messages\[1\].role: expected assistant, got user"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": 7}], r"messages\[1\].content: missing or"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}], r"messages\[1\].content: empty"),
    ([{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}], r"messages\[1\].role: unknown role"),
    ([], r"messages: expected a non-empty list"),
])
def test_invalid_chat_rows(tmp_path, messages, message):
    path = write_jsonl(tmp_path / "chat.fr.jsonl", [{"messages": messages}])
    with pytest.raises(InputError, match=r"chat.fr.jsonl:1:" + message):
        load_source(f"chat:{path}")


def test_our_own_output_format_round_trips(tmp_path, dolly_file):
    records = load_dolly(str(dolly_file)).records
    path = write_jsonl(tmp_path / "out.jsonl", [r.replace(lang="fr").to_json() for r in records])
    assert load_source(f"chat:{path}").records == [r.replace(lang="fr") for r in records]


def test_hf_dataset_with_a_field_mapping(tmp_path):
    rows = [{"question": "2+2?", "answer": "4", "uid": "q1"}, {"question": "Capital of France?", "answer": "Paris",
                                                                "uid": "q2"}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    records = load_source(f"hf:{tmp_path},lang=en,map.instruction=question,map.response=answer,map.id=uid").records
    assert [(r.id, r.turns[0].content, r.turns[1].content) for r in records] == [
        ("q1", "2+2?", "4"), ("q2", "Capital of France?", "Paris")]
    with pytest.raises(InputError, match=r"\[train\]:row 0:reply: missing"):
        load_source(f"hf:{tmp_path},lang=en,map.instruction=question,map.response=reply")


def test_parse_source():
    assert parse_source("dolly:/x/dolly.jsonl,n=1030,lang=en") == Source("dolly", "/x/dolly.jsonl", "en", n=1030)
    assert parse_source("hf:a/b,split=test,map.response=out").fields == (("response", "out"),)
    for bad in ("nocolon", "dolly:/x,n", "dolly:/x,n=many", "dolly:/x,colour=red", "yaml:/x.yaml"):
        with pytest.raises(InputError):
            parse_source(bad)
