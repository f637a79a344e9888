"""Tokenize, truncate, pack, mix and resume: the batches the trainer sees."""

import json
from collections import Counter

import numpy as np
import pytest

from xlit_jax.data.pipeline import (
    BATCH_KEYS,
    Example,
    PackedBatches,
    batch_size_for,
    build,
    check_settings,
    downsample,
    load_mix,
    parse_weights,
    tokenize,
)
from xlit_jax.data.records import Record, Turn
from xlit_jax.data.templates import get_template
from xlit_jax.errors import InputError

L, B = 64, 3


def synthetic(n=200, langs=("en",), seed=0):
    """Examples with distinct token ids (so each can be traced in the batches) and a target tail."""
    rng = np.random.default_rng(seed)
    out, next_id = [], 1
    for i in range(n):
        length = int(rng.integers(2, L + 2))
        ids = np.arange(next_id, next_id + length, dtype=np.int32)
        next_id += length
        target = np.arange(length) >= rng.integers(1, length)
        out.append(Example(ids, target, langs[i % len(langs)], f"ex-{i}"))
    return out


def segments(batch):
    """(row, start, width) of each packed example, checking the layout rules on the way."""
    found = []
    for r in range(batch["input_ids"].shape[0]):
        seg, pos = batch["segment_ids"][r], batch["positions"][r]
        used = int((seg > 0).sum())
        assert (seg[used:] == 0).all() and (batch["loss_mask"][r, used:] == 0).all()  # padding only at the end
        starts = [t for t in range(used) if pos[t] == 0]
        assert list(seg[:used]) == [k + 1 for k, s in enumerate(starts)
                                    for _ in range((starts + [used])[k + 1] - s)]
        for k, start in enumerate(starts):
            width = (starts + [used])[k + 1] - start
            assert list(pos[start:start + width]) == list(range(width))
            found.append((r, start, width))
    return found


def traced(batches, examples):
    """Which example each segment holds, checking tokens, shifted targets and the loss mask against it."""
    by_first = {int(ex.ids[0]): ex for ex in examples}
    seen = []
    for batch in batches:
        assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
            "input_ids": ((B, L), "int32"), "targets": ((B, L), "int32"), "loss_mask": ((B, L), "float32"),
            "segment_ids": ((B, L), "int32"), "positions": ((B, L), "int32")}
        for r, start, width in segments(batch):
            ex = by_first[int(batch["input_ids"][r, start])]
            span = slice(start, start + width)
            assert width == len(ex.ids) - 1
            np.testing.assert_array_equal(batch["input_ids"][r, span], ex.ids[:-1])
            np.testing.assert_array_equal(batch["targets"][r, span], ex.ids[1:])
            np.testing.assert_array_equal(batch["loss_mask"][r, span], ex.target[1:])
            seen.append(ex.id)
    return seen


def test_one_epoch_holds_every_example_once_in_the_documented_layout():
    examples = synthetic()
    batches = list(PackedBatches(examples, L, B, seed=1, epochs=1))
    assert sorted(traced(batches, examples)) == sorted(ex.id for ex in examples)
    fill = np.mean([(b["segment_ids"] > 0).mean() for b in batches])
    assert fill > 0.9, fill


def test_endless_by_default_and_reshuffled_per_epoch():
    examples = synthetic(30)
    data = PackedBatches(examples, L, B, seed=0)
    ids = traced([next(data) for _ in range(60)], examples)
    counts = Counter(ids)
    # Packing defers an example by one batch at most, so all are seen equally often, give or take one.
    assert set(counts) == {ex.id for ex in examples} and min(counts.values()) >= 2
    assert max(counts.values()) - min(counts.values()) <= 1
    assert ids[:30] != ids[30:60]


def test_seed_decides_the_order():
    examples = synthetic(50)
    run = lambda seed: traced(PackedBatches(examples, L, B, seed=seed, epochs=1), examples)  # noqa: E731
    assert run(3) == run(3) and run(3) != run(4)


@pytest.mark.parametrize("mixing, weights", [("none", None), ("uniform", None), ("weights", {"en": 2, "fr": 1,
                                                                                             "ru": 0.5})])
def test_resume_continues_exactly(mixing, weights):
    examples = synthetic(120, langs=("en", "fr", "ru"))
    data = PackedBatches(examples, L, B, seed=5, mixing=mixing, weights=weights)
    for _ in range(17):
        next(data)
    state = json.loads(json.dumps(data.state()))  # it must survive being written as JSON
    expected = [next(data) for _ in range(40)]
    resumed = PackedBatches(examples, L, B, seed=5, mixing=mixing, weights=weights)
    resumed.restore(state)
    for want, got in zip(expected, (next(resumed) for _ in range(40))):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(want[key], got[key])


def test_restore_refuses_other_data_or_settings():
    examples = synthetic(40)
    state = PackedBatches(examples, L, B).state()
    with pytest.raises(ValueError, match="resume with the same data and settings"):
        PackedBatches(examples[:-1], L, B).restore(state)
    with pytest.raises(ValueError, match="resume with the same data and settings"):
        PackedBatches(examples, L, B + 1).restore(state)


