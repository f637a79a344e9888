"""Weights I/O and the CLIs on bad input: clear errors naming the file (and line), nothing half-written."""

import errno
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import xlit_jax
from xlit_jax.data.records import _json_array_rows
from xlit_jax.errors import InputError, UserError, WeightsError
from xlit_jax.io.files import (
    atomic_directory,
    atomic_write_text,
    output_lock,
    read_json,
    read_jsonl,
    read_output_jsonl,
    reported_write,
    resume_jsonl,
    umask,
)
from xlit_jax.io.gguf import GGUFFile, smollm2_gguf_path
from xlit_jax.io.hf import config_from_hf, save_hf_dir
from xlit_jax.models.presets import get_preset


def test_missing_and_truncated_gguf_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        xlit_jax.load(tmp_path / "absent.gguf")
    truncated = tmp_path / "cut.gguf"
    with open(smollm2_gguf_path(), "rb") as f:
        truncated.write_bytes(f.read(50_000_000))
    with pytest.raises(WeightsError, match=r"cut\.gguf.*(truncated|past the end)"):
        xlit_jax.load(truncated)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all")
    with pytest.raises(WeightsError, match="garbage.gguf: not a GGUF file"):
        GGUFFile(garbage)


def test_unsupported_config_is_refused_by_name(tmp_path):
    hf = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
          "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    with pytest.raises(WeightsError, match="config.json: rope scaling type 'yarn' is not implemented"):
        config_from_hf(hf)
    with pytest.raises(WeightsError, match="not a LLaMA model"):
        config_from_hf({**hf, "model_type": "gpt2", "rope_scaling": None})


def test_corrupt_or_missing_safetensors(tmp_path):
    model = xlit_jax.load("preset:tiny")
    save_hf_dir(model.config, model.params, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="model.safetensors"):
        xlit_jax.load(tmp_path / "hf")
    weights.unlink()
    with pytest.raises(WeightsError, match="no \\*.safetensors files"):
        xlit_jax.load(tmp_path / "hf")


def test_sharded_export_round_trips(tmp_path, monkeypatch):
    import numpy as np

    from xlit_jax.io import hf

    monkeypatch.setattr(hf, "SHARD_BYTES", 60_000)
    model = xlit_jax.load("preset:tiny", seed=2)
    save_hf_dir(model.config, model.params, tmp_path / "hf")
    assert (tmp_path / "hf" / hf.WEIGHTS_INDEX).exists()
    assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1
    again = xlit_jax.load(tmp_path / "hf")
    np.testing.assert_array_equal(again.params["layers"]["mlp"]["up"]["kernel"],
                                  model.params["layers"]["mlp"]["up"]["kernel"])


def test_export_replaces_a_directory_atomically_only_when_asked(tmp_path):
    model = xlit_jax.load("preset:tiny")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "stale.txt").write_text("old")
    with pytest.raises(UserError, match="exists and is not empty; pass --overwrite"):
        save_hf_dir(model.config, model.params, tmp_path / "hf")
    assert (tmp_path / "hf" / "stale.txt").exists()
    save_hf_dir(model.config, model.params, tmp_path / "hf", overwrite=True)
    assert not (tmp_path / "hf" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temp dirs left behind


def test_resume_cuts_a_half_written_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1, "output": "a"}\n{"id": 2, "outp')
    assert resume_jsonl(out) == [{"id": 1, "output": "a"}]
    assert out.read_text() == '{"id": 1, "output": "a"}\n'


def test_resume_sets_a_damaged_middle_line_aside_and_names_it(tmp_path, caplog):
    """A line damaged in the middle of a keyed output (a failing disk, an edit) is named by file and line,
    moved to FILE.damaged and dropped, so its item is redone; reports leave it out with the same warning."""
    out = tmp_path / "item_scores.jsonl"
    out.write_bytes(b'{"id": 1}\n{"id": 2, "sco\x00\x00\n[3]\n{"id": 4}\n{"id": 5')
    assert [r["id"] for r in read_output_jsonl(out)] == [1, 4]
    assert f"{out}:2: malformed JSON" in caplog.text and f"{out}:3: not a JSON object" in caplog.text
    caplog.clear()
    assert resume_jsonl(out) == [{"id": 1}, {"id": 4}]
    assert out.read_text() == '{"id": 1}\n{"id": 4}\n'
    assert (tmp_path / "item_scores.jsonl.damaged").read_bytes() == b'{"id": 2, "sco\x00\x00\n[3]\n'
    assert f"{out}:2: malformed JSON" in caplog.text and "its work is redone" in caplog.text
    with pytest.raises(InputError, match=r"damaged:1: malformed JSON"):  # an input file's bad line stays an error
        list(read_jsonl(tmp_path / "item_scores.jsonl.damaged"))


FULL_DISK = """\
import resource, signal, sys
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
import xlit_jax
from xlit_jax.errors import UserError
from xlit_jax.io.files import append_jsonl
from xlit_jax.io.hf import save_hf_dir
model = xlit_jax.load("preset:tiny")
out, hf = sys.argv[1:]
save_hf_dir(model.config, model.params, hf)
append_jsonl(out, [{"id": 1}])
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.RLIM_INFINITY))
for attempt in (lambda: append_jsonl(out, [{"id": 2, "text": "x" * 100000}]),
                lambda: save_hf_dir(model.config.replace(num_layers=1), model.params, hf, overwrite=True)):
    try:
        attempt()
    except UserError as e:
        print(e)
"""


def test_a_full_disk_leaves_outputs_whole_and_says_so_in_one_line(tmp_path):
    """Writes refused by the kernel (RLIMIT_FSIZE, EFBIG): the JSONL keeps its complete rows only, the old
    HF export stays as it was with no temp directory beside it, and each failure is one UserError line."""
    out, hf = tmp_path / "out.jsonl", tmp_path / "hf"
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(out), str(hf)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        f"cannot write {out}: [Errno 27] File too large; free space (or raise the quota) and rerun the same "
        "command: finished work is kept",
        f"cannot write {hf}: [Errno 27] File too large; free space (or raise the quota) and rerun the same "
        "command: finished work is kept"]
    assert out.read_text() == '{"id": 1}\n'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert xlit_jax.load(hf).config.num_layers == xlit_jax.load("preset:tiny").config.num_layers


