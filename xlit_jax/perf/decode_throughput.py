"""Greedy decoding throughput: our JAX generate vs HF transformers `generate`, same prompts, same run.

    python -m xlit_jax.perf.decode_throughput --batch_sizes=1,16,64 --new_tokens=64
    python -m xlit_jax.perf.decode_throughput --engines=jax,torch --quantize=none,int8,nf4   # docs/quantization.md

Engines: `jax` (`Model.generate_ids` on token ids: the slot engine of decode/engine.py, --batch_sizes its
slots), `xlit-eval` (the generation stage of xlit-eval on the same prompts: chat template, tokenization,
decoding, detokenization and the keyed JSONL writes) and `torch` (transformers' `generate`, batches of
similar lengths); --quantize gives the jax engine a row per weight format (models/quantize.py). Each
(engine, batch size) runs in its own subprocess so that its peak RSS is its own. A first call with the same
shapes warms up (JAX compiles; torch allocates), then the median of --repeats timed calls counts
(perf.common.time_calls). Tokens/s counts the tokens each row generates up to its EOS, over the wall time of
the whole batch.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

import xlit_jax
from xlit_jax.evaluate import EvalConfig, Evaluation
from xlit_jax.io.files import markdown_table
from xlit_jax.io.gguf import smollm2_gguf_path
from xlit_jax.perf import common, workloads

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "model for both engines (the HF side loads the same GGUF)")
flags.DEFINE_list("batch_sizes", ["1", "16"], "batch sizes to measure")
flags.DEFINE_list("engines", ["jax", "xlit-eval", "torch"], "of jax, xlit-eval, torch")
flags.DEFINE_list("quantize", ["none"], "the jax engine's weights: none, int8, nf4, int4 (one row each)")
flags.DEFINE_integer("prompts", 0, "prompts per call for jax and torch (0: the batch size)")
flags.DEFINE_list("languages", ["en"], "languages of the paper's instructions, taken in turn")
flags.DEFINE_integer("new_tokens", 64, "max new tokens per prompt")
flags.DEFINE_float("repetition_penalty", 1.1, "as in the paper")
flags.DEFINE_integer("torch_threads", 2, "torch intra-op threads")
flags.DEFINE_integer("repeats", 3, "measured calls per cell after the warm-up (the median is reported)")
flags.DEFINE_integer("warmups", 1, "untimed calls first (JAX compiles in them; torch needs none on long runs)")
common.define_data_flag()
common.define_rows_flag("decode_throughput")
flags.DEFINE_string("worker", None, "internal: run one measurement as engine:batch_size and print JSON")


def load_timed(quantize: str = "none"):
    """(our model, seconds `xlit_jax.load` took)."""
    start = time.perf_counter()
    model = xlit_jax.load(FLAGS.model, quantize=quantize)
    return model, time.perf_counter() - start


def measure_jax(batch: int, quantize: str = "none") -> dict:
    model, load_s = load_timed(quantize)
    ids = [model.encode(p) for p in workloads.paper_prompts(FLAGS.data, FLAGS.prompts or batch, FLAGS.languages)]

    def run():
        return sum(map(len, model.generate_ids(ids, FLAGS.new_tokens, FLAGS.repetition_penalty, slots=batch)))

    return {"load_s": load_s, **timed(run)}


def measure_eval(batch: int) -> dict:
    """The first `batch` English items of the paper's set through xlit-eval's generation stage."""
    import tempfile

    model, load_s = load_timed()
    generated = []
    generate_ids = model.generate_ids

    def counting_generate_ids(*args, **kwargs):  # xlit-eval sees text; count the tokens behind it
        outputs = generate_ids(*args, **kwargs)
        generated.append(sum(map(len, outputs)))
        return outputs

    model.generate_ids = counting_generate_ids
    config = EvalConfig(eval_sets=("chirkova",), languages=("en",), limit=batch, data_dir=FLAGS.data, metrics=(),
                        max_new_tokens=FLAGS.new_tokens, repetition_penalty=FLAGS.repetition_penalty,
                        batch_size=batch)

    def run():
        generated.clear()
        with tempfile.TemporaryDirectory() as out_dir:
            Evaluation(out_dir, config).generate(model, model.name, {})
        return sum(generated)

    return {"load_s": load_s, **timed(run)}


def measure_torch(batch: int) -> dict:
    import torch  # optional (the `torch` extra): only the reference's worker imports it
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(FLAGS.torch_threads)
    start = time.perf_counter()
    path = smollm2_gguf_path() if FLAGS.model == "smollm2-135m" else None
    hf = (AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32) if path
          else AutoModelForCausalLM.from_pretrained(FLAGS.model, dtype=torch.float32)).eval()
    load_s = time.perf_counter() - start
    tokenizer = xlit_jax.load(FLAGS.model).tokenizer if path else None
    prompts = workloads.paper_prompts(FLAGS.data, FLAGS.prompts or batch, FLAGS.languages)
    encoded = sorted((tokenizer(tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True),
                                add_special_tokens=False).input_ids for p in prompts), key=len)
    eos = set(hf.generation_config.eos_token_id if isinstance(hf.generation_config.eos_token_id, list)
              else [hf.generation_config.eos_token_id])

    def generate(rows: list[list[int]]) -> int:
        width = max(map(len, rows))
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros_like(ids)
        for i, e in enumerate(rows):
            ids[i, width - len(e):], mask[i, width - len(e):] = e, 1
        with torch.no_grad():
            out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                              max_new_tokens=FLAGS.new_tokens, repetition_penalty=FLAGS.repetition_penalty,
                              pad_token_id=0)
        return sum(next((i for i, t in enumerate(row) if t in eos), len(row)) for row in out[:, width:].tolist())

    def run():  # batches of similar lengths: its padding is the longest prompt's of each
        return sum(generate(encoded[i:i + batch]) for i in range(0, len(encoded), batch))

    return {"load_s": load_s, **timed(run)}


def timed(run) -> dict:
    """Times `run` (which returns the number of tokens generated): a single call of batch 1 lasts about a
    second, so the median of --repeats (one noisy moment moved one call 20%)."""
    timing = common.time_calls(run, FLAGS.repeats, FLAGS.warmups)
    return {"first_call_s": timing.first_s, "seconds": timing.seconds, "tokens": timing.result,
            "tokens_per_s": timing.result / timing.seconds}


def worker(spec: str) -> None:
    engine, batch, quantize = spec.split(":")
    if engine == "jax":
        result = measure_jax(int(batch), quantize)
    else:
        result = {"xlit-eval": measure_eval, "torch": measure_torch}[engine](int(batch))
    result.update(engine=engine if quantize == "none" else f"{engine} {quantize}", batch=int(batch),
                  peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    common.print_result(result)


def main(argv):
    del argv
    if FLAGS.worker:
        return worker(FLAGS.worker)
    rows = []
    for batch in FLAGS.batch_sizes:
        for engine, quantize in [(e, q) for e in FLAGS.engines for q in (FLAGS.quantize if e == "jax" else ["none"])]:
            cmd = [sys.executable, "-m", "xlit_jax.perf.decode_throughput", f"--worker={engine}:{batch}:{quantize}",
                   f"--model={FLAGS.model}", f"--new_tokens={FLAGS.new_tokens}", f"--data={FLAGS.data}",
                   f"--repetition_penalty={FLAGS.repetition_penalty}", f"--torch_threads={FLAGS.torch_threads}",
                   f"--repeats={FLAGS.repeats}", f"--warmups={FLAGS.warmups}", f"--prompts={FLAGS.prompts}",
                   f"--languages={','.join(FLAGS.languages)}"]
            rows.append(common.read_result(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
    print(format_table(rows))
    common.save_rows(rows)


def format_table(rows: list[dict]) -> str:
    torch_rate = {r["batch"]: r["tokens_per_s"] for r in rows if r["engine"] == "torch"}
    header = ["batch", "engine", "load s", "first call s", "tokens", "tokens/s", "vs torch", "peak RSS GiB"]
    return markdown_table(header, [
        [r["batch"], r["engine"], f"{r['load_s']:.1f}", f"{r['first_call_s']:.1f}" if r["first_call_s"] else "-",
         r["tokens"], f"{r['tokens_per_s']:.1f}",
         f"{r['tokens_per_s'] / torch_rate[r['batch']]:.2f}x" if r["batch"] in torch_rate else "-",
         f"{r['peak_rss_gib']:.2f}"] for r in rows])


if __name__ == "__main__":
    app.run(main)
