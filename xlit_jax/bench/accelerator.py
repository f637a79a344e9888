"""One command for a lent GPU or TPU: training MFU and decoding against the HBM floor, ours and HF's.

    python -m xlit_jax.bench.accelerator --out_dir=runs/accelerator

On the attached accelerator(s), in about 8 minutes, with random weights (throughput does not depend on them):
- training: a 1B-shape (TinyLlama) full fine-tune and a 7B-shape LoRA (rank 16, all projections), seq 2048,
  bf16 matmuls over fp32 master weights (the LoRA base in bf16), full remat; tokens/s and MFU from the model
  FLOPs (train.metrics) over the datasheet peak;
- decoding: the 7B shape in bf16, greedy, at batch 1 and 16: tokens/s and the share of the HBM floor reached
  (every weight and the KV cache read once per step: xlit_jax.plan.decoding);
- the same through HF transformers (+ peft) on the same device when torch sees it (fp32 weights under bf16
  autocast with gradient checkpointing for training; bf16 weights for decoding).
Each time is the median of timed calls after a warm-up (bench.common.time_calls); the optimizer and the
adapters are the benchmarks' (workloads.SETTINGS, models.config's paper LoRA defaults). Results go to
out_dir/accelerator.json and accelerator.md. Aims on an H100: MFU >= 45% (7B LoRA) and >= 40%
(1B full FT); decoding >= 70% of the HBM floor at batch 1 and >= 1.5x HF.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

from xlit_jax.bench import common, workloads
from xlit_jax.bench.workloads import train_batch

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "runs/accelerator", "where accelerator.json and accelerator.md go")
flags.DEFINE_integer("seq_len", 2048, "training sequence length")
flags.DEFINE_integer("rows_1b", 8, "rows per device per step, 1B full fine-tune")
flags.DEFINE_integer("rows_7b", 4, "rows per device per step, 7B LoRA")
flags.DEFINE_integer("steps", 5, "timed training steps after a warm-up step")
flags.DEFINE_list("decode_batches", ["1", "16"], "decoding batch sizes (one device)")
flags.DEFINE_integer("prompt_len", 128, "decoding prompt tokens (random ids)")
flags.DEFINE_integer("new_tokens", 256, "decoding new tokens")
flags.DEFINE_bool("hf", True, "also measure HF transformers (+ peft) when torch sees the accelerator")

TRAIN_CASES = (("llama-1b", "ft"), ("llama2-7b", "lora"))


def check_accelerator():
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        sys.exit("xlit_jax.bench.accelerator: no GPU or TPU attached (jax sees only the CPU); for CPU numbers use "
                 "xlit_jax.bench.train_throughput and decode_throughput")
    return device


def bench_config(preset: str, method: str, **fields):
    from xlit_jax.models.presets import get_preset

    # eos -1: never produced, so decoding runs its full length on random weights
    config = get_preset(preset).replace(dtype="bfloat16", eos_token_ids=(-1,), **fields)
    return workloads.with_lora(config, method)


def train_ours(preset: str, method: str, rows: int) -> float:
    """Seconds per step of our jitted train step, the state built on the devices (nothing through the host)."""
    train_step = workloads.bench_step(bench_config(preset, method, remat="full"))
    state = train_step.init_on_device()
    run = workloads.repeated_step(train_step, state, workloads.device_batch(train_step, rows, FLAGS.seq_len))
    return common.time_calls(run, FLAGS.steps).seconds


def hf_model(config, dtype):
    import torch
    import transformers

    from xlit_jax.io.hf import config_to_hf

    hf = config_to_hf(config.replace(lora_rank=0, eos_token_ids=(2,)))
    with torch.device("cuda"):
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf)).to(dtype)


def train_hf(preset: str, method: str, rows: int) -> float:
    import torch

    config = bench_config(preset, method)
    model = hf_model(config, torch.float32)
    model.gradient_checkpointing_enable()
    if method == "lora":
        model = workloads.torch_lora(model, config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = workloads.torch_adamw(trainable, fused=True)
    b = {k: torch.tensor(v, device="cuda") for k, v in train_batch(config.vocab_size, rows, FLAGS.seq_len).items()}

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=b["input_ids"].long()).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), b["targets"].long().flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, workloads.SETTINGS.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    return common.time_calls(run, FLAGS.steps).seconds


def decode_ours(batch: int) -> float:
    import jax
    import jax.numpy as jnp

    from xlit_jax.decode.generate import greedy_decode
    from xlit_jax.models.llama import init_params
    from xlit_jax.train.step import shapes_only

    config = bench_config("llama2-7b", "ft", param_dtype="bfloat16")
    params = init_params(shapes_only(config), 0)
    ids = jnp.asarray(train_batch(config.vocab_size, batch, FLAGS.prompt_len)["input_ids"])
    segments = jnp.ones_like(ids)
    eos = jnp.asarray(config.eos_token_ids, jnp.int32)

    def run():
        tokens, _ = greedy_decode(params, ids, segments, jnp.float32(1.0), eos, config=config,
                                  max_new_tokens=FLAGS.new_tokens)
        jax.block_until_ready(tokens)

    return common.time_calls(run, 1).seconds


def decode_hf(batch: int) -> float:
    import torch

    config = bench_config("llama2-7b", "ft")
    model = hf_model(config, torch.bfloat16).eval()
    ids = torch.tensor(train_batch(config.vocab_size, batch, FLAGS.prompt_len)["input_ids"], device="cuda").long()

    def run():
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=FLAGS.new_tokens,
                           min_new_tokens=FLAGS.new_tokens, pad_token_id=0)
        torch.cuda.synchronize()

    return common.time_calls(run, 1).seconds


def torch_on_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def train_rows(device, devices: int) -> list[dict]:
    from xlit_jax import hardware
    from xlit_jax.train.metrics import train_flops_per_token

    peak = hardware.peak_flops(device)
    engines = [("xlit_jax", train_ours)] + ([("hf", train_hf)] if FLAGS.hf and torch_on_gpu() else [])
    rows = []
    for preset, method in TRAIN_CASES:
        flops = train_flops_per_token(bench_config(preset, method), FLAGS.seq_len)
        for engine, measure in engines:
            chips = devices if engine == "xlit_jax" else 1  # HF runs on one device
            batch_rows = (FLAGS.rows_1b if method == "ft" else FLAGS.rows_7b) * chips
            seconds = measure(preset, method, batch_rows)
            tokens_per_s = batch_rows * FLAGS.seq_len / seconds
            rows.append({"kind": "train", "engine": engine, "model": preset, "method": method, "devices": chips,
                         "rows": batch_rows, "seq_len": FLAGS.seq_len, "step_s": seconds,
                         "tokens_per_s": tokens_per_s, "mfu": flops * tokens_per_s / (peak * chips)})
    return rows


def decode_rows(device) -> list[dict]:
    from xlit_jax import hardware
    from xlit_jax.models.presets import get_preset
    from xlit_jax.plan import decode_step_bytes

    _, bandwidth = hardware.memory(device)
    config = get_preset("llama2-7b").replace(dtype="bfloat16", param_dtype="bfloat16")
    engines = [("xlit_jax", decode_ours)] + ([("hf", decode_hf)] if FLAGS.hf and torch_on_gpu() else [])
    rows = []
    for batch in map(int, FLAGS.decode_batches):
        weights, cache = decode_step_bytes(config, batch, FLAGS.prompt_len + FLAGS.new_tokens)
        floor_tokens_per_s = batch * bandwidth / (weights + cache) if bandwidth else None
        for engine, measure in engines:
            seconds = measure(batch)
            tokens_per_s = batch * FLAGS.new_tokens / seconds  # the prefill of a short prompt included
            rows.append({"kind": "decode", "engine": engine, "model": "llama2-7b", "batch": batch,
                         "new_tokens": FLAGS.new_tokens, "seconds": seconds, "tokens_per_s": tokens_per_s,
                         "floor_share": tokens_per_s / floor_tokens_per_s if floor_tokens_per_s else None})
    return rows


def markdown(device_kind: str, rows: list[dict]) -> str:
    train = common.markdown_table(["engine", "model", "method", "devices", "rows x seq", "tokens/s", "MFU"], [
        [r["engine"], r["model"], r["method"], r["devices"], f"{r['rows']} x {r['seq_len']}",
         f"{r['tokens_per_s']:.0f}", f"{r['mfu']:.1%}"] for r in rows if r["kind"] == "train"])
    decode = common.markdown_table(["engine", "model", "batch", "new tokens", "tokens/s", "share of HBM floor"], [
        [r["engine"], r["model"], r["batch"], r["new_tokens"], f"{r['tokens_per_s']:.1f}",
         "-" if r["floor_share"] is None else format(r["floor_share"], ".1%")] for r in rows if r["kind"] == "decode"])
    return f"Device: {device_kind}\n\n{train}\n\n{decode}"


def main(argv):
    del argv
    device = check_accelerator()
    import jax

    rows = [r | {"device_kind": device.device_kind}
            for r in train_rows(device, jax.device_count()) + decode_rows(device)]
    table = markdown(device.device_kind, rows)
    common.write_rows(Path(FLAGS.out_dir) / "accelerator.json", rows, table)
    print(table)


if __name__ == "__main__":
    app.run(main)
