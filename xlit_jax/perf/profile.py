"""Where a step's time goes: one traced call of the train step, or --new_tokens decoding steps of the engine,
their XLA ops grouped by what they compute.

    python -m xlit_jax.perf.profile --what=train --batch=4 --seq_len=256
    python -m xlit_jax.perf.profile --what=decode --batch=16 --new_tokens=64

The call runs once to compile, then once under `jax.profiler.trace`. Every executed op of the compiled
program is a trace event named after its HLO instruction; the instruction's `op_name` metadata (the JAX
source path, e.g. `.../layers/attn/q/dot_general`, `transpose(jvp(...))` for the backward pass) says which
part of the model it belongs to. Times are the ops' own durations summed per group.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import xlit_jax
from xlit_jax.decode.engine import lower_programs
from xlit_jax.io.files import markdown_table
from xlit_jax.perf import common
from xlit_jax.perf.workloads import device_batch, jax_train_step, paper_prompts

FLAGS = flags.FLAGS
flags.DEFINE_enum("what", "train", ["train", "decode"], "the train step (full FT or LoRA) or decoding steps")
flags.DEFINE_string("model", "smollm2-135m", "model source")
flags.DEFINE_enum("method", "ft", ["ft", "lora"], "train: full fine-tuning or LoRA")
flags.DEFINE_integer("batch", 4, "rows")
flags.DEFINE_integer("seq_len", 256, "train: tokens per row")
flags.DEFINE_integer("new_tokens", 64, "decode: new tokens per prompt")
common.define_data_flag()

# (group, pattern on op_name), first match wins. Order: the specific before the general.
GROUPS = (
    ("scan: weight/cache slices", r"dynamic_(update_)?(index_in_dim|slice)|/while/body/closed_call$"),
    ("attention projections q/k/v/o", r"/layers/attn/[qkvo]/"),
    ("attention (rope, scores, softmax)", r"/layers/attn/"),
    ("MLP", r"/layers/mlp/"),
    ("norms", r"_norm/"),
    ("other in the layer stack", r"/layers/"),
    ("embedding + output layer", r"Llama"),
    ("optimizer update", r"^jit\(train_step\)/(?!while/body)"),
    ("loss / sampling", r"/while/body/"),
)
INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = .*?\b([\w-]+)\(.*?op_name="([^"]*)"')


def op_names(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (opcode, op_name metadata) for every instruction that carries metadata."""
    found = {}
    for line in hlo_text.splitlines():
        match = INSTRUCTION.match(line)
        if match:
            found[match.group(1)] = (match.group(2), match.group(3))
    return found


def group_of(op_name: str) -> str:
    return next((group for group, pattern in GROUPS if re.search(pattern, op_name)), "other")


def traced_op_times(call) -> dict[str, float]:
    """Seconds per trace-event name over one call of `call` under the profiler."""
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            call()
        path = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    times = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            times[event["name"]] += event["dur"] / 1e6
    return times


def breakdown(call, hlo_text: str) -> tuple[float, list[tuple[str, float, bool]]]:
    """(wall seconds of one traced call, [(group, seconds, is backward)]) for the compiled program's ops.
    Control-flow ops (while, call, conditional) are left out: their bodies' ops are counted themselves."""
    names = op_names(hlo_text)
    start = time.perf_counter()
    times = traced_op_times(call)
    wall = time.perf_counter() - start
    rows = collections.Counter()
    for name, seconds in times.items():
        if name in names and names[name][0] not in ("while", "call", "conditional"):
            op_name = names[name][1]
            rows[(group_of(op_name), "transpose(" in op_name)] += seconds
    return wall, [(group, seconds, backward) for (group, backward), seconds in rows.most_common()]


def train_call():
    """(a no-argument function running one train step, the compiled program's text)."""
    train_step, run = jax_train_step(FLAGS.model, FLAGS.method, FLAGS.batch, FLAGS.seq_len)
    return run, train_step.lower(device_batch(train_step, FLAGS.batch, FLAGS.seq_len)).compile().as_text()


def decode_call():
    """(a no-argument function running --new_tokens decoding calls of the engine's --batch slots, all live, over
    a cache sized for the paper's first --batch prompts, the decoding program's text)."""
    model = xlit_jax.load(FLAGS.model)
    longest = max(len(model.encode(p)) for p in paper_prompts(FLAGS.data, FLAGS.batch))
    lowered, shapes = lower_programs(model.params, model.config, FLAGS.batch, longest, FLAGS.new_tokens,
                                     jax.ShapeDtypeStruct)
    step = lowered["step"].compile()
    state = [jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)]
    live, eos = np.ones(FLAGS.batch, bool), jnp.asarray(model.config.eos_token_ids, jnp.int32)

    def call():
        for _ in range(FLAGS.new_tokens):
            state[0], tokens, _ = step(model.params, state[0], live, eos)
        jax.block_until_ready(tokens)

    return call, step.as_text()


def main(argv):
    del argv
    call, text = (train_call if FLAGS.what == "train" else decode_call)()
    call()  # compile and warm up
    wall, rows = breakdown(call, text)
    total = sum(seconds for _, seconds, _ in rows)
    print(f"{FLAGS.what}: one call {wall:.2f} s wall (traced), ops {total:.2f} s\n")
    print(markdown_table(["group", "pass", "seconds", "share"], [
        [group, "backward" if backward else "forward", f"{seconds:.3f}", f"{seconds / total:.1%}"]
        for group, seconds, backward in rows]))


if __name__ == "__main__":
    app.run(main)
