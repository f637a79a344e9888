"""The training loop end to end on the tiny preset: metrics, checkpoints, exports, load_for_inference,
resume (after a lost checkpoint, and after SIGKILL) giving the losses of an uninterrupted run, bitwise,
and two processes (jax.distributed on localhost) training like one."""

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import xlit_jax
from xlit_jax.errors import NonFiniteError, UserError, WeightsError
from xlit_jax.io import checkpoints as ckpt
from xlit_jax.io.checkpoints import load_for_inference, read_lora
from xlit_jax.loader import load_config
from xlit_jax.models.lora import LORA_TARGETS
from xlit_jax.train.loop import train
from xlit_jax.train.record import save_experiment

from support import COMPARED, OVERRIDES, finish, launch, tiny_config, train_in_two_processes, write_chats


def flags(data: Path, workdir: Path) -> list[str]:
    return ["--config=configs/experiments/tiny_ft.py", f"--workdir={workdir}",
            f"--config.data.sources=('chat:{data}',)", *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]


def rows(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: r[k] for k in COMPARED} for r in map(json.loads, lines)]


def steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.en.jsonl")


@pytest.fixture(scope="module")
def reference(chats, tmp_path_factory):
    """An uninterrupted full fine-tuning run, exporting merged HF weights at the end."""
    workdir = tmp_path_factory.mktemp("reference")
    last = train(tiny_config(chats, **{"train.export_hf": True}), str(workdir))
    return workdir, last


def test_run_logs_every_step_and_keeps_checkpoints_and_exports(reference):
    workdir, last = reference
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 9)) and logged[-1] == last
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "mfu", "target_tokens"} <= last.keys()
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert 0 < last["mfu"] < 1 and last["tokens_per_s"] > 0
    assert steps(workdir) == [2, 4, 6, 8]
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    config, params, tokenizer = load_for_inference(workdir)
    exported = xlit_jax.load(workdir / "export" / "hf")
    assert config == exported.config
    assert_same(params, exported.params)
    assert tokenizer is not None and tokenizer("a cat").input_ids == exported.tokenizer("a cat").input_ids
    assert xlit_jax.load(workdir).logits(np.array([[1, 2, 3]])).shape == (1, 3, config.vocab_size)
    # A checkpoint step's folder loads that step (docs/evaluation.md's --model=WORKDIR/checkpoints/STEP).
    at_4 = xlit_jax.load(workdir / "checkpoints" / "4")
    assert at_4.name == f"{workdir.name}-step4" == xlit_jax.loader.model_name(workdir / "checkpoints" / "4")
    assert_same(at_4.params, load_for_inference(workdir, 4)[1])


