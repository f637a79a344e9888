"""Training throughput: our jitted train step vs PyTorch (transformers + AdamW; peft for LoRA), same
model, same batch shape, same run.

    python -m xlit_jax.perf.train_throughput --batch=4 --seq_len=256 --steps=5
    python -m xlit_jax.perf.train_throughput --runs=jax:lora,jax:lora-int8,jax:lora-nf4   # a quantized base

Each (engine, method) runs in its own subprocess, so peak RSS and threads are its own. Both sides do a
full update per step (forward, backward over the masked response-token loss, clipping, AdamW with the
released configs' settings: workloads.SETTINGS) in fp32; one warm-up step (JAX compiles, torch allocates),
then the median of `steps` timed ones (perf.common.time_calls). Tokens/s counts every position
of the [batch, seq_len] rows; MFU uses the model FLOPs per token of xlit_jax.train.metrics over the peak
of xlit_jax.train.metrics.peak_flops (on CPU, a measured fp32 matmul rate).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from absl import app, flags

from xlit_jax.errors import InputError
from xlit_jax.io.files import markdown_table
from xlit_jax.io.hf import save_hf_dir
from xlit_jax.models.lora import LORA_RANK, split_lora
from xlit_jax.perf import common, workloads
from xlit_jax.train import metrics

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "model source for both engines")
flags.DEFINE_list("runs", ["jax:ft", "torch:ft", "jax:lora", "torch:lora"], "engine:method pairs")
flags.DEFINE_integer("batch", 4, "rows per step")
flags.DEFINE_integer("seq_len", 256, "tokens per row")
flags.DEFINE_integer("steps", 5, "timed steps after one warm-up step")
flags.DEFINE_integer("lora_rank", LORA_RANK, "LoRA rank (all seven projections)")
flags.DEFINE_integer("torch_threads", 2, "torch intra-op threads")
flags.DEFINE_float("peak_flops", 0.0, "peak FLOP/s for MFU; 0: measured once (CPU) or from the device table")
common.define_rows_flag("train_throughput")
flags.DEFINE_string("worker", None, "internal: run one engine:method and print JSON")


def measure_jax(method: str) -> dict:
    train_step, run = workloads.jax_train_step(FLAGS.model, method, FLAGS.batch, FLAGS.seq_len, FLAGS.lora_rank)
    return {"seconds": common.time_calls(run, FLAGS.steps).seconds, "config": train_step.config}


def measure_torch(method: str) -> dict:
    import tempfile

    if workloads.lora_for(method) and workloads.lora_for(method).base_quantization != "none":
        raise InputError(f"torch:{method}: the PyTorch reference runs the full-precision base")

    import torch  # optional (the `torch` extra): only the reference's worker imports it
    import transformers

    torch.set_num_threads(FLAGS.torch_threads)
    config, lora, params = workloads.load_for_training(FLAGS.model, method, FLAGS.lora_rank)
    with tempfile.TemporaryDirectory() as tmp:  # the same weights as the JAX side, adapters left to peft
        save_hf_dir(config, split_lora(params)[0], f"{tmp}/hf")
        model = transformers.LlamaForCausalLM.from_pretrained(f"{tmp}/hf", dtype=torch.float32)
    if lora is not None:
        model = workloads.torch_lora(model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = workloads.torch_adamw(trainable)
    b = {k: torch.tensor(v) for k, v in workloads.train_batch(config.vocab_size, FLAGS.batch, FLAGS.seq_len).items()}

    def step():
        logits = model(input_ids=b["input_ids"].long(), position_ids=b["positions"].long()).logits
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["targets"].long().flatten(), reduction="none")
        loss = (nll * b["loss_mask"].flatten()).sum() / b["loss_mask"].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, workloads.SETTINGS.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"seconds": common.time_calls(step, FLAGS.steps).seconds, "config": config}


def worker(spec: str) -> dict:
    engine, method = spec.split(":")
    result = (measure_jax if engine == "jax" else measure_torch)(method)
    tokens_per_s = FLAGS.batch * FLAGS.seq_len / result["seconds"]
    peak, _ = metrics.all_devices_peak_flops(FLAGS.peak_flops)
    flops = metrics.train_flops_per_token(result["config"], FLAGS.seq_len, workloads.lora_for(method, FLAGS.lora_rank))
    return {"engine": engine, "method": method, "batch": FLAGS.batch, "seq_len": FLAGS.seq_len,
            "tokens_per_s": round(tokens_per_s, 1), "mfu": round(flops * tokens_per_s / peak, 4),
            "peak_flops": peak,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}


def table(results: list[dict]) -> str:
    return markdown_table(["engine", "method", "tokens/s", "MFU", "peak RSS (GiB)"], [
        [r["engine"], r["method"], r["tokens_per_s"], f"{r['mfu']:.1%}", r["peak_rss_gib"]] for r in results])


def main(argv):
    del argv
    if FLAGS.worker:
        common.print_result(worker(FLAGS.worker))
        return
    peak, source = metrics.all_devices_peak_flops(FLAGS.peak_flops)  # once, before any run loads the machine
    print(f"peak {peak:.3g} FLOP/s ({source})", flush=True)
    passed = [FLAGS[name].serialize() for name in ("model", "batch", "seq_len", "steps", "lora_rank", "torch_threads")]
    passed.append(f"--peak_flops={peak}")
    results = []
    for spec in FLAGS.runs:
        done = subprocess.run([sys.executable, "-m", "xlit_jax.perf.train_throughput", f"--worker={spec}", *passed],
                              capture_output=True, text=True, check=True)
        results.append(common.read_result(done.stdout))
        print(json.dumps(results[-1]), flush=True)
    print("\n" + table(results))
    common.save_rows(results)


if __name__ == "__main__":
    app.run(main)