def batch_languages(data, examples, count):
    lang = {int(ex.ids[0]): ex.lang for ex in examples}
    out = []
    for _ in range(count):
        batch = next(data)
        starts = batch["input_ids"][(batch["positions"] == 0) & (batch["segment_ids"] > 0)]
        langs = {lang[int(t)] for t in starts}
        assert len(langs) == 1  # one language per micro-batch
        out.append(langs.pop())
    return Counter(out)


def test_uniform_and_weighted_language_mixing():
    # Unbalanced pools: uniform mixing must still give each language about a third of the micro-batches.
    examples = synthetic(300, langs=("en",) * 8 + ("fr", "ru"))
    uniform = batch_languages(PackedBatches(examples, L, B, mixing="uniform"), examples, 600)
    assert all(abs(uniform[lang] / 600 - 1 / 3) < 0.06 for lang in ("en", "fr", "ru")), uniform
    weighted = batch_languages(PackedBatches(examples, L, B, mixing="weights", weights={"en": 3, "fr": 1, "ru": 0}),
                               examples, 400)
    assert weighted["ru"] == 0 and abs(weighted["en"] / 400 - 0.75) < 0.07, weighted
    with pytest.raises(ValueError, match="each language"):
        PackedBatches(examples, L, B, mixing="weights", weights={"en": 1})


def test_truncation_policy(tok):
    template = get_template("llama2", tok)
    long_answer = Record("a", (Turn("user", "Say it."), Turn("assistant", "word " * 200)), "en", "t")
    long_prompt = Record("b", (Turn("user", "word " * 200), Turn("assistant", "ok")), "en", "t")
    short = Record("c", (Turn("user", "Hi"), Turn("assistant", "Hello")), "en", "t")
    examples, counts = tokenize([long_answer, long_prompt, short], template, tok, seq_len=50)
    assert [ex.id for ex in examples] == ["a", "c"] and counts == {"truncated": 1, "dropped": 1}
    assert len(examples[0].ids) == 51 and examples[0].target[1:].any()
    examples, counts = tokenize([long_answer, long_prompt, short], template, tok, seq_len=50, truncation="drop")
    assert [ex.id for ex in examples] == ["c"] and counts == {"truncated": 0, "dropped": 2}
    with pytest.raises(InputError, match=r"^all 3 examples dropped at seq_len=4 \(truncation=truncate\)"):
        tokenize([long_answer, long_prompt, short], template, tok, seq_len=4)


def test_lima_packs_densely(tok, shared_data):
    data, report = build(load_mix([f"lima:{shared_data}/lima/lima.en.jsonl"]), tok, "llama2", seq_len=2048,
                         tokens_per_batch=4096, epochs=1)
    assert report["examples"] + report["dropped"] == 1030 and report["truncated"] > 0
    batches = list(data)
    filled = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    assert filled == sum(len(ex.ids) - 1 for ex in data.pools[0].examples)  # every token packed once
    assert filled / (len(batches) * 2 * 2048) > 0.95


def test_downsample_to_limas_size_keeps_order():
    items = list(range(15011))
    kept = downsample(items, 1030, seed=0)
    assert len(kept) == len(set(kept)) == 1030 and kept == sorted(kept)
    assert kept == downsample(items, 1030, seed=0) != downsample(items, 1030, seed=1)
    with pytest.raises(ValueError):
        downsample(items[:10], 11, seed=0)


def test_a_source_cannot_keep_more_records_than_it_holds(shared_data):
    lima = f"{shared_data}/lima/lima.en.jsonl"
    assert len(load_mix([f"lima:{lima},n=1030"])[0]) == 1030
    with pytest.raises(InputError, match=f"^{lima}: n=1031, but it holds 1030 records$"):
        load_mix([f"lima:{lima},n=1031"])


def test_bad_settings_are_one_line_before_anything_is_read():
    check_settings("llama2", "weights", "drop", "en=1,fr=2")
    for args, message in [(("llama3", "none", "truncate", ""), "template='llama3' is not one of llama2, chat, alpaca"),
                          (("chat", "uniformly", "truncate", ""), "mixing='uniformly' is not one of none, uniform, "),
                          (("chat", "none", "cut", ""), "truncation='cut' is not one of truncate, drop"),
                          (("chat", "weights", "drop", "en:1"), "weights 'en:1': expected LANG=NUMBER items")]:
        with pytest.raises(InputError, match=f"^{message}"):
            check_settings(*args)


def test_small_helpers():
    assert parse_weights("en=1, fr=2.5") == {"en": 1.0, "fr": 2.5}
    with pytest.raises(ValueError):
        parse_weights("en:1")
    assert batch_size_for(4096, 2048) == 2
    with pytest.raises(ValueError):
        batch_size_for(1024, 2048)