def run_generate(*args):
    return subprocess.run([sys.executable, "-m", "launch.generate", *args], capture_output=True, text=True,
                          timeout=600)


def test_generate_cli_rejects_malformed_line_before_any_work(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "hi"}\n{"id": 2, "prompt": 5}\n')
    result = run_generate("--model=preset:tiny", f"--prompts={prompts}", f"--out={tmp_path / 'o.jsonl'}")
    assert result.returncode != 0
    assert f"{prompts}:2: field 'prompt'" in result.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow  # ~20 s (two binaries, a model load each): CI runs it; eval's second-writer test is in make test
def test_generate_refuses_a_second_writer_and_goes_on_after_ctrl_c_with_every_id_once(tmp_path, smollm2):
    """Two xlit-generate runs on one --out: the second is refused in one line before its model loads. Ctrl-C
    stops the first in one line (exit 130); the rerun finishes with each id written exactly once."""
    model_dir = tmp_path / "model"
    save_hf_dir(get_preset("tiny-tied").replace(vocab_size=smollm2.config.vocab_size),
                xlit_jax.load("preset:tiny-tied", vocab_size=smollm2.config.vocab_size).params, model_dir,
                tokenizer=smollm2.tokenizer)
    prompts, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"Count to {i}"}) + "\n" for i in range(48)))
    args = [f"--model={model_dir}", f"--prompts={prompts}", f"--out={out}", "--max_new_tokens=64", "--batch_size=1",
            "--repetition_penalty=1.0"]
    # SIGINT as a terminal delivers it, even where this test runs in the background (an asynchronous command of a
    # non-interactive shell starts with SIGINT ignored, and Python then keeps ignoring it)
    first = subprocess.Popen([sys.executable, "-m", "launch.generate", *args], stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (out.is_file() and out.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGSTOP)  # paused mid-run, holding --out, so the second run meets it at any speed
    second = run_generate(*args)
    assert second.returncode == 2 and second.stderr.strip().splitlines()[-1] == (
        f"xlit-generate: {out}: another run is writing it now; wait for it to end or choose another output")
    first.send_signal(signal.SIGINT)  # Ctrl-C, taken as soon as it goes on
    first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("xlit-generate: interrupted")
    kept = out.read_text().splitlines()
    assert 2 <= len(kept) < 48  # it stopped part way
    with open(out, "a") as f:  # and half a row, as a killed writer leaves it
        f.write('{"id": 47, "out')
    result = run_generate(*args)
    assert result.returncode == 0 and f"{48 - len(kept)} to generate" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(48)) and rows[:len(kept)] == list(map(json.loads, kept))
    assert all(r["model"] == "model" and 1 <= r["new_tokens"] <= 64 for r in rows)


def test_missing_prompts_file_is_an_input_error(tmp_path):
    from launch.generate import read_prompts

    with pytest.raises(InputError, match="absent.jsonl: no such file"):
        read_prompts(tmp_path / "absent.jsonl", 512)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "prompt": "x"}\n{"id": 1, "prompt": "y"}\n')
    with pytest.raises(InputError, match="bad.jsonl:2: field 'id': duplicate"):
        read_prompts(bad, 512)