def test_resume_after_losing_the_last_checkpoint_repeats_the_same_losses(reference, chats, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    shutil.rmtree(workdir / "checkpoints" / "8")
    shutil.rmtree(workdir / "checkpoints" / "6")
    train(tiny_config(chats), str(workdir))
    assert rows(workdir) == rows(reference[0])


@pytest.mark.slow  # ~20-40 s: CI runs it (.ci/run), make test does not, to stay under 10 minutes
def test_sigkill_then_restart_logs_the_losses_of_an_uninterrupted_run(reference, chats, tmp_path):
    """Kill -9 a run (slowed to 0.5 s a step) once its step-4 checkpoint is on disk, restart it: the
    metrics equal the uninterrupted run's, bitwise."""
    workdir = tmp_path / "run"
    slowed = ("import sys, time; import xlit_jax.train.loop as loop; batch = loop.next_batch; "
              "loop.next_batch = lambda *a: (time.sleep(0.5), batch(*a))[1]; "
              "from launch.train import run; sys.argv[0] = 'xlit-train'; run()")
    process = launch(flags(chats, workdir), tmp_path / "cache", code=slowed)
    deadline = time.monotonic() + 240
    while not (workdir / "checkpoints" / "4").is_dir():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert steps(workdir)[-1] < 8
    finish(launch(flags(chats, workdir), tmp_path / "cache"))
    assert rows(workdir) == rows(reference[0])


@pytest.mark.slow  # ~20 s: CI runs it (.ci/run), make test does not, to stay under 10 minutes
def test_two_processes_train_like_one(reference, chats, tmp_path):
    """Two processes with one CPU device each (fsdp over both) log the single-device run's metrics."""
    train_in_two_processes(flags(chats, tmp_path / "run"), tmp_path / "cache")
    for ours, single in zip(rows(tmp_path / "run"), rows(reference[0]), strict=True):
        assert ours == pytest.approx(single, rel=1e-5)


@pytest.mark.slow  # ~40 s: CI runs it (.ci/run)
def test_two_processes_resume_past_a_shard_that_only_one_of_them_reads(reference, chats, tmp_path):
    """Each process restores only its own shards: when process 1's file of step 8 is truncated, both agree
    to set step 8 aside and resume from step 4 (step 6 removed), and log the single-device run's metrics."""
    workdir, cache = tmp_path / "run", tmp_path / "cache"
    train_in_two_processes(flags(chats, workdir), cache)
    params = workdir / "checkpoints" / "8" / "params"
    own = [p for p in params.rglob("d/*") if "process_1" in str(p.relative_to(params))]
    assert own, sorted(str(p.relative_to(params)) for p in params.rglob("*"))
    os.truncate(max(own, key=lambda p: p.stat().st_size), 100)
    shutil.rmtree(workdir / "checkpoints" / "6")
    err0, err1 = train_in_two_processes(flags(chats, workdir), cache)
    assert "checkpoint step 8 cannot be restored (unreadable on another process" in err0, err0[-3000:]
    assert f"checkpoint step 8 cannot be restored ({params.absolute()}" in err1, err1[-3000:]
    assert (workdir / "checkpoints" / "unreadable" / "8").is_dir() and steps(workdir) == [2, 4, 6, 8]
    for ours, single in zip(rows(workdir), rows(reference[0]), strict=True):
        assert ours == pytest.approx(single, rel=1e-5)


def lora_config(chats: Path, **changes):
    cfg = tiny_config(chats, **changes)
    cfg.lora.rank = 4
    return cfg


@pytest.fixture(scope="module")
def lora_reference(chats, tmp_path_factory):
    """An uninterrupted LoRA run, exporting merged HF weights and the PEFT adapters at the end."""
    workdir = tmp_path_factory.mktemp("lora")
    train(lora_config(chats, **{"train.export_hf": True, "train.export_peft": True}), str(workdir))
    return workdir


def test_lora_run_saves_the_base_once_and_loads_merged(lora_reference):
    workdir = lora_reference
    assert (workdir / "frozen").is_dir() and steps(workdir) == [2, 4, 6, 8]
    assert json.loads((workdir / "export" / "peft" / "adapter_config.json").read_text())["r"] == 4
    model = workdir / "model"
    assert json.loads((model / "lora.json").read_text()) == {"rank": 4, "alpha": 32.0, "dropout": 0.0,
                                                             "targets": list(LORA_TARGETS), "base_quantization": "none"}
    assert not {"lora_rank", "attention"} & json.loads((model / "llama_config.json").read_text()).keys()
    config, params, _ = load_for_inference(workdir)  # a plain model: the adapters merged
    exported = xlit_jax.load(workdir / "export" / "hf")
    assert config == exported.config
    assert_same(params, exported.params)
    first, _, _ = load_for_inference(workdir, step=2)
    assert first == config


# model/llama_config.json as xlit-train wrote it for lora_reference's run before the LoRA settings and the attention
# kernel left the LlamaConfig (commit 0645d4f): every field of the config of the day, and no model/lora.json
OLDER_LORA_RECORD = {
    "vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
    "num_kv_heads": 2, "head_dim": 16, "rope_theta": 10000.0, "rms_norm_eps": 1e-05, "tie_embeddings": False,
    "max_position_embeddings": 512, "bos_token_id": 1, "eos_token_ids": [2], "pad_token_id": 0, "dtype": "float32",
    "param_dtype": "float32", "remat": "dots", "attention": "auto", "splash_block": 512, "lora_rank": 4,
    "lora_alpha": 32.0, "lora_dropout": 0.0, "lora_targets": ["q", "k", "v", "o", "gate", "up", "down"]}


def test_a_lora_workdir_of_the_older_record_loads_and_resumes_as_it_did(lora_reference, chats, tmp_path):
    """A LoRA workdir written before the change (its checkpoints and LoRA base are as they still are; its model
    record is the older one): the same LoRA read back, the same logits, and a resumed run logs the same losses."""
    workdir = tmp_path / "older"
    shutil.copytree(lora_reference, workdir)
    (workdir / "model" / "lora.json").unlink()
    (workdir / "model" / "llama_config.json").write_text(json.dumps(OLDER_LORA_RECORD, indent=2))
    assert read_lora(workdir) == read_lora(lora_reference) and load_config(workdir) == load_config(lora_reference)
    ids = np.array([[1, 2, 3, 40, 50]])
    np.testing.assert_array_equal(xlit_jax.load(workdir).logits(ids), xlit_jax.load(lora_reference).logits(ids))
    shutil.rmtree(workdir / "checkpoints" / "8")
    shutil.rmtree(workdir / "checkpoints" / "6")  # so the resumed run trains steps 5 to 8 again
    train(lora_config(chats), str(workdir))
    assert rows(workdir) == rows(lora_reference)


def assert_same(params, other) -> None:
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, other)


