"""The paper's grid, planned on compile-only pods (docs/scaling.md): does each config fit, how fast would it run.

    JAX_PLATFORMS=cpu nice -n 10 python -m xlit_jax.perf.scaling --out_dir=runs/scaling

Needs the compile-only stacks (`pip install -e '.[aot-tpu,aot-gpu]'`). One compilation per row (about a
minute for a 7B model on 2 CPU cores), rows appended to out_dir/{train,decode}.jsonl as they finish: a
rerun skips the finished ones. out_dir/scaling.md gets the tables.

Training rows keep the paper's update of 16,384 tokens (8 rows of 2,048), split as the mesh allows: the
batch shards over data x fsdp must divide a micro-batch's rows, so fsdp takes up to 8 devices, `tensor` the
rest, and a micro-batch holds one row per batch shard (two on one device, the paper's 2 x 4).
"""

from __future__ import annotations

import os
from pathlib import Path

from absl import app, flags, logging
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from xlit_jax import plan
from xlit_jax.io.files import append_jsonl, atomic_write_text, markdown_table, resume_jsonl
from xlit_jax.models.quantize import FORMATS
from xlit_jax.resources import config_file

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "runs/scaling", "where the JSONL rows and scaling.md go")
flags.DEFINE_list("targets", ["v5p-8", "v5e-16", "v6e-8", "v4-8", "8xh100", "8xa100"], "training targets")
flags.DEFINE_string("experiment", str(config_file("experiments/paper.py")), "the paper's grid: a config file "
                    "taking MODEL,DATA,METHOD,LR")
flags.DEFINE_list("models", ["llama2-7b", "llama2-13b", "tower-7b"], "paper models (MODEL of --experiment)")
flags.DEFINE_list("methods", ["ft", "lora"], "ft, lora, or lora-FORMAT: LoRA on a base quantized to FORMAT "
                  "(lora.base_quantization: int8, nf4, int4; docs/quantization.md)")
flags.DEFINE_list("single", ["1xh100:llama2-7b:lora"], "extra target:model:method training rows (method as "
                  "in --methods)")
flags.DEFINE_list("decode_targets", ["1xh100", "v5e-1"], "one-device targets for the decoding rows")
flags.DEFINE_list("decode_models", ["llama2-7b", "llama2-13b"], "decoding models (presets)")
flags.DEFINE_list("decode_batches", ["1", "16", "64"], "decoding batch sizes (the engine's slots)")
flags.DEFINE_integer("prompt_len", 512, "decoding prompt length (its cache slots come first)")
flags.DEFINE_integer("new_tokens", 512, "decoding new tokens")
flags.DEFINE_float("mfu", 0.4, "MFU assumed for the predicted step time")
flags.DEFINE_integer("steps", 1000, "training steps for the predicted hours (the paper's 1,000)")
flags.DEFINE_list("kinds", ["train", "decode"], "train, decode")
flags.DEFINE_bool("report_only", False, "compile nothing: tables of the rows already in out_dir")
flags.DEFINE_list("attention", ["auto"], "LlamaConfig.attention settings to plan each row with: auto (the fused "
                  "kernel of the target: cudnn on GPUs, splash on TPUs), xla (the reference)")

METHODS = ("ft", "lora", *(f"lora-{fmt}" for fmt in FORMATS))  # lora-FORMAT: LoRA on a quantized base
PAPER_ROWS = 8  # rows of 2,048 tokens per update: 4 micro-batches of 4,096 tokens


