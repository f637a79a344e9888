"""Evaluation while training on the tiny preset: the held-out loss and the drift probes leave the training
losses bitwise unchanged, compile nothing after the first round, resume without a duplicated or missing
round, decode on 8 fsdp devices the tokens of one; the stop rule; bad settings fail before training."""

import json
import shutil
from pathlib import Path

import jax
import pytest
from jax._src import dispatch

from xlit_jax.data.confusion import Detector
from xlit_jax.data.langid import LanguageIdentifier
from xlit_jax.data.spelling import SpellChecker
from xlit_jax.errors import InputError
from xlit_jax.train import probes
from xlit_jax.train.loop import train

from support import COMPARED, run_with_devices, tiny_config, write_chats

EVAL = {"train.eval_every": 2, "train.eval_batches": 2}
ROUNDS = [0, 2, 4, 6, 8]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_rows(workdir: Path) -> list[dict]:
    return [{k: r[k] for k in COMPARED} for r in read(workdir / "metrics.jsonl") if r.get("kind") != "eval"]


def eval_rows(workdir: Path) -> list[dict]:
    return [r for r in read(workdir / "metrics.jsonl") if r.get("kind") == "eval"]


def probe_steps(workdir: Path) -> list[int]:
    return [r["step"] for r in read(workdir / probes.PROBES_FILE)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write_chats(folder / "chats.en.jsonl"), write_chats(folder / "held.en.jsonl", 12)


def eval_config(data, **changes):
    cfg = tiny_config(data[0], **{**EVAL, **changes})
    cfg.data.eval_sources = (f"chat:{data[1]}",)
    return cfg


# the tests of `runs` (two training runs, ~17 s): CI runs them; make test keeps the stop rule's and the settings'
SLOW_RUNS = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory, shared_data):
    """The same run without and with evaluation; the second counts backend compilations per round."""
    plain = tmp_path_factory.mktemp("plain")
    train(tiny_config(data[0]), str(plain))
    evaluated = tmp_path_factory.mktemp("evaluated")
    compiles, per_round = [], []

    def listener(event, *_, **__):
        if event == dispatch.BACKEND_COMPILE_EVENT:
            compiles.append(event)

    original = probes.Evaluator.round

    def counted(self, step, state):
        before = len(compiles)
        fell = original(self, step, state)
        per_round.append(len(compiles) - before)
        return fell

    jax.monitoring.register_event_duration_secs_listener(listener)
    probes.Evaluator.round = counted
    try:
        train(eval_config(data), str(evaluated))
    finally:
        probes.Evaluator.round = original
        jax.monitoring.unregister_event_duration_listener(listener)
    return plain, evaluated, per_round


@SLOW_RUNS
def test_training_losses_are_bitwise_the_same_with_evaluation(runs):
    plain, evaluated, _ = runs
    assert train_rows(evaluated) == train_rows(plain) and len(train_rows(plain)) == 8


@SLOW_RUNS
def test_rounds_log_loss_and_probes_and_compile_only_once(runs):
    _, evaluated, per_round = runs
    rows = eval_rows(evaluated)
    assert [r["step"] for r in rows] == ROUNDS
    assert rows[-1]["eval/loss"] < rows[0]["eval/loss"] and rows[0]["eval/target_tokens"] > 0
    for lang in ("en", "fr", "ru"):
        assert all(0 <= r[f"probe/{lang}/language_correct"] <= 1 and r[f"probe/{lang}/response_tokens"] > 0
                   for r in rows)
    answers = read(evaluated / probes.PROBES_FILE)
    assert probe_steps(evaluated) == [s for s in ROUNDS for _ in range(12)]  # 4 prompts x 3 languages
    first = [a for a in answers if a["step"] == 0]
    assert {a["language"] for a in first} == {"en", "fr", "ru"} and len({a["id"] for a in first}) == 4
    assert rows[0]["probe/fr/language_correct"] == sum(a["detected"] == "fr" for a in first
                                                       if a["language"] == "fr") / 4
    counted = [a["line_pass"] for a in first if a["language"] == "fr" and "line_pass" in a]
    assert rows[0].get("probe/fr/line_pass") == (sum(counted) / len(counted) if counted else None)
    assert list((evaluated / "tb").glob("events.out.tfevents.*"))
    assert len(per_round) == len(ROUNDS) and per_round[1:] == [0] * (len(ROUNDS) - 1), per_round