def test_a_huge_or_deeply_nested_prompt_line_is_one_line_before_the_model_loads(tmp_path):
    """A prompt longer than positions x 256 characters (more than any of our tokenizers' tokens hold) is refused
    without tokenizing it; a line nested a million brackets deep is an error naming it, not a RecursionError."""
    from launch.generate import read_prompts

    huge = tmp_path / "huge.jsonl"
    chat = [{"role": "user", "content": "x" * 70_000}] * 2
    huge.write_text(json.dumps({"id": 1, "prompt": "ok"}) + "\n" + json.dumps({"id": 2, "prompt": chat}) + "\n")
    with pytest.raises(InputError, match=r"huge.jsonl:2: field 'prompt': the prompt has 140000 characters: more "
                                         r"than the model's 512 positions can hold at 256 characters per token"):
        read_prompts(huge, 512)
    assert len(read_prompts(huge, 1024)) == 2
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"id": 1, "prompt": "ok"}\n{"id": 2, "prompt": ' + "[" * 1_000_000 + "]" * 1_000_000 + "}\n")
    with pytest.raises(InputError, match=r"deep.jsonl:2: nested too deeply \(JSON deeper than about"):
        read_prompts(deep, 512)
    config = tmp_path / "config.json"
    config.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(WeightsError, match="config.json: nested too deeply"):
        read_json(config)
    array = tmp_path / "data.json"  # the data loaders' JSON-array files
    array.write_text("[\n" + "[" * 100_000 + "]" * 100_000 + "\n]")
    with pytest.raises(InputError, match="data.json:2: nested too deeply"):
        list(_json_array_rows(array))


def test_an_output_that_cannot_be_written_is_found_before_any_work_with_the_right_advice(tmp_path):
    """A symlink loop, a folder where the output file should be, a file where a folder should be: one line
    naming the path when the output lock is taken (before a model loads). A denied write says so; only a
    full disk or quota advises freeing space."""
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    (tmp_path / "a_file").write_text("x")
    cases = [(loop / "out.jsonl", False, "[Errno 40] Too many levels of symbolic links; fix the path"),
             (loop, True, "[Errno 40] Too many levels of symbolic links"),
             (tmp_path, False, "[Errno 21] Is a directory"),
             (tmp_path / "a_file" / "out", True, "[Errno 20] Not a directory")]
    for path, folder, message in cases:
        with pytest.raises(UserError, match=re.escape(f"cannot write {path}: {message}")):
            with output_lock(path, folder):
                pass
    for error, advice in ((PermissionError(errno.EACCES, "Permission denied"), "permission denied: make it writable"),
                          (OSError(errno.EROFS, "Read-only file system"), "permission denied"),
                          (OSError(errno.EDQUOT, "Disk quota exceeded"), "free space (or raise the quota)")):
        with pytest.raises(UserError, match=re.escape(advice)) as raised:
            with reported_write(tmp_path / "out.jsonl"):
                raise error
        assert ("free space" in str(raised.value)) == (error.errno == errno.EDQUOT)
    with output_lock(tmp_path / "new" / "out.jsonl"):  # a writable output: its folder made, no file left behind
        assert [p.name for p in (tmp_path / "new").iterdir()] == [".out.jsonl.lock"]


def test_atomic_outputs_honour_the_umask(tmp_path):
    """Files and folders renamed into place get the mode a plain open() or mkdir() would (mkstemp: 0600)."""
    atomic_write_text(tmp_path / "scores.md", "x")
    with atomic_directory(tmp_path / "export") as tmp:
        (tmp / "a").write_text("y")
    (tmp_path / "plain").write_text("z")
    (tmp_path / "plain_dir").mkdir()
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("scores.md") == mode("plain") == 0o666 & ~umask()
    assert mode("export") == mode("plain_dir") == 0o777 & ~umask()
    assert umask() == int(Path("/proc/self/status").read_text().split("Umask:")[1].split()[0], 8)


def test_the_current_folder_its_parents_home_and_root_are_never_replaced(tmp_path, monkeypatch):
    """An empty or mistyped output path ("", ".", "..") resolves to a folder the user stands in: replacing it
    emptied that folder before the rename failed. Now refused, --overwrite or not; a sibling is still replaced."""
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    for path, what in [("", "the current folder or one above it"), (".", "the current folder or one above it"),
                       ("..", "the current folder or one above it"), ("/", "the filesystem's root"),
                       (str(Path.home()), "the home folder")]:
        with pytest.raises(UserError, match=f"is {what}; it is never replaced"):
            with atomic_directory(path, overwrite=True) as tmp:
                (tmp / "config.json").write_text("{}")
    assert [p.name for p in here.iterdir()] == ["notes.txt"]
    (tmp_path / "sibling").mkdir()
    (tmp_path / "sibling" / "old").write_text("x")
    with atomic_directory("../sibling", overwrite=True) as tmp:
        (tmp / "new").write_text("y")
    assert [p.name for p in (tmp_path / "sibling").iterdir()] == ["new"]


def test_damaged_weights_as_downloaded_are_one_line_naming_file_and_tensor(tmp_path, monkeypatch):
    """Every tensor's shape is checked against the config before any is read; a config that makes no model,
    one without vocab_size, a damaged tokenizer.json and a tokenizer larger than the embedding are refused by
    name too."""
    from xlit_jax.loader import _check_vocabulary

    model = xlit_jax.load("preset:tiny")
    tiny_hf = save_hf_dir(model.config, model.params, tmp_path / "hf")
    config = tiny_hf / "config.json"
    original = json.loads(config.read_text())
    weights = (f"{tiny_hf / 'model.safetensors'}: tensor 'model.embed_tokens.weight' has shape [256, 64], but {config} "
               "makes it")
    cases = [({"vocab_size": 300}, f"{weights} [300, 64] (vocab_size=300"),
             ({"hidden_size": 128, "head_dim": None}, f"{weights} [256, 128]"),
             ({"num_attention_heads": 3, "head_dim": None}, f"{config}: invalid LlamaConfig: hidden_size=64 is not a "
                                                            "multiple of num_heads=3"),
             ({"num_key_value_heads": 3}, f"{config}: invalid LlamaConfig: num_heads=4 is not a multiple of "
                                          "num_kv_heads=3"),
             ({"intermediate_size": 0}, f"{config}: invalid LlamaConfig: intermediate_size=0: sizes are positive"),
             ({"vocab_size": None}, f"{config}: no field 'vocab_size'")]
    for change, message in cases:
        config.write_text(json.dumps({k: v for k, v in {**original, **change}.items() if k != "vocab_size" or v}))
        with pytest.raises(WeightsError, match=re.escape(message)):
            xlit_jax.load(tiny_hf)
    config.write_text(json.dumps(original))
    tokenizer = tiny_hf / "tokenizer.json"
    tokenizer.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merg')  # cut short
    with pytest.raises(WeightsError, match=re.escape(f"{tokenizer}: cannot read the tokenizer (")):
        xlit_jax.load(tiny_hf)
    with pytest.raises(WeightsError, match="the tokenizer has 257 tokens but the model's embedding only 256 rows"):
        _check_vocabulary(range(257), model.config, "tiny")
    # GGUF: the same check, naming the GGUF's tensor (metadata edited here as a damaged download would have it)
    gguf_config = GGUFFile.config
    monkeypatch.setattr(GGUFFile, "config", lambda self: gguf_config(self).replace(vocab_size=1000))
    with pytest.raises(WeightsError, match=r"\.gguf: tensor 'token_embd.weight' has shape \[49152, 576\], but .*"
                                           r"\.gguf \(metadata\) makes it \[1000, 576\]"):
        xlit_jax.load("smollm2-135m")


def test_jsonl_accepts_a_bom_and_names_invalid_utf8_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": 1}\n{"id": "caf\xe9"}\n{"id": 3}\n')
    with pytest.raises(InputError, match=r"rows.jsonl:2: not UTF-8 text \(invalid continuation byte"):
        list(read_jsonl(path))
    skipped = []
    assert list(read_jsonl(path, skipped=skipped)) == [(1, {"id": 1}), (3, {"id": 3})]
    assert len(skipped) == 1 and skipped[0].startswith(f"{path}:2: not UTF-8")


def test_data_loaders_skip_invalid_utf8_rows_and_accept_a_bom(tmp_path):
    from xlit_jax.data.records import load_source

    path = tmp_path / "lima.en.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"conversations": ["Hi", "Hello"]}\n{"conversations": ["\xff", "x"]}\n')
    with pytest.raises(InputError, match=r"lima.en.jsonl:2: not UTF-8"):
        load_source(f"lima:{path}")
    loaded = load_source(f"lima:{path}", skip_invalid=True)
    assert len(loaded.records) == 1 and len(loaded.skipped) == 1
    array = tmp_path / "set.en.json"
    array.write_bytes(b'\xef\xbb\xbf[{"conversations": ["Hi", "Hello"]}]')
    assert len(load_source(f"lima:{array}").records) == 1
