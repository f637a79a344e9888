"""Every binary reports a user's input error as one line `xlit-NAME: message`, exit status 2, no traceback."""

import ast
import json
import logging
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from absl import logging as absl_logging

from xlit_jax.cli import quiet_orbax

from support import REPO

# launch module -> binary name, as pyproject.toml installs them
BINARIES = {target.split(":")[0].removeprefix("launch."): name for name, target in
            tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"].items()}


@pytest.mark.slow  # ~15 s (ten binaries): CI runs it; make test keeps the newcomer's refusals below
def test_every_binary_reports_bad_input_in_one_line(tmp_path, shared_data):
    bad_utf8 = tmp_path / "prompts.jsonl"
    bad_utf8.write_bytes(b'{"id": 1, "prompt": "ok"}\n{"id": 2, "prompt": "caf\xe9"}\n')
    malformed = tmp_path / "chats.en.jsonl"
    malformed.write_text('{"conversations": ["Hi", "Hello"]}\n{"conversations": [\n')
    (tmp_path / "src.txt").write_text("a\nb\n")
    (tmp_path / "tgt.txt").write_text("a\n")
    missing = tmp_path / "absent"
    cases = {
        "generate": ([f"--prompts={bad_utf8}", f"--out={tmp_path / 'o.jsonl'}", "--model=preset:tiny"],
                     f"{bad_utf8}:2: not UTF-8 text"),
        "data_stats": ([f"--data=lima:{malformed}", f"--output_dir={tmp_path / 'stats'}", "--nolangid"],
                       f"{malformed}:2: malformed JSON"),
        "convert": ([f"--src={missing}", f"--dst={tmp_path / 'hf'}"], f"{missing}: not a .gguf file"),
        "translate": ([f"--input=lima:{malformed}", f"--output_dir={tmp_path / 't'}"],
                      f"{malformed}:2: malformed JSON"),
        "translation_demos": ([f"--src_file={tmp_path / 'src.txt'}", f"--tgt_file={tmp_path / 'tgt.txt'}",
                               "--src_lang=en",
                   "--tgt_lang=fr", f"--output={tmp_path / 'demos.jsonl'}"], "has 2 lines but"),
        "train": (["--config=configs/experiments/tiny_lora.py", f"--workdir={tmp_path / 'run'}",
                   f"--config.data.sources=('lima:{malformed}',)"], f"{malformed}:2: malformed JSON"),
        "evaluate": (["--model=preset:tiny", "--languages=xx", f"--data_dir={shared_data}",
                      f"--out_dir={tmp_path / 'eval'}"], "eval set 'chirkova' has no language 'xx'"),
        "serve": ([f"--model={missing}"], f"{missing}: not a .gguf file"),
        "study": (["--config=configs/studies/smollm2_mini.py", f"--workdir={tmp_path / 'study'}", "--only=nothing*"],
                  "--only=nothing* matches no cell"),
        "human_eval": (["import", f"--sheets={bad_utf8}", f"--key={missing}", f"--out_dir={tmp_path / 'h'}"],
                       f"{missing}: no such file"),
    }
    running = {module: subprocess.Popen([sys.executable, "-m", f"launch.{module}", *args], cwd=REPO, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for module, (args, _) in cases.items()}
    for module, process in running.items():
        _, err = process.communicate(timeout=300)
        name = BINARIES[module]
        lines = [line for line in err.splitlines() if line.startswith(f"{name}: ")]
        assert process.returncode == 2 and "Traceback" not in err, (module, err[-2000:])
        assert len(lines) == 1 and cases[module][1] in lines[0], (module, err[-2000:])


def test_a_mistyped_override_names_the_field_its_section_and_the_closest_match(tmp_path):
    """xlit-train and xlit-study: one line, exit 2, before anything is loaded or written."""
    from configs.experiments import tiny_ft

    train_fields = ", ".join(sorted(tiny_ft.get_config().train.keys()))
    cases = [("train", ["--config=configs/experiments/tiny_ft.py", f"--workdir={tmp_path / 'run'}",
                        "--config.train.eval_evry=5"],
              "xlit-train: --config.train.eval_evry: no field 'eval_evry' in section train (did you mean "
              f"'eval_every'? its fields: {train_fields})"),
             ("train", ["--config=configs/experiments/tiny_ft.py", "--config.trian.max_steps=5"],
              "xlit-train: --config.trian.max_steps: no field 'trian' in the config (did you mean 'train'? its "
              "fields: data, distributed, lora, mesh, model, optim, train)"),
             ("study", ["--config=configs/studies/smollm2_mini.py", f"--workdir={tmp_path / 'study'}",
                        "--config.eval.limt=3"],
              "xlit-study: --config.eval.limt: no field 'limt' in section eval (did you mean 'limit'? its fields: "
              "batch_size, eval_set, languages, limit, max_new_tokens, metrics, seed)")]
    for module, args, line in cases:
        result = subprocess.run([sys.executable, "-m", f"launch.{module}", *args], cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        assert (result.returncode, result.stderr.strip()) == (2, line)
    assert not list(tmp_path.iterdir())


def run_binary(module: str, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"launch.{module}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow  # ~11 s: CI runs it; make test keeps each binary's own output-folder tests
def test_no_binary_replaces_a_folder_it_was_not_asked_to(tmp_path):
    """xlit-convert and xlit-data-stats refuse, before any work, a non-empty output folder without --overwrite,
    and a training run, an evaluation, a study or the source itself even with it; xlit-demos a non-empty output
    file without --overwrite; nothing is touched."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    run = tmp_path / "run"
    (run / "checkpoints" / "2").mkdir(parents=True)
    (run / "experiment.json").write_text("{}")
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{}")
    hf = tmp_path / "hf"
    cases = [
        ("convert", ["--src=preset:tiny", f"--dst={notes}"], f"{notes}: exists and is not empty; pass --overwrite"),
        ("convert", [f"--src={run}", f"--dst={run}", "--overwrite"], f"--dst={run}: holds the source"),
        ("convert", [f"--src={run}/checkpoints/2", f"--dst={run}"], f"--dst={run}: holds the source"),
        ("convert", ["--src=preset:tiny", f"--dst={study}", "--overwrite"], f"{study}: holds a study (study.json)"),
        ("convert", ["--src=preset:tiny", f"--dst={notes / 'notes.txt'}"],
         f"{notes / 'notes.txt'}: exists and is not a folder"),
        ("data_stats", ["--data=lima:absent.jsonl", f"--output_dir={run}", "--overwrite"],
         f"{run}: holds a training run (experiment.json)"),
        ("translation_demos", [f"--src_file={notes / 'notes.txt'}", f"--tgt_file={notes / 'notes.txt'}",
                               "--src_lang=en", "--tgt_lang=fr", f"--output={notes / 'notes.txt'}"],
         f"--output={notes / 'notes.txt'}: exists and is not empty; pass --overwrite"),
    ]
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    running = [(module, args, message, subprocess.Popen([sys.executable, "-m", f"launch.{module}", *args], cwd=REPO,
                                                        text=True, stderr=subprocess.PIPE))
               for module, args, message in cases]
    for module, args, message, process in running:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 2 and "Traceback" not in err, (module, args, err[-2000:])
        assert err.strip().splitlines()[-1].startswith(f"{BINARIES[module]}: {message}"), (module, args, err)
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    # Asked to, it replaces a folder of other files, and writes into an empty one.
    hf.mkdir()
    for args in ([f"--dst={hf}"], [f"--dst={notes}", "--overwrite"]):
        assert run_binary("convert", "--src=preset:tiny", *args).returncode == 0
        assert (Path(args[0].split("=", 1)[1]) / "config.json").is_file()
    assert not (notes / "notes.txt").exists()


def test_help_version_and_refusals_a_newcomer_meets_are_one_line_before_any_load(tmp_path, shared_data):
    """--help prints the binary's docstring and its own flags, --version the version (exit 0); a missing
    config file, an unknown preset, flag or eval set, a busy port, an empty prompts file, an out_dir of
    another model's results, an eval prompt too long for the model by its length alone, and a server key on the
    command line (or an empty key file) are one line, exit 2, before any weights load."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "generations.jsonl").write_text(json.dumps({
        "model": "someone_else", "set": "chirkova", "language": "en", "id": "1", "messages": [], "response": "x",
        "decoding": {}}) + "\n")
    huge = tmp_path / "huge.jsonl"  # more than 512 positions x 256 characters (io/tokenizer.py's bound)
    huge.write_text(json.dumps({"id": "big", "prompt": "word " * 30_000}) + "\n")
    empty_key = tmp_path / "key"
    empty_key.write_text("\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    refusals = {
        ("train", "--config=configs/experiments/nope.py", f"--workdir={tmp_path / 'run'}"):
            "xlit-train: --config=configs/experiments/nope.py: no such file",
        ("generate", "--model=preset:tiny", f"--prompts={empty}", f"--out={tmp_path / 'o.jsonl'}"):
            f"xlit-generate: {empty}: no prompts",
        ("convert", "--src=preset:llama9", f"--dst={tmp_path / 'hf'}"):
            "xlit-convert: unknown model preset 'llama9' (did you mean 'llama-1b'? known: llama-1b, llama2-13b, "
            "llama2-7b, llama3.1-8b, llama3.2-1b, llama3.2-3b, mistral-7b, qwen2.5-0.5b, qwen2.5-7b, smollm2-135m, "
            "tiny, tiny-tied, tower-7b)",
        ("convert", "--src=preset:tiny", "--dts=x"):
            "xlit-convert: Unknown command line flag 'dts'. Did you mean: dst, dtype ?",
        ("serve", "--model=preset:tiny", f"--port={port}"):
            f"xlit-serve: --host=127.0.0.1 --port={port}: cannot listen there: Address already in use",
        ("evaluate", "--model=preset:tiny", "--eval_set=chirkov", f"--out_dir={tmp_path / 'e'}"):
            "xlit-eval: --eval_set: unknown set 'chirkov' (did you mean 'chirkova'? known: chirkova, "
            "chirkova_modifiers, alpaca_farm, lcb, lcb_monolingual, lcb_crosslingual, xquad, mlqa, mmlu, bbh, "
            "jsonl:PATH, lm_eval:TASK)",
        ("evaluate", "--model=preset:tiny", "--languages=en", "--limit=1", f"--data_dir={shared_data}",
         f"--out_dir={other}"):
            f"xlit-eval: {other / 'generations.jsonl'}:1: holds results of model 'someone_else', but this run "
            "evaluates 'preset:tiny'; use another --out_dir (one model per out_dir)",
    }
    refusals |= {  # huge prompts, keys on the command line
        ("evaluate", "--model=preset:tiny", f"--eval_set=jsonl:{huge}", "--languages=en", "--metrics=language",
         f"--out_dir={tmp_path / 'e2'}"):
            "xlit-eval: eval set huge, language en, id big: the prompt has 150000 characters: more than the model's "
            "512 positions can hold at 256 characters per token at most",
        ("serve", "--model=preset:tiny", "--api_key=sk-visible-in-ps"):
            "xlit-serve: --api_key: a key on the command line is visible to every user in the process list; put it "
            "in $XLIT_SERVE_API_KEY or in a file for --api_key_file",
        ("serve", "--model=preset:tiny", f"--api_key_file={empty_key}"):
            f"xlit-serve: --api_key_file={empty_key}: the file is empty",
    }
    running = {args: subprocess.Popen([sys.executable, "-m", f"launch.{args[0]}", *args[1:]], cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in refusals}
    helps = {module: run_binary(module, "--help") for module in ("convert", "serve", "lm_eval_cli")}
    for args, process in running.items():
        _, err = process.communicate(timeout=300)
        assert (process.returncode, err.strip().splitlines()[-1]) == (2, refusals[args]), (args, err[-2000:])
        assert "Traceback" not in err
    busy.close()
    assert not (tmp_path / "run").exists() and not (tmp_path / "hf").exists()
    assert helps["convert"].returncode == 0 and helps["convert"].stdout.startswith("xlit-convert: any weights")
    assert "--[no]overwrite: replace an existing" in helps["convert"].stdout and "--src:" in helps["convert"].stdout
    assert "--slots:" in helps["serve"].stdout and "--attention:" in helps["serve"].stdout
    lm_eval_help = helps["lm_eval_cli"].stdout  # ours first: lm-eval's own help names none of our models
    assert lm_eval_help.startswith("xlit-lm-eval: lm-evaluation-harness's own command line, with xlit_jax's "
                                   "models as `--model xlit`") and "usage: lm-eval" in lm_eval_help
    version = run_binary("convert", "--version")
    assert (version.returncode, version.stdout.strip()) == (0, "xlit-convert (xlit_jax) 0.1.0")

def test_every_binarys_help_keeps_the_line_breaks_of_its_examples():
    """In a docstring, a backslash ending a line joins the next one: an example's shell continuation is `\\\\`."""
    for module in [*BINARIES, "../xlit_jax/perf/serve_throughput"]:
        source = (REPO / "launch" / f"{module}.py").read_text()
        docstring = ast.parse(source).body[0]
        assert ast.get_source_segment(source, docstring).count("\n") == docstring.value.value.count("\n"), module


def test_quiet_orbax_drops_orbax_noise_only_and_installs_once(monkeypatch):
    """What run_main installs for the process: Orbax's INFO lines and its cancelled work's tracebacks go;
    its warnings, and everything of others, stay."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    quiet_orbax()
    quiet_orbax()
    assert sys.unraisablehook.keywords["report"] == reported.append  # not wrapped twice
    for path in ("/site-packages/orbax/checkpoint/reader.py", "/site-packages/other/module.py"):
        sys.unraisablehook(SimpleNamespace(object=SimpleNamespace(cr_code=SimpleNamespace(co_filename=path)),
                                           exc_traceback=None))
    assert [u.object.cr_code.co_filename for u in reported] == ["/site-packages/other/module.py"]
    absl = absl_logging.get_absl_logger()
    for level, path, kept in [(logging.INFO, "/site-packages/orbax/checkpoint/manager.py", False),
                              (logging.WARNING, "/site-packages/orbax/checkpoint/manager.py", True),
                              (logging.INFO, "/work/xlit_jax/train/loop.py", True)]:
        assert bool(absl.filter(logging.LogRecord("absl", level, path, 1, "saving", None, None))) == kept