def test_line_level_pass_rate_of_probe_answers(shared_data):
    """LCB's line level beside the whole answer's language: a French answer with one English line is French
    as a whole but fails the line level; an answer without a line of 5 tokens is left out of it."""
    lid = LanguageIdentifier()
    tools = probes.Tools([], lid, SpellChecker(["fr"]), Detector(lid))
    batch = [probes.Probe("fr", str(i), "Décrivez Paris.") for i in range(3)]
    texts = ["Paris est la capitale de la France et une très grande ville.\n"
             "Elle est connue pour ses musées, ses monuments et sa cuisine raffinée.",
             "Paris est la capitale de la France et une très grande ville. Elle est connue pour ses musées, "
             "ses monuments, ses cafés et sa cuisine raffinée depuis des siècles.\n"
             "It is also one of the most visited cities in the whole world.",
             "Oui, Paris."]
    details = probes.score(batch, texts, tools)
    assert [d["language_correct"] for d in details[:2]] == [1.0, 1.0]
    assert [d.get("line_pass") for d in details] == [1.0, 0.0, None]


@SLOW_RUNS
def test_resume_mid_run_keeps_the_curves_whole(runs, data, tmp_path):
    """Resume from step 4 after losing checkpoints 6 and 8, and the metrics row of the round at 4 (killed
    between its answers and its row): every round once, with the values of the uninterrupted run."""
    _, evaluated, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(evaluated, workdir)
    for step in (6, 8):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    metrics = workdir / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in read(metrics)
                               if not (r.get("kind") == "eval" and r["step"] == 4)))
    train(eval_config(data), str(workdir))
    assert train_rows(workdir) == train_rows(evaluated)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "eval/seconds"} for r in rows]  # noqa: E731
    assert strip(eval_rows(workdir)) == strip(eval_rows(evaluated))
    assert probe_steps(workdir) == probe_steps(evaluated)
    assert [r["response"] for r in read(workdir / probes.PROBES_FILE)] == \
        [r["response"] for r in read(evaluated / probes.PROBES_FILE)]


def test_fall_finds_the_streak_and_the_round_before_it():
    rounds = [(0, {"en": 1.0, "fr": 0.75}), (5, {"en": 1.0, "fr": 0.25}), (10, {"en": 1.0, "fr": 0.75}),
              (15, {"en": 1.0, "fr": 0.25})]
    assert probes.fall(rounds, 0.5, 2) is None  # fr recovered at 10
    assert probes.fall(rounds + [(20, {"en": 1.0, "fr": 0.0})], 0.5, 2) == ("fr", 15, 10)
    assert probes.fall(rounds + [(20, {"en": 1.0, "fr": 0.0})], 0.0, 2) is None  # off
    assert probes.fall([(0, {"fr": 0.0}), (5, {"fr": 0.0})], 0.5, 2) == ("fr", 0, None)


def test_stop_rule_stops_on_a_scripted_sequence_and_names_the_checkpoint(data, tmp_path, shared_data,
                                                                         monkeypatch):
    """French correctness scripted as 1, 1, 1, 0, 0 at the rounds of steps 0-4 (the other languages' as 1):
    with 2 rounds below 0.5 the run stops at step 4 (saving nothing more), the fall was at step 3, the
    checkpoint before it is step 2."""
    script = iter([1.0, 1.0, 1.0, 0.0, 0.0])
    scored = probes.score

    def scripted(batch, texts, tools):
        value = next(script)
        return [{**d, "language_correct": value if p.language == "fr" else 1.0}
                for p, d in zip(batch, scored(batch, texts, tools))]

    monkeypatch.setattr(probes, "score", scripted)
    cfg = eval_config(data, **{"train.eval_every": 1, "train.stop_below": 0.5, "train.stop_rounds": 2})
    last = train(cfg, str(tmp_path / "run"))
    assert [r["step"] for r in eval_rows(tmp_path / "run")] == [0, 1, 2, 3, 4]
    assert last["stopped"].startswith("stopped at step 4: probe language correctness in fr below "
                                      "train.stop_below=0.5 for 2 rounds since step 3")
    assert "the checkpoint before the fall is step 2 in" in last["stopped"]
    assert max(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()) == 2