def paper_config(model: str, method: str, devices: int):
    method, _, quantization = method.partition("-")
    cfg = ConfigFileFlagParser("experiment").parse(f"{FLAGS.experiment}:{model},lima-en,{method},1e-5")
    cfg.model.source = f"preset:{model}"
    if quantization:
        cfg.lora.base_quantization = quantization
    fsdp = min(devices, PAPER_ROWS)
    rows = max(fsdp, 2)
    cfg.mesh.update(data=1, fsdp=fsdp, tensor=devices // fsdp)
    cfg.data.update(tokens_per_batch=rows * cfg.data.seq_len, grad_accum=PAPER_ROWS // rows)
    return cfg


def train_row(target: str, model: str, method: str, attention: str) -> dict:
    devices = plan.topology_devices(target)
    result = plan.plan_training(paper_config(model, method, len(devices)), devices, target, attention)
    return result.row(FLAGS.mfu, FLAGS.steps) | {"model": model}


def decode_row(target: str, model: str, batch: int, attention: str) -> dict:
    device = plan.topology_devices(target)[0]
    return plan.plan_decoding(f"preset:{model}", device, batch, FLAGS.prompt_len, FLAGS.new_tokens, target,
                              attention).row()


def run_rows(path: Path, keys: list[tuple], make, key_fields: tuple[str, ...]) -> list[dict]:
    """The rows of `keys` in order: those in `path` already, the others made (unless --report_only) and
    appended as they finish."""
    done = {tuple(str(r[f]) for f in key_fields): r for r in resume_jsonl(path)}
    path.parent.mkdir(parents=True, exist_ok=True)
    for key in keys:
        ident = tuple(map(str, key))
        if ident in done or FLAGS.report_only:
            continue
        logging.info("planning %s", key)
        done[ident] = make(*key)
        logging.info("%s", done[ident])
        append_jsonl(path, [done[ident]])
    return [done[k] for k in (tuple(map(str, key)) for key in keys) if k in done]


def attention_cell(row: dict) -> str:
    """'asked: found', the kernels found named by family (the rows keep their full names)."""
    found = dict.fromkeys("splash" if "splash" in k else "cudnn" if k.startswith("__cudnn") else k
                          for k in row["attention"].split(","))
    return f"{row['attention_setting']}: {' + '.join(found)}"


def gib(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def train_table(rows: list[dict]) -> str:
    header = ["target", "model", "method", "attention (asked: found)", "mesh (data, fsdp, tensor)",
              "micro-batches x rows", "remat", "peak GiB / device", "device GiB", "fits", "model FLOPs / step",
              "compiler FLOPs (scaled)", f"hours for {FLAGS.steps:,} steps at {FLAGS.mfu:.0%} MFU", "compile s"]
    return markdown_table(header, [
        [r["target"], r["model"], r["method"], attention_cell(r), ", ".join(map(str, r["mesh"].values())),
         f"{r['grad_accum']} x {r['rows']}", r["remat"], gib(r["peak_gib"]), gib(r["memory_gib"]),
         "yes" if r["fits"] else "no", f"{r['model_flops']:.3g}",
         "-" if r["hardware_flops"] is None else f"{r['hardware_flops']:.3g}", f"{r['hours']:.2f}",
         f"{r['compile_s']:.0f}"] for r in rows])


def decode_table(rows: list[dict]) -> str:
    header = ["target", "model", "attention (asked: found)", "batch", "peak GiB", "weights GiB", "KV cache GiB",
              "device GiB", "fits", "HBM floor ms / step", "floor tokens/s", "compile s"]
    return markdown_table(header, [
        [r["target"], r["model"], attention_cell(r), r["batch"], gib(r["peak_gib"]), gib(r["weights_gib"]),
         gib(r["cache_gib"]), gib(r["memory_gib"]), "yes" if r["fits"] else "no", f"{r['floor_ms_per_step']:.2f}",
         f"{r['floor_tokens_per_s']:.0f}", f"{r['compile_s']:.0f}"] for r in rows])


def check_train_keys(keys: list[tuple]) -> None:
    """Refuse a malformed --single or an unknown method before the first (minutes-long) compilation."""
    for key in keys:
        if len(key) != 4 or key[2] not in METHODS:
            raise app.UsageError(f"training row {':'.join(key[:-1])!r}: want TARGET:MODEL:METHOD with METHOD one "
                                 f"of {', '.join(METHODS)}")


def main(argv):
    del argv
    if os.environ.get("JAX_PLATFORMS") != "cpu":
        raise app.UsageError("run with JAX_PLATFORMS=cpu: compile-only targets need the CPU as the host platform")
    out = Path(FLAGS.out_dir)
    tables = []
    if "train" in FLAGS.kinds:
        keys = [(t, m, k, a) for t in FLAGS.targets for m in FLAGS.models for k in FLAGS.methods
                for a in FLAGS.attention]
        keys += [(*s.split(":"), a) for s in FLAGS.single for a in FLAGS.attention]
        check_train_keys(keys)
        fields = ("target", "model", "method", "attention_setting")
        tables.append(train_table(run_rows(out / "train.jsonl", keys, train_row, fields)))
    if "decode" in FLAGS.kinds:
        keys = [(t, m, int(b), a) for t in FLAGS.decode_targets for m in FLAGS.decode_models
                for b in FLAGS.decode_batches for a in FLAGS.attention]
        fields = ("target", "model", "batch", "attention_setting")
        tables.append(decode_table(run_rows(out / "decode.jsonl", keys, decode_row, fields)))
    atomic_write_text(out / "scaling.md", "\n\n".join(tables) + "\n")
    print("\n\n".join(tables))


if __name__ == "__main__":
    app.run(main)
