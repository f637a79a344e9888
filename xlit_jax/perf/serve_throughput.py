"""xlit-serve under 1, 8 and 32 concurrent clients vs the same prompts through xlit-generate, same process.

    python -m xlit_jax.perf.serve_throughput --clients=1,8,32 --requests=32 --new_tokens=32
    python -m xlit_jax.perf.serve_throughput --clients=16,64 --requests=64 --languages=en,fr,pt,ru \\
        --new_tokens=128,16,64,32   # mixed prompt and answer lengths

The server (the slot engine, uvicorn on loopback) and the `openai` clients run in this process; each
client thread sends its share of the requests one after another. `xlit-generate` is its generation stage
(`generate_to_jsonl`: tokenize, decode through --max_batch engine slots, detokenize, append to a JSONL) on the
same model object. Every configuration runs --warmups times untimed (JAX compiles each shape once),
then is timed once (perf.common.time_calls). Tokens/s counts completion tokens (up to EOS) over the wall time of all
requests.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from absl import flags

import xlit_jax
from xlit_jax.cli import run_main
from xlit_jax.decode.engine import DECODE_STEPS
from xlit_jax.decode.to_jsonl import generate_to_jsonl
from xlit_jax.io.files import markdown_table
from xlit_jax.perf import common, workloads
from xlit_jax.serve.app import ServeConfig, create_app
from xlit_jax.serve.server import serve_in_thread

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "model to serve")
flags.DEFINE_list("clients", ["1", "8", "32"], "concurrent clients")
flags.DEFINE_integer("requests", 32, "requests per measurement (the paper's first instructions)")
flags.DEFINE_list("languages", ["en"], "languages of the paper's instructions, taken in turn (mixed prompt lengths)")
flags.DEFINE_list("new_tokens", ["32"], "max_tokens of request i: the i-th of these, cycled (mixed answer lengths)")
flags.DEFINE_float("repetition_penalty", 1.1, "as in the paper (sent as the server's extension field)")
flags.DEFINE_integer("max_batch", 32, "server --slots, and xlit-generate's --batch_size")
flags.DEFINE_integer("steps", DECODE_STEPS, "server --steps: decoding steps per engine call")
flags.DEFINE_integer("warmups", 2, "untimed runs of each configuration first (batches split differently "
                     "from run to run, so each split's shapes may need compiling)")
common.define_data_flag()
common.define_rows_flag("serve_throughput")


def budgets(n: int) -> list[int]:
    return [int(FLAGS.new_tokens[i % len(FLAGS.new_tokens)]) for i in range(n)]


def through_server(url: str, prompts, clients: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3600)

    def ask(messages, max_tokens):
        start = time.perf_counter()
        reply = client.chat.completions.create(
            model="bench", messages=messages, max_tokens=max_tokens, temperature=0,
            extra_body={"repetition_penalty": FLAGS.repetition_penalty})
        return time.perf_counter() - start, reply.usage.completion_tokens

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(ask, prompts, budgets(len(prompts))))
    latencies = sorted(seconds for seconds, _ in answers)
    return {"tokens": sum(tokens for _, tokens in answers), "p50_s": statistics.median(latencies),
            "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]}


def through_xlit_generate(model, prompts) -> dict:
    """One xlit-generate call per answer budget, as a user would run it."""
    tokens, asked = 0, budgets(len(prompts))
    for budget in sorted(set(asked)):
        rows = [{"id": i, "prompt": p} for i, (p, b) in enumerate(zip(prompts, asked)) if b == budget]
        with tempfile.TemporaryDirectory() as tmp:
            out = generate_to_jsonl(model, rows, f"{tmp}/out.jsonl", max_new_tokens=budget,
                                    repetition_penalty=FLAGS.repetition_penalty, slots=FLAGS.max_batch)
        # new_tokens excludes EOS; the server counts it, as OpenAI does: add it where a row stopped early.
        tokens += sum(r["new_tokens"] + (r["new_tokens"] < budget) for r in out)
    return {"tokens": tokens}


def timed(run, warmups: int) -> dict:
    """`run`'s row with the wall seconds of one call after `warmups` untimed ones."""
    timing = common.time_calls(run, 1, warmups)
    return {"wall_s": timing.seconds, "p50_s": timing.seconds, "p95_s": timing.seconds} | timing.result


def main(argv):
    del argv
    model = xlit_jax.load(FLAGS.model)
    prompts = workloads.paper_prompts(FLAGS.data, FLAGS.requests, FLAGS.languages)
    rows = [(f"xlit-generate (batch {FLAGS.max_batch})", timed(lambda: through_xlit_generate(model, prompts), 1))]
    config = ServeConfig(slots=FLAGS.max_batch, max_tokens=max(budgets(FLAGS.requests)), steps=FLAGS.steps)
    app_ = create_app(model, "bench", config)
    stats = app_.state.worker.stats
    with serve_in_thread(app_) as url:
        def served(clients: int) -> dict:
            before = stats["decode_calls"]
            return through_server(url, prompts, clients) | {"batches": stats["decode_calls"] - before}

        for clients in map(int, FLAGS.clients):
            rows.append((f"xlit-serve, {clients} clients", timed(lambda: served(clients), FLAGS.warmups)))
    header = [f"engine ({FLAGS.requests} requests, max {'/'.join(FLAGS.new_tokens)} new tokens)", "requests/s",
              "tokens/s", "p50 latency s", "p95 latency s", "engine calls"]
    print(markdown_table(header, [
        [name, f"{FLAGS.requests / r['wall_s']:.2f}", f"{r['tokens'] / r['wall_s']:.1f}", f"{r['p50_s']:.2f}",
         f"{r['p95_s']:.2f}", r.get("batches", "-")] for name, r in rows]))
    common.save_rows([{"engine": name, "requests": FLAGS.requests} | r for name, r in rows])


if __name__ == "__main__":
    run_main(main, "serve_throughput")