def test_a_damaged_lora_base_is_named_when_loading_and_rebuilt_when_training_resumes(
        lora_reference, chats, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(lora_reference, workdir)
    frozen = workdir.absolute() / "frozen"
    _damage("overwrite", frozen)  # reads as valid arrays: the checksums catch it
    damage = re.escape(f"the LoRA base cannot be restored ({frozen}")
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(workdir))}: {damage}.*; xlit-train on this workdir "
                                           "sets a damaged checkpoint aside and rebuilds a damaged LoRA base$"):
        load_for_inference(workdir)
    with pytest.raises(UserError, match=rf"^{damage}.*cannot be rebuilt: the run started from .*'seed': 0.*"
                                        r"this config names .*'seed': 1\}$"):
        train(lora_config(chats, **{"model.seed": 1}), str(workdir))
    shutil.rmtree(workdir / "checkpoints" / "8")  # so the resumed run trains steps 7 and 8 on the rebuilt base
    saved = workdir / ckpt.MODEL_DIR / ckpt.CONFIG_FILE  # a run saved before EOS ids gained the template's turn end
    saved.write_text(json.dumps(json.loads(saved.read_text()) | {"eos_token_ids": [0]}))  # rebuilds all the same
    with caplog.at_level("WARNING"):
        train(lora_config(chats), str(workdir))
    assert rows(workdir) == rows(lora_reference)
    aside = workdir.absolute() / "checkpoints" / "unreadable" / "frozen"
    [line] = [r.getMessage() for r in caplog.records if "rebuilt it from" in r.getMessage()]
    assert line.startswith(f"the LoRA base cannot be restored ({frozen}") and line.endswith(f"copy is in {aside}")
    assert (aside / "_METADATA").is_file()
    assert_same(load_for_inference(workdir)[1], load_for_inference(lora_reference)[1])