@pytest.mark.parametrize("changes, message", [
    ({"train.eval_every": 9}, "train.eval_every=9 must be between 1 and the run's train.max_steps=8"),
    ({"train.probe_languages": "en,xx"}, "train.probe_languages=en,xx: .* does not know xx"),
    ({"train.probe_languages": "en,it"}, "train.probe_languages=en,it: no Hunspell dictionary .* 'it'"),
    ({"train.stop_below": 0.5, "train.keep": 2}, "train.keep=2 is too few for the stop rule"),
])
def test_bad_settings_fail_before_training(data, tmp_path, shared_data, changes, message):
    with pytest.raises(InputError, match=message):
        train(eval_config(data, **changes), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_empty_probe_file_and_trained_held_out_data_fail(data, tmp_path, shared_data):
    (tmp_path / "p.en.jsonl").write_text("")
    with pytest.raises(InputError, match=r"train.probe_prompts: .*p.en.jsonl has no prompts"):
        train(eval_config(data, **{"train.probe_prompts": str(tmp_path / "p.{lang}.jsonl"),
                                   "train.probe_languages": "en"}), str(tmp_path / "run"))
    cfg = eval_config(data)
    cfg.data.eval_sources = cfg.data.sources
    with pytest.raises(InputError, match="data.eval_sources: .* is also in data.sources"):
        train(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


PROBE_ON_DEVICES = """
import json, jax, numpy as np
import xlit_jax
from xlit_jax import sharding
from xlit_jax.io.tokenizer import load_tokenizer
from xlit_jax.models.lora import LoraConfig, init_adapters, merge_params
from xlit_jax.resources import shared_data
from xlit_jax.train import optim, probes, step as step_lib

tokenizer = load_tokenizer("smollm2-135m")
found = probes.read_probes(shared_data("hplt_oasst_test/test_{lang}.jsonl"), ["en", "fr", "ru"])
_, ids = probes.encode_probes(found, "llama2", tokenizer, 4, 128)
out = {}
for rank in (0, 4):
    model = xlit_jax.load("preset:tiny", vocab_size=49152, seed=1)
    config, params, lora = model.config, model.params, LoraConfig(rank=rank) if rank else None
    if lora:  # adapters that change the answers: B is zero at init
        adapters = jax.tree_util.tree_map(lambda x: x + 0.05, init_adapters(config, lora, 0))
        params = merge_params(params, adapters)
    for n in (1, 8):
        mesh = sharding.make_mesh(1, -1, 1, devices=jax.devices()[:n])
        state = step_lib.build(config, optim.OptimSettings(max_steps=10), mesh, lora=lora).init(params)
        out[f"{rank}/{n}"] = probes.respond(state.full_params(), config, mesh, ids, 24, 1.1, lora)
print(json.dumps(out))
"""


@pytest.mark.slow  # ~20-40 s: CI runs it (.ci/run), make test does not, to stay under 10 minutes
def test_probe_round_on_8_fsdp_devices_gives_the_tokens_of_one(shared_data):
    out = run_with_devices(PROBE_ON_DEVICES, devices=8)
    assert out["0/8"] == out["0/1"] and out["4/8"] == out["4/1"]
    assert out["4/1"] != out["0/1"] and len(out["0/1"]) == 12


def test_report_draws_the_probe_curves_of_every_cell(tmp_path):
    from xlit_jax.study import grid, report

    cells = [grid.Cell("m", "lima-en", "ft", lr, "x.py", "", ()) for lr in ("1e-5", "1e-3")]
    assert not report.plot_probe_curves(cells, tmp_path, tmp_path / "none.png")
    for cell, fr in zip(cells, ([1.0, 1.0, 0.75], [1.0, 0.25, 0.0])):
        train_dir = grid.cell_paths(tmp_path, cell).train
        train_dir.mkdir(parents=True)
        rows = [{"step": 1, "loss": 2.0}] + [{"step": 5 * i, "kind": "eval", "probe/en/language_correct": 1.0,
                                              "probe/fr/language_correct": v, "probe/fr/line_pass": v / 2}
                                             for i, v in enumerate(fr)]
        (train_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["step"] for r in probes.read_rounds(grid.cell_paths(tmp_path, cells[1]).train)] == [0, 5, 10]
    assert report.plot_probe_curves(cells, tmp_path, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
