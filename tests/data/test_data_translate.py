"""Dataset translation: layout kept, resumable output, a tiny random NLLB-shaped model, and SmolLM2."""

import json
import os
import subprocess
import sys

import pytest

from xlit_jax.data.records import Record, Turn, load_source
from xlit_jax.data.translate import LLMTranslator, Seq2SeqTranslator, split_units, translate_file, translate_records
from xlit_jax.errors import InputError
from xlit_jax.io.files import read_jsonl

from support import REPO

RESPONSE = ("Here is how. Run the code below!\n\n```python\nprint('Hello. World')\n```\n"
            "1. First step. Then wait.\n  - a nested point\n## Notes\n42\n")


def shouting(calls=None):
    """A fake MT engine that makes translations visible: upper case with the target language in front."""
    def translate(texts, src, tgt):
        if calls is not None:
            calls.append(list(texts))
        return [f"[{tgt}] {t.upper()}" for t in texts]
    return translate


def test_units_join_back_and_keep_code_and_markers():
    units = split_units(RESPONSE)
    assert "".join(u.text for u in units) == RESPONSE
    assert [u.text for u in units if u.translate] == [
        "Here is how.", "Run the code below!", "First step.", "Then wait.", "a nested point", "Notes"]


def test_translate_records_keeps_layout_ids_and_roles():
    record = Record("dolly-7", (Turn("user", "Explain.\n\nHere is how."), Turn("assistant", RESPONSE)), "en",
                    "dolly/open_qa")
    calls = []
    (out,) = translate_records([record], shouting(calls), "en", "fr")
    assert (out.id, out.lang, out.source) == ("dolly-7", "fr", "dolly/open_qa")
    assert out.turns[0] == Turn("user", "[fr] EXPLAIN.\n\n[fr] HERE IS HOW.")
    assert out.turns[1].content == (
        "[fr] HERE IS HOW. [fr] RUN THE CODE BELOW!\n\n```python\nprint('Hello. World')\n```\n"
        "1. [fr] FIRST STEP. [fr] THEN WAIT.\n  - [fr] A NESTED POINT\n## [fr] NOTES\n42\n")
    assert len(calls) == 1 and calls[0].count("Here is how.") == 1  # one batched call, repeats translated once


def test_translate_file_resumes_after_a_killed_writer(tmp_path):
    records = [Record(f"r{i}", (Turn("user", f"Question {i}?"), Turn("assistant", f"Answer {i}.")), "en", "t")
               for i in range(5)]
    out = tmp_path / "set.fr.jsonl"
    done = translate_records(records[:2], shouting(), "en", "fr")
    out.write_text("".join(json.dumps(r.to_json()) + "\n" for r in done) + '{"id": "r2", "lang"')  # cut mid-line
    calls = []
    counts = translate_file(records, shouting(calls), "en", "fr", out, chunk_size=2, progress=False)
    assert counts == {"translated": 3, "failed": 0, "done_before": 2}
    assert len(calls) == 2  # chunks of 2 records: r2-r3, r4
    rows = [row for _, row in read_jsonl(out)]
    assert [row["id"] for row in rows] == ["r0", "r1", "r2", "r3", "r4"]
    assert load_source(f"chat:{out}").records == translate_records(records, shouting(), "en", "fr")
    assert translate_file(records, shouting(), "en", "fr", out, progress=False)["translated"] == 0


def test_empty_translations_are_left_out_and_retried(tmp_path):
    records = [Record(f"r{i}", (Turn("user", f"Question {i}?"), Turn("assistant", f"Answer {i}.")), "en", "t")
               for i in range(3)]
    out = tmp_path / "set.ru.jsonl"
    blank_one = lambda texts, src, tgt: ["" if "1" in t else t for t in texts]  # noqa: E731
    assert translate_file(records, blank_one, "en", "ru", out, progress=False) == {
        "translated": 2, "failed": 1, "done_before": 0}
    assert translate_file(records, shouting(), "en", "ru", out, progress=False) == {
        "translated": 1, "failed": 0, "done_before": 2}
    assert [r.id for r in load_source(f"chat:{out}").records] == ["r0", "r2", "r1"]


def test_a_rerun_with_another_translator_is_refused_and_rows_record_theirs(tmp_path):
    records = [Record(f"r{i}", (Turn("user", f"Question {i}?"), Turn("assistant", f"Answer {i}.")), "en", "t")
               for i in range(3)]
    out = tmp_path / "set.fr.jsonl"
    nllb = {"engine": "seq2seq", "model": "nllb", "num_beams": 4, "max_new_tokens": 256}
    translate_file(records[:2], shouting(), "en", "fr", out, progress=False, made_by=nllb)
    assert [row["translated_by"] for _, row in read_jsonl(out)] == [nllb, nllb]
    assert load_source(f"chat:{out}").records == translate_records(records[:2], shouting(), "en", "fr")
    with pytest.raises(InputError, match=r"set.fr.jsonl:1: translated by \{'engine': 'seq2seq', .* but this run "
                                         r"translates with \{'engine': 'seq2seq', 'model': 'nllb', 'num_beams': 1"):
        translate_file(records, shouting(), "en", "fr", out, progress=False, made_by={**nllb, "num_beams": 1})
    assert translate_file(records, shouting(), "en", "fr", out, progress=False, made_by=nllb)["translated"] == 1


