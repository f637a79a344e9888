"""The GPU check in one command (scripts/accelerator_check.sh runs this): the kernels on the GPU, the
throughput, the plans against the device, each part a subprocess with its own time limit.

    python -m xlit_jax.perf.accelerator_check --out_dir=DIR [--dry_run]

Parts, in order of what a short lease most needs:
1. kernels: `pytest -m gpu tests/models/test_attention.py` (cuDNN and the Pallas decode kernel against the XLA
   reference, and bf16 greedy decoding cudnn vs xla), fp32 matmuls at full precision so the reference is
   fp32 and not TF32;
2. each training case of ours in its own process (perf.accelerator with its plan: a clean peak memory);
3. decoding, ours; 4. HF transformers (+ peft), training and decoding;
5. the 7B full fine-tune where its plan fits the device.
A part that fails or runs out of its time leaves the others' results; all parts together stay inside
--budget_s. Out: DIR/accelerator_check.json and .md (the summary), accelerator.jsonl/.json/.md (the
throughput rows), kernels.xml (pytest's report), parts.log (every part's output).

--dry_run: the same parts on the CPU with tiny shapes (a few kernel cases), for the wiring; it measures
nothing worth reporting.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from absl import app, flags

from xlit_jax.io.files import atomic_write_text, markdown_table, resume_jsonl
from xlit_jax.perf import accelerator_report

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "runs/accelerator", "where the summary, the throughput rows and the logs go")
flags.DEFINE_bool("dry_run", False, "the same parts on the CPU with tiny shapes: the wiring, nothing to report")
flags.DEFINE_integer("budget_s", 470, "seconds for all parts together (the issue's 8 minutes, less start-up)")

# (model:method:rows) per part; the real run's, then the dry run's
TRAIN = ("llama-1b:ft:8", "llama2-7b:lora:4")
IF_FITS = "llama2-7b:ft:1"  # about 110 GiB of weights, gradients and Adam state: one row, or nothing fits
DECODE = "1,16"
DRY_TRAIN, DRY_IF_FITS, DRY_DECODE = ("tiny:lora:2",), "tiny:ft:1", "1"
DRY_BENCH = ["--dry_run", "--seq_len=32", "--steps=1", "--prompt_len=8", "--new_tokens=4", "--decode_model=tiny"]
DRY_KERNELS = "packed_rows and 6-bfloat16-24 or gpu_decode and 2-bfloat16-None"
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "transformers", "peft", "torch")


def accelerator_run(engines: str = "xlit_jax", train=(), if_fits: str = "", decode: str = "") -> list[str]:
    """A perf.accelerator run of the cases given (none of the others)."""
    dry = DRY_BENCH if FLAGS.dry_run else []
    return [sys.executable, "-m", "xlit_jax.perf.accelerator", f"--out_dir={FLAGS.out_dir}", f"--engines={engines}",
            f"--train={','.join(train)}", f"--train_if_fits={if_fits}", f"--decode_batches={decode}", *dry]


def parts() -> list[tuple[str, list[str], dict, int]]:
    """(name, command, environment, seconds) of every part."""
    dry = FLAGS.dry_run
    train, if_fits, decode = (DRY_TRAIN, DRY_IF_FITS, DRY_DECODE) if dry else (TRAIN, IF_FITS, DECODE)
    small = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # leaves the GPU to torch (and pytest needs little)
    whole = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}  # JAX's default 75% would cap the 7B cases at 105 GB
    kernels = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
               "tests/models/test_attention.py", f"--junitxml={FLAGS.out_dir}/kernels.xml",
               *(["-k", DRY_KERNELS] if dry else [])]
    return ([("kernels", kernels, small | {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}, 150)]
            + [(f"train {case}", accelerator_run(train=[case]), whole, 150) for case in train]
            + [("decode", accelerator_run(decode=decode), whole, 180),  # bf16 and int8 weights
               ("hf", accelerator_run(engines="hf", train=train, decode=decode), small, 150),
               (f"train {if_fits} if it fits", accelerator_run(if_fits=if_fits), whole, 240)])


def run_parts(log: Path) -> list[dict]:
    deadline = time.monotonic() + FLAGS.budget_s
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/xlit_jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")  # a plan's compilation serves the measured step
    if FLAGS.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    done = []
    with log.open("a") as out:
        for name, command, extra, seconds in parts():
            limit = min(seconds, deadline - time.monotonic())
            row = {"part": name, "command": " ".join(command[1:]), "limit_s": round(limit)}
            if limit < 10:
                done.append(row | {"status": "not run: out of time"})
                continue
            out.write(f"\n===== {name}: {row['command']}\n")
            out.flush()
            start = time.monotonic()
            try:
                code = subprocess.run(command, env=env | extra, stdout=out, stderr=subprocess.STDOUT,
                                      timeout=limit).returncode
                status = "ok" if code == 0 else f"exit {code}"
            except subprocess.TimeoutExpired:
                status = f"stopped after {limit:.0f} s"
            done.append(row | {"status": status, "seconds": round(time.monotonic() - start, 1)})
            print(f"accelerator_check: {name}: {status}", flush=True)
    return done


def kernel_rows(path: Path) -> list[dict]:
    """One row per test case of pytest's JUnit XML: outcome, seconds, what it recorded, the failure."""
    if not path.exists():
        return []
    rows = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        problem = next((case.find(k) for k in ("failure", "error", "skipped") if case.find(k) is not None), None)
        outcome = "passed" if problem is None else {"failure": "failed"}.get(problem.tag, problem.tag)
        message = (problem.get("message") or "").strip().splitlines() if problem is not None else []
        rows.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                     "recorded": {p.get("name"): p.get("value") for p in case.iter("property")},
                     "message": message[0][:300] if message else ""})
    return rows


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def recorded(row: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in row["recorded"].items())


def summary(head: dict, part_rows: list[dict], kernels: list[dict], rows: list[dict]) -> str:
    return "\n\n".join([
        "\n".join(f"- {k}: {v}" for k, v in head.items()),
        markdown_table(["part", "status", "seconds", "limit s"], [
            [r["part"], r["status"], r.get("seconds", "-"), r["limit_s"]] for r in part_rows]),
        markdown_table(["kernel test", "outcome", "seconds", "recorded / message"], [
            [r["test"], r["outcome"], f"{r['seconds']:.1f}", recorded(r) or r["message"]] for r in kernels]),
        accelerator_report.markdown(head["device"], rows) if rows else "no throughput rows"])


def main(argv):
    del argv
    out = Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("accelerator.jsonl", "kernels.xml"):  # this run's rows only
        (out / stale).unlink(missing_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    part_rows = run_parts(out / "parts.log")
    kernels = kernel_rows(out / "kernels.xml")
    rows = resume_jsonl(out / "accelerator.jsonl")
    head = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "device": rows[0]["device_kind"] if rows else "unknown",
            "command": "scripts/accelerator_check.sh" + (" --dry_run" if FLAGS.dry_run else ""),
            "dry_run": FLAGS.dry_run, "versions": versions()}
    atomic_write_text(out / "accelerator_check.json", json.dumps(
        head | {"parts": part_rows, "kernels": kernels, "bench": rows}, indent=2) + "\n")
    table = summary(head, part_rows, kernels, rows)
    atomic_write_text(out / "accelerator_check.md", table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
