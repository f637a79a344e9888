"""One command for a lent GPU or TPU: training MFU and decoding against the HBM floor, ours and HF's, and
the compile-only plans against what the device measures.

    python -m xlit_jax.perf.accelerator --out_dir=runs/accelerator

On the attached accelerator(s), with random weights (throughput does not depend on them):
- training (--train, MODEL:METHOD:ROWS per device): a 1B-shape (TinyLlama) full fine-tune and a 7B-shape
  LoRA (rank 16, all projections), seq 2048, bf16 matmuls over fp32 master weights (the LoRA base in bf16),
  full remat; tokens/s and MFU from the model FLOPs (train.metrics) over the datasheet peak. --train_if_fits
  (the 7B full fine-tune) runs only where its plan says it fits;
- plans (--plan): each training case of ours also through `xlit_jax.plan.plan_training` for the attached
  devices (compile-only, the experiment config --experiment with the case's model, batch and dtype): the
  plan's peak memory per device next to the measured one (`device.memory_stats()['peak_bytes_in_use']`,
  so run one training case per process for a clean peak), and its step time at the measured MFU (equal
  to the measured step when the plan counts the measured FLOPs) and at the plans' 40%;
- decoding: the 7B shape (--decode_model) in bf16 and with int8 weights (--decode_formats), greedy, at batch 1
  and 16: tokens/s and the share of the HBM floor reached (every weight, codes and scales for int8, and the
  KV cache read once per step: xlit_jax.plan.decoding);
- the same through HF transformers (+ peft) on the same device when torch sees it (fp32 weights under bf16
  autocast with gradient checkpointing for training; bf16 weights for decoding).
Each time is the median of timed calls after a warm-up (perf.common.time_calls); the optimizer and the
adapters are the perf scripts' (workloads.SETTINGS, models.lora's paper LoRA defaults). Each row is
appended to out_dir/accelerator.jsonl as it finishes (a failing row records its error and the others
run); out_dir/accelerator.json and accelerator.md hold all rows there at the end. --dry_run allows the CPU
(HF on torch's CPU) for checking the wiring with tiny shapes (scripts/accelerator_check.sh --dry_run).
Aims on an H100/H200: MFU >= 45% (7B LoRA) and >= 40% (1B full FT); decoding >= 75% of the HBM floor at
batch 1 and >= 1.5x HF.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from xlit_jax import hardware, plan
from xlit_jax.decode.engine import generate_ids
from xlit_jax.hardware import GiB
from xlit_jax.io.files import append_jsonl, resume_jsonl
from xlit_jax.io.hf import config_to_hf
from xlit_jax.models import quantize
from xlit_jax.models.llama import init_params
from xlit_jax.models.lora import LORA_RANK
from xlit_jax.models.presets import get_preset
from xlit_jax.perf import accelerator_report, common, workloads
from xlit_jax.perf.workloads import train_batch
from xlit_jax.plan import decode_step_bytes
from xlit_jax.resources import config_file
from xlit_jax.train.metrics import train_flops_per_token

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "runs/accelerator", "where accelerator.jsonl, .json and .md go")
flags.DEFINE_list("train", ["llama-1b:ft:8", "llama2-7b:lora:4"], "training cases MODEL:METHOD:ROWS (rows per "
                  "device per step; METHOD ft or lora)")
flags.DEFINE_list("train_if_fits", ["llama2-7b:ft:1"], "training cases measured only where their plan fits")
flags.DEFINE_bool("plan", True, "plan our training cases for the attached devices (compile-only)")
flags.DEFINE_string("experiment", str(config_file("experiments/tiny_ft.py")), "the experiment config the plans "
                    "start from (base.py's defaults; the model, batch, dtype and remat are the case's)")
flags.DEFINE_list("engines", ["xlit_jax", "hf"], "xlit_jax (ours), hf (transformers + peft, when torch sees it)")
flags.DEFINE_integer("seq_len", 2048, "training sequence length")
flags.DEFINE_integer("steps", 5, "timed training steps after a warm-up step")
flags.DEFINE_string("decode_model", "llama2-7b", "decoding model (a preset)")
flags.DEFINE_list("decode_batches", ["1", "16"], "decoding batch sizes (one device)")
flags.DEFINE_list("decode_formats", ["none", "int8"], "our decoding's weight formats (models.quantize; none: "
                  "the config's bf16); HF decodes in bf16 only")
flags.DEFINE_integer("prompt_len", 128, "decoding prompt tokens (random ids)")
flags.DEFINE_integer("new_tokens", 256, "decoding new tokens")
flags.DEFINE_bool("dry_run", False, "allow the CPU (and HF on torch's CPU): the wiring, with tiny shapes given")

PLAN_MFU = 0.4  # the MFU the compile-only plans assume (perf.scaling's default)


def check_accelerator():
    device = jax.devices()[0]
    if device.platform == "cpu" and not FLAGS.dry_run:
        sys.exit("xlit_jax.perf.accelerator: no GPU or TPU attached (jax sees only the CPU); for CPU numbers use "
                 "xlit_jax.perf.train_throughput and decode_throughput")
    return device


def bench_config(preset: str, **fields):
    # eos -1: never produced, so decoding runs its full length on random weights
    return get_preset(preset).replace(dtype="bfloat16", eos_token_ids=(-1,), **fields)


def train_ours(config, lora, rows: int) -> float:
    """Seconds per step of our jitted train step, the state built on the devices (nothing through the host)."""
    train_step = workloads.bench_step(config, lora)
    state = train_step.init_on_device()
    run = workloads.repeated_step(train_step, state, workloads.device_batch(train_step, rows, FLAGS.seq_len))
    return common.time_calls(run, FLAGS.steps).seconds


def torch_device() -> str | None:
    """Where HF runs: the GPU torch sees; with --dry_run, else the CPU; None: not here."""
    try:  # torch is optional (the `torch` extra): imported only where HF runs, here and below
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else "cpu" if FLAGS.dry_run else None


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def hf_model(config, dtype):
    import torch
    import transformers

    hf = config_to_hf(config.replace(eos_token_ids=(2,)))
    with torch.device(torch_device()):
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf)).to(dtype)


def train_hf(config, lora, rows: int) -> float:
    import torch

    device = torch_device()
    model = hf_model(config, torch.float32)
    model.gradient_checkpointing_enable()
    if lora is not None:
        model = workloads.torch_lora(model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = workloads.torch_adamw(trainable, fused=True)
    b = {k: torch.tensor(v, device=device) for k, v in train_batch(config.vocab_size, rows, FLAGS.seq_len).items()}

    def run():
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(input_ids=b["input_ids"].long()).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), b["targets"].long().flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, workloads.SETTINGS.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize()

    return common.time_calls(run, FLAGS.steps).seconds


def decode_ours(params, config, batch: int) -> float:
    prompts = train_batch(config.vocab_size, batch, FLAGS.prompt_len)["input_ids"].tolist()

    def run():  # the engine's slots, one per prompt; it returns host lists, so the time is the device's too
        generate_ids(params, config, prompts, max_new_tokens=FLAGS.new_tokens, slots=batch)

    return common.time_calls(run, 1).seconds


def decode_hf(config, batch: int) -> float:
    import torch

    model = hf_model(config, torch.bfloat16).eval()
    ids = torch.tensor(train_batch(config.vocab_size, batch, FLAGS.prompt_len)["input_ids"],
                       device=torch_device()).long()

    def run():
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=FLAGS.new_tokens,
                           min_new_tokens=FLAGS.new_tokens, pad_token_id=0)
        synchronize()

    return common.time_calls(run, 1).seconds


def guarded(row: dict, measure) -> dict:
    """`row` with what `measure()` returns, or with the error it raised in one line (out of memory, a
    kernel the device refuses): one failing case leaves the others running. Frees what it left."""
    try:
        row |= measure()
    except Exception as e:  # noqa: BLE001 - recorded in the row; the run goes on
        logging.exception("%s failed", row)
        first_line = (str(e).strip().splitlines() or [""])[0]
        row["error"] = f"{type(e).__name__}: {first_line[:300]}"
    gc.collect()
    if torch_device() == "cuda":
        import torch

        torch.cuda.empty_cache()
    return row


def parse_case(case: str) -> tuple[str, str, int]:
    model, method, rows = case.split(":")
    if method not in ("ft", "lora"):
        raise app.UsageError(f"training case {case!r}: METHOD is ft or lora")
    return model, method, int(rows)


def plan_case(model: str, method: str, rows: int):
    """The compile-only plan of the case for the attached devices, from the --experiment config."""
    cfg = ConfigFileFlagParser("experiment").parse(FLAGS.experiment)
    cfg.model.update(source=f"preset:{model}", dtype="bfloat16", remat="full", vocab_size=0)
    cfg.lora.rank = LORA_RANK if method == "lora" else 0
    cfg.data.update(seq_len=FLAGS.seq_len, tokens_per_batch=rows * FLAGS.seq_len, grad_accum=1)
    cfg.mesh.update(data=1, fsdp=-1, tensor=1, target="")
    return plan.plan_training(cfg, jax.devices(), "attached")


def peak_bytes(device) -> int | None:
    """The allocator's peak in this process (None where the runtime keeps no statistics: the CPU)."""
    return (device.memory_stats() or {}).get("peak_bytes_in_use")