@pytest.fixture(scope="module")
def tiny_nllb(tmp_path_factory):
    """An NLLB-shaped model (M2M100 architecture, NLLB tokenizer and language codes) with random weights,
    but for a decoder output fixed on the embedding of "x": it translates everything to "xxx..."."""
    import string

    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + ["▁"] + list(string.ascii_letters + string.digits + ".,!?'"))}
    tokenizer = NllbTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    config = M2M100Config(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                          eos_token_id=2, decoder_start_token_id=2)
    model = M2M100ForConditionalGeneration(config)
    with torch.no_grad():
        norm = model.model.decoder.layer_norm
        norm.weight.zero_()
        norm.bias.copy_(model.lm_head.weight[vocab["x"]] * 10)
    directory = tmp_path_factory.mktemp("tiny-nllb")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_seq2seq_translator_plumbing(tiny_nllb):
    translator = Seq2SeqTranslator(str(tiny_nllb), device="cpu", batch_size=2, num_beams=1, max_new_tokens=6)
    seen = []
    generate = translator.model.generate

    def spy(**kwargs):
        seen.append(kwargs)
        return generate(**kwargs)

    translator.model.generate = spy
    texts = ["Hello world.", "A much longer sentence goes first.", "Hi!"]
    assert translator(texts, "en", "fr") == ["xxxxx"] * 3  # 6 new tokens: the language tag, then x
    tok = translator.tokenizer
    assert [len(k["input_ids"]) for k in seen] == [2, 1]  # batched, longest first
    assert all(k["forced_bos_token_id"] == tok.convert_tokens_to_ids("fra_Latn") for k in seen)
    assert seen[0]["input_ids"][0, 0] == tok.convert_tokens_to_ids("eng_Latn")  # the source language tag
    with pytest.raises(InputError, match="no NLLB code known"):
        translator(texts, "en", "xx")
    with pytest.raises(InputError, match=r"^\./absent: cannot load the MT model: no such directory$"):
        Seq2SeqTranslator("./absent")


def test_an_unknown_language_is_one_line_before_the_model_loads(tmp_path):
    data = tmp_path / "mini.en.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi.", "context": "", "response": "Hi!"}) + "\n")
    for flag, message in [("--target_langs=fr,xx", "no NLLB code known for 'xx'"),
                          ("--target_langs=", "--target_langs is empty")]:
        done = subprocess.run([sys.executable, "-m", "launch.translate", f"--input=dolly:{data}", flag,
                               f"--output_dir={tmp_path}/out", "--model=./absent"], capture_output=True, text=True,
                              timeout=300, cwd=REPO)
        assert (done.returncode, done.stderr.splitlines()[-1].startswith(f"xlit-translate: {message}")) == (2, True)
    assert not (tmp_path / "out").exists()


def run_cli(module, *args):
    """A launch module in a fresh process, as a user runs it (absl flags are process-global)."""
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow  # ~7 s (a binary loading the tiny NLLB): CI runs it; the translators' own tests are in make test
def test_translate_cli_with_the_tiny_model(tiny_nllb, tmp_path):
    data = tmp_path / "mini.en.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi.", "context": "", "response": "Hi!", "category": "x"})
                    + "\n[broken\n")
    out = run_cli("launch.translate", f"--input=dolly:{data}", "--target_langs=fr,ru", f"--output_dir={tmp_path}/out",
                  f"--model={tiny_nllb}", "--num_beams=1", "--max_new_tokens=4", "--skip_invalid")
    assert "1 records in en; 1 invalid rows skipped" in out
    for lang in ("fr", "ru"):
        assert f"mini.{lang}.jsonl: 1 records translated now, 0 before; 0 left out" in out
        (record,) = load_source(f"chat:{tmp_path}/out/mini.{lang}.jsonl").records
        assert record == Record("mini-0", (Turn("user", "xxx"), Turn("assistant", "xxx")), lang, "dolly/x")


def test_llm_translator_on_smollm2(smollm2):
    out = LLMTranslator(smollm2, slots=2, max_new_tokens=8)(["Good morning.", "Thank you very much."],
                                                                 "en", "fr")
    assert len(out) == 2 and all(isinstance(t, str) and t for t in out)