def test_a_damaged_config_tokenizer_or_checkpoint_is_one_line_when_loading(reference, chats, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    tokenizer = workdir / "model" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text()[:1000])
    named = rf"^{re.escape(str(workdir / 'model'))}: the tokenizer cannot be read \(JSONDecodeError: .*\(preset:tiny\)"
    with pytest.raises(WeightsError, match=named):
        load_for_inference(workdir)
    with pytest.raises(WeightsError, match=named):  # resuming, before any state is built
        train(tiny_config(chats), str(workdir))
    shutil.copy(reference[0] / "model" / "tokenizer.json", tokenizer)
    _damage("truncate", workdir / "checkpoints" / "8" / "params")
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(workdir))}: checkpoint step 8 cannot be restored "
                                           rf"\({re.escape(str(workdir.absolute() / 'checkpoints' / '8'))}"):
        load_for_inference(workdir)
    config = workdir / "model" / "llama_config.json"
    config.write_text(config.read_text()[:40])
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(config))}:\d+: invalid JSON: .*training workdir\?"):
        xlit_jax.load(workdir)
    config.write_text('{"hidden_size": 64, "hiden_layers": 2}')
    with pytest.raises(WeightsError, match=r"not a LlamaConfig \(unknown: \['hiden_layers'\]\)"):
        load_config(workdir)
    config.unlink()
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(config))}: missing; is {re.escape(str(workdir))} a"):
        xlit_jax.load(workdir)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(chats, tmp_path):
    cfg = tiny_config(chats, **{"optim.lr": 1e30, "optim.min_lr": 1e30, "train.save_every": 1})
    with pytest.raises(NonFiniteError, match=r"step 2: .*last good checkpoint is step 1"):
        train(cfg, str(tmp_path / "nan"))
    assert steps(tmp_path / "nan") == [1]
    cfg = tiny_config(chats, **{"optim.lr": 1e30, "optim.min_lr": 1e30, "train.save_every": 100})
    with pytest.raises(NonFiniteError, match=r"stopped at step 2: non-finite loss .*; no checkpoint was saved yet"):
        train(cfg, str(tmp_path / "nan_early"))


def test_bad_data_is_refused_before_the_weights_load_and_writes_nothing(chats, tmp_path):
    """A 7B's weights take minutes to load: the settings are checked and the data files read first (a missing
    weights file is not reached)."""
    empty = tmp_path / "chats.en.jsonl"
    empty.write_text("")
    absent = {"model.source": str(tmp_path / "absent.gguf")}
    with pytest.raises(UserError, match=f"^{re.escape(str(empty))}: no records$"):
        train(tiny_config(empty, **absent), str(tmp_path / "run"))
    assert [p.name for p in (tmp_path / "run").rglob("*")] == ["checkpoints"]  # an empty folder: nothing saved
    for setting, message in [("data.mixing", "mixing='x' is not one of"), ("optim.schedule", "unknown schedule 'x'")]:
        with pytest.raises(UserError, match=f"^{message}"):
            train(tiny_config(chats, **absent, **{setting: "x"}), str(tmp_path / "run2"))
    assert not (tmp_path / "run2").exists()


def one_liners(err: str) -> list[str]:
    """The `xlit-train: ...` lines of stderr (tqdm's progress bar ends its lines in carriage returns)."""
    return [line for line in re.split(r"[\r\n]", err) if line.startswith("xlit-train: ")]