def train_case(device, devices: int, engine: str, case: str, if_fits: bool) -> dict:
    model, method, rows_per_device = parse_case(case)
    chips = devices if engine == "xlit_jax" else 1  # HF runs on one device
    rows = rows_per_device * chips
    config, lora = bench_config(model, remat="full"), workloads.lora_for(method)
    row = {"kind": "train", "engine": engine, "model": model, "method": method, "devices": chips, "rows": rows,
           "seq_len": FLAGS.seq_len}
    result = {}
    if engine == "xlit_jax" and (FLAGS.plan or if_fits):
        result = guarded({}, lambda: {"plan": plan_case(model, method, rows_per_device)})
        if "error" in result:
            row["plan_error"] = result["error"]
        if if_fits and result.get("plan") is None:
            return row | {"skipped": "no plan, so no fit known"}
        if if_fits and result["plan"].fits is False:
            return row | {"skipped": f"the plan needs {result['plan'].compiled.peak_bytes / GiB:.1f} GiB per "
                                     "device: does not fit"}
    measure = train_ours if engine == "xlit_jax" else train_hf
    flops = train_flops_per_token(config, FLAGS.seq_len, lora)
    peak = hardware.peak_flops(device)

    def measured():
        seconds = measure(config, lora, rows)
        tokens_per_s = rows * FLAGS.seq_len / seconds
        mfu = flops * tokens_per_s / (peak * chips)
        out = {"step_s": seconds, "tokens_per_s": tokens_per_s, "mfu": mfu}
        if engine == "xlit_jax":
            measured_peak = peak_bytes(device)
            out["measured_peak_gib"] = None if measured_peak is None else measured_peak / GiB
        if "plan" in result:
            p = result["plan"]
            out |= {"plan_peak_gib": p.compiled.peak_bytes / GiB, "plan_fits": p.fits,
                    "plan_attention": p.compiled.attention, "plan_step_s_at_measured_mfu": p.step_seconds(mfu),
                    "plan_step_s_at_40pct": p.step_seconds(PLAN_MFU)}
        return out

    return guarded(row, measured)


