"""The CPU table: our train step and greedy decoding against the PyTorch reference, on this CPU, in one run.

    python -m xlit_jax.perf.cpu [--batch=4 --seq_len=256] [--decode_batches=1,16,64 --new_tokens=64]

Each cell is one worker of the training or decoding measurement (`perf.train_throughput`,
`perf.decode_throughput`: SmolLM2-135M-Instruct, fp32, the same inputs for both engines), each engine in
its own process, one after the other; the table names the CPU (lscpu's model name) because the ratios
move with it.
"""

from __future__ import annotations

import subprocess
import sys

from absl import app, flags

from xlit_jax.io.files import markdown_row, markdown_table
from xlit_jax.perf import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 4, "training rows per step")
flags.DEFINE_integer("seq_len", 256, "training tokens per row")
flags.DEFINE_integer("steps", 3, "timed training steps per engine")
flags.DEFINE_list("decode_batches", ["1", "16", "64"], "decoding batch sizes")
flags.DEFINE_integer("new_tokens", 64, "new tokens per prompt when decoding")
common.define_data_flag()
common.define_rows_flag("cpu")


def worker(module: str, *args: str) -> dict:
    """The row a perf worker prints (common.print_result)."""
    out = subprocess.run([sys.executable, "-m", f"xlit_jax.perf.{module}", *args], capture_output=True, text=True,
                         check=True).stdout
    return common.read_result(out)


def train_rate(engine: str, method: str) -> float:
    # MFU is not shown here: a fixed peak spares each worker measuring one.
    return worker("train_throughput", f"--worker={engine}:{method}", f"--batch={FLAGS.batch}",
                  f"--seq_len={FLAGS.seq_len}", f"--steps={FLAGS.steps}", "--peak_flops=1")["tokens_per_s"]


def decode_rate(engine: str, batch: str) -> float:
    return worker("decode_throughput", f"--worker={engine}:{batch}", f"--new_tokens={FLAGS.new_tokens}",
                  f"--data={FLAGS.data}")["tokens_per_s"]


def main(argv):
    del argv
    shape = f"{FLAGS.batch} x {FLAGS.seq_len}"
    cells = [(f"train step, full FT, {shape}", lambda engine: train_rate(engine, "ft")),
             (f"train step, LoRA r16, {shape}", lambda engine: train_rate(engine, "lora"))]
    cells += [(f"greedy decode, batch {b}, {FLAGS.new_tokens} new tokens", lambda engine, b=b: decode_rate(engine, b))
              for b in FLAGS.decode_batches]
    print(f"SmolLM2-135M-Instruct, fp32, on {common.cpu_model()}: tokens/s\n")
    print(markdown_table(["workload", "JAX", "PyTorch", "ratio"], []))
    rows = []
    for name, rate in cells:
        ours, theirs = rate("jax"), rate("torch")
        rows.append({"workload": name, "jax_tokens_per_s": ours, "torch_tokens_per_s": theirs})
        print(markdown_row([name, f"{ours:.1f}", f"{theirs:.1f}", f"{ours / theirs:.2f}x"]), flush=True)
    common.save_rows(rows)


if __name__ == "__main__":
    app.run(main)