def _damage(how: str, item: Path) -> None:
    """Truncate, delete or overwrite bytes in the middle of the largest data file of a saved tree (a step's
    params/, frozen/), or overwrite bytes of its metadata."""
    data = max(item.rglob("d/*"), key=lambda p: p.stat().st_size)
    if how == "truncate":
        os.truncate(data, 100)
    elif how == "delete":
        data.unlink()
    elif how == "overwrite":  # the file still reads as valid arrays: only the checksums tell
        with open(data, "r+b") as f:
            f.seek(data.stat().st_size // 2)
            f.write(b"\x7f" * 16)
    else:
        with open(item / "_METADATA", "r+b") as f:
            f.seek(5)
            f.write(b"\x00garbage\x00" * 4)


@pytest.mark.parametrize("how", ["truncate", "delete", "corrupt", "overwrite"])
def test_an_unreadable_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(
        reference, chats, tmp_path, caplog, how):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    _damage(how, workdir / "checkpoints" / "8" / "params")
    shutil.rmtree(workdir / "checkpoints" / "6")  # so the resumed run computes steps 5 to 8 again
    with caplog.at_level("WARNING"):
        train(tiny_config(chats), str(workdir))
    assert rows(workdir) == rows(reference[0])
    aside = workdir / "checkpoints" / "unreadable" / "8"
    assert (aside / "params").is_dir() and steps(workdir) == [2, 4, 6, 8]
    [line] = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
    assert line.startswith(f"checkpoint step 8 cannot be restored ({workdir.absolute() / 'checkpoints' / '8'}")
    assert line.endswith(f"moved to {aside.absolute()}, resuming from step 4")


def test_no_readable_checkpoint_is_one_line_and_moves_nothing(reference, chats, tmp_path):
    """xlit-train on a workdir whose every checkpoint has every data file truncated: one line, exit 2,
    no Orbax or asyncio tracebacks, the checkpoints left where they were."""
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    for data in (workdir / "checkpoints").rglob("d/*"):
        os.truncate(data, 10)
    process = launch(flags(chats, workdir), tmp_path / "cache")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
    [last] = one_liners(err)
    assert last.startswith(f"xlit-train: no checkpoint in {workdir.absolute() / 'checkpoints'} can be restored "
                           "(steps 8, 6, 4, 2; step 8: "), last
    assert "to start over, move" in last
    assert steps(workdir) == [2, 4, 6, 8] and not (workdir / "checkpoints" / "unreadable").exists()


def test_a_lora_config_into_a_full_fine_tuning_workdir_is_one_line_and_rewrites_nothing(reference, chats, tmp_path):
    """The LoRA config on a finished full fine-tuning run: exit 2 before anything is loaded, one line naming the
    setting, every file as it was (it used to train full fine-tuning and record LoRA in experiment.json)."""
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    save_experiment(tiny_config(chats), workdir)  # as xlit-train records the reference run
    files = lambda: {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in workdir.rglob("*")}  # noqa: E731
    before, recorded = files(), (workdir / "experiment.json").read_bytes()
    process = launch(["--config=configs/experiments/tiny_lora.py", *flags(chats, workdir)[1:]], tmp_path / "cache")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err[-3000:]
    assert one_liners(err) == [f"xlit-train: {workdir}: was trained with other settings: lora.rank 0 -> 16; rerun "
                               f"with the recorded settings ({workdir / 'experiment.json'}) or use a new workdir"]
    assert files() == before and (workdir / "experiment.json").read_bytes() == recorded


FILE_LIMITED = """\
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
from xlit_jax.io import checkpoints
save = checkpoints.Checkpoints.save
def limited(self, step, *args):
    if step == 4:  # from here on, no file may grow past 1 MiB: a full disk for checkpoints, not for metrics
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    return save(self, step, *args)
checkpoints.Checkpoints.save = limited
from launch.train import run
sys.argv[0] = "xlit-train"
run()
"""


@pytest.mark.slow  # ~20 s: CI runs it (.ci/run), make test does not, to stay under 10 minutes
def test_a_save_that_fails_at_the_filesystem_stops_in_one_line_and_the_rerun_completes(reference, chats, tmp_path):
    """The step-4 save fails for real (RLIMIT_FSIZE: the kernel refuses the write, EFBIG): one line naming
    the step, the directory and the OS error, exit 2, step 2 intact; the same command then finishes with
    the uninterrupted run's losses."""
    workdir = tmp_path / "run"
    process = launch(flags(chats, workdir), tmp_path / "cache", code=FILE_LIMITED)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert one_liners(err) == [
        f"xlit-train: cannot save checkpoint step 4 in {workdir.absolute() / 'checkpoints'}: [Errno 27] File too "
        "large; step 2 and the checkpoints before it are intact: free space (or raise the quota) and rerun the "
        "same command to resume"]
    assert steps(workdir) == [2]
    finish(launch(flags(chats, workdir), tmp_path / "cache"))
    assert rows(workdir) == rows(reference[0])
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