def decode_case(device, engine: str, batch: int, fmt: str = "none") -> dict:
    _, bandwidth = hardware.memory(device)
    config = bench_config(FLAGS.decode_model, param_dtype="bfloat16")
    weights, cache = decode_step_bytes(config, batch, FLAGS.prompt_len + FLAGS.new_tokens)
    row = {"kind": "decode", "engine": engine, "model": FLAGS.decode_model, "batch": batch, "format": fmt,
           "new_tokens": FLAGS.new_tokens}

    def measured():
        if engine == "xlit_jax":
            params = quantize.quantize_params(init_params(config, 0), fmt)
            step_bytes = quantize.nbytes(params) + cache  # a quantized model reads its codes and scales
            seconds = decode_ours(params, config, batch)
        else:
            step_bytes, seconds = weights + cache, decode_hf(config, batch)
        floor_tokens_per_s = batch * bandwidth / step_bytes if bandwidth else None
        tokens_per_s = batch * FLAGS.new_tokens / seconds  # the prefill of a short prompt included
        return {"seconds": seconds, "tokens_per_s": tokens_per_s,
                "floor_share": tokens_per_s / floor_tokens_per_s if floor_tokens_per_s else None}

    return guarded(row, measured)


def cases(device, devices: int):
    """(row maker) for every asked case, ours first, the engines that cannot run here left out with a row
    saying so."""
    engines = list(FLAGS.engines)
    if "hf" in engines and torch_device() is None:
        engines.remove("hf")
        yield lambda: {"kind": "note", "engine": "hf", "error": "torch sees no GPU here: HF not measured"}
    for engine in engines:
        for case in FLAGS.train:
            yield lambda engine=engine, case=case: train_case(device, devices, engine, case, False)
        for case in FLAGS.train_if_fits if engine == "xlit_jax" else ():
            yield lambda engine=engine, case=case: train_case(device, devices, engine, case, True)
        for fmt in FLAGS.decode_formats if engine == "xlit_jax" else ("none",):
            for batch in map(int, FLAGS.decode_batches):
                yield lambda engine=engine, batch=batch, fmt=fmt: decode_case(device, engine, batch, fmt)


def main(argv):
    del argv
    device = check_accelerator()
    out = Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for make in cases(device, jax.device_count()):
        row = make() | {"device_kind": device.device_kind}
        logging.info("%s", row)
        append_jsonl(out / "accelerator.jsonl", [row])
    rows = resume_jsonl(out / "accelerator.jsonl")  # with those of earlier runs into the same folder
    table = accelerator_report.markdown(device.device_kind, rows)
    common.write_rows(out / "accelerator.json", rows, table)
    print(table)


if __name__ == "__main__":
    app.run(main)
