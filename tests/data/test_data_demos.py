"""Translation-following demonstrations from NTREX-128 and small parallel files."""

import json
import os
import subprocess
import sys

import pytest

from xlit_jax.data.demos import NAMES, PHRASINGS, load_ntrex, load_parallel, make_demos, mix
from xlit_jax.data.records import Record, Turn, load_source
from xlit_jax.errors import InputError

from support import REPO

PAIRS = [("The cat sleeps.", "Кошка спит."), ("It is raining.", "Идёт дождь.")]


def phrasing_language(instruction: str, src: str, tgt: str) -> str:
    """Which language's phrasings `instruction` comes from."""
    found = [lang for lang, phrasings in PHRASINGS.items()
             if instruction in {p.format(src=NAMES[lang].get(src), tgt=NAMES[lang].get(tgt)) for p in phrasings}]
    assert len(found) == 1, instruction
    return found[0]


def test_ntrex_pairs_are_aligned_and_clean(shared_data):
    pairs = load_ntrex(shared_data / "ntrex128", "en", "pt-BR")
    assert len(pairs) == 1997
    assert pairs[0][0] == "Welsh AMs worried about 'looking like muppets'"
    assert not any("\r" in a or "\r" in b for a, b in pairs)
    with pytest.raises(InputError, match="NTREX language 'ja'"):
        load_ntrex(shared_data / "ntrex128", "en", "ja")


@pytest.mark.parametrize("instruction_lang", ["source", "target", "en"])
def test_both_directions_and_the_instruction_language(instruction_lang):
    demos = make_demos(PAIRS, "en", "ru", "toy", instruction_lang=instruction_lang, seed=1)
    assert [(d.id, d.lang) for d in demos] == [("toy-0-en-ru", "ru"), ("toy-0-ru-en", "en"),
                                               ("toy-1-en-ru", "ru"), ("toy-1-ru-en", "en")]
    for demo, (src, tgt), (text, answer) in zip(demos, [("en", "ru"), ("ru", "en")] * 2,
                                                [PAIRS[0], PAIRS[0][::-1], PAIRS[1], PAIRS[1][::-1]]):
        instruction, sentence = demo.turns[0].content.split("\n\n")
        assert (sentence, demo.turns[1]) == (text, Turn("assistant", answer))
        expected = {"source": src, "target": tgt, "en": "en"}[instruction_lang]
        assert phrasing_language(instruction, src, tgt) == expected
        assert demo.source == "demos/toy"


def test_phrasings_vary_and_follow_the_seed():
    pairs = [(f"Sentence {i}.", f"Phrase {i}.") for i in range(40)]
    first = [d.turns[0].content for d in make_demos(pairs, "en", "fr", directions=["forward"], seed=0)]
    assert len({text.split("\n\n")[0] for text in first}) == len(PHRASINGS["fr"])
    assert first == [d.turns[0].content for d in make_demos(pairs, "en", "fr", directions=["forward"], seed=0)]
    assert first != [d.turns[0].content for d in make_demos(pairs, "en", "fr", directions=["forward"], seed=1)]


def test_bad_parallel_input(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("un\n")
    (tmp_path / "c.txt").write_text("un\n \n")
    with pytest.raises(InputError, match="has 2 lines but .*b.txt has 1"):
        load_parallel(tmp_path / "a.txt", tmp_path / "b.txt")
    with pytest.raises(InputError, match=r"c.txt:2: empty line"):
        load_parallel(tmp_path / "a.txt", tmp_path / "c.txt")
    with pytest.raises(InputError, match="no translation instructions written in 'ja'"):
        make_demos(PAIRS, "en", "ru", instruction_lang="ja")
    with pytest.raises(InputError, match="directions"):
        make_demos(PAIRS, "en", "ru", directions=["sideways"])


def test_mix_ratio():
    instructions = [Record(f"i{k}", (Turn("user", "q"), Turn("assistant", "a")), "en", "x") for k in range(90)]
    demos = make_demos([(f"s{k}.", f"t{k}.") for k in range(50)], "en", "fr")
    mixed = mix(instructions, demos, 0.1, seed=0)
    assert mixed[:90] == instructions and len(mixed) == 100
    assert len({d.id for d in mixed[90:]}) == 10 and all(d.source.startswith("demos/") for d in mixed[90:])
    with pytest.raises(InputError, match="needs 90 demonstrations"):
        mix(instructions, demos[:20], 0.5)


def test_demos_cli_mixes_into_instruction_data(shared_data, tmp_path):
    data = tmp_path / "tiny.en.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Q{k}", "context": "", "response": f"A{k}",
                                        "category": "x"}) + "\n" for k in range(30)))
    out = tmp_path / "mixed.jsonl"
    done = subprocess.run([sys.executable, "-m", "launch.translation_demos", f"--ntrex_dir={shared_data}/ntrex128",
                           "--langs=fr,ru", "--max_pairs=5", "--instruction_lang=source", f"--mix_with=dolly:{data}",
                           "--ratio=0.25", f"--output={out}"], capture_output=True, text=True, cwd=REPO,
                          env=os.environ, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "20 demonstrations" in done.stdout
    records = load_source(f"chat:{out}").records
    assert len(records) == 40 and sum(r.source == "demos/ntrex" for r in records) == 10
    pairs = load_ntrex(shared_data / "ntrex128", "en", "fr")
    en_fr = [r for r in records if r.id.endswith("-en-fr")]
    assert en_fr
    for demo in en_fr:  # ids give the corpus line
        line = int(demo.id.split("-")[1])
        assert demo.turns[0].content.endswith("\n\n" + pairs[line][0]) and demo.turns[1].content == pairs[line][1]
    assert {r.lang for r in records} == {"en", "fr", "ru"}


def test_benchmark_language_demos_round_trip_through_smollm2s_tokenizer(shared_data):
    """CrossAlpaca's languages from NTREX-128, phrased in the target language; SmolLM2's byte-level BPE
    gives back every NTREX sentence of Arabic and Chinese exactly (at about 1 and 0.6 characters a token)."""
    from xlit_jax.data.demos import BENCHMARK_LANGUAGES
    from xlit_jax.io.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    for lang in BENCHMARK_LANGUAGES:
        pairs = load_ntrex(shared_data / "ntrex128", "en", lang)
        assert len(pairs) == 1997 and all(b and "\r" not in b for _, b in pairs)
        demos = make_demos(pairs, "en", lang, "ntrex", max_pairs=4, seed=0)
        assert [d.lang for d in demos] == [lang, "en"] * 4
        for demo in demos:
            instruction, sentence = demo.turns[0].content.split("\n\n", 1)
            assert phrasing_language(instruction, *demo.id.split("-")[-2:]) == demo.lang  # the target's
        if lang in ("ar", "zh"):
            texts = [b for _, b in pairs[:200]] + [d.turns[0].content for d in demos]
            assert all(tokenizer.decode(tokenizer.encode(t, add_special_tokens=False)) == t for t in texts)
    assert PHRASINGS["ar"][0].format(tgt=NAMES["ar"]["en"]) == "ترجم النص التالي إلى اللغة الإنجليزية."
