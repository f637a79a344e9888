"""xlit-serve under 1, 8 and 32 concurrent clients vs the same prompts through xlit-generate, same process.

    python -m xlit_jax.bench.serve_throughput --clients=1,8,32 --requests=32 --new_tokens=32

The server (our batching queue, uvicorn on loopback) and the `openai` clients run in this process; each
client thread sends its share of the requests one after another. `xlit-generate` is its generation stage
(`generate_to_jsonl`: tokenize, decode in batches of --batch_size, detokenize, append to a JSONL) on the
same model object. Every configuration runs --warmups times untimed (JAX compiles each shape once),
then is timed. Tokens/s counts completion tokens (up to EOS) over the wall time of all requests.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from absl import flags

from xlit_jax.bench import workloads
from xlit_jax.cli import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "model to serve")
flags.DEFINE_list("clients", ["1", "8", "32"], "concurrent clients")
flags.DEFINE_integer("requests", 32, "requests per measurement (the paper's first English instructions)")
flags.DEFINE_integer("new_tokens", 32, "max_tokens per request")
flags.DEFINE_float("repetition_penalty", 1.1, "as in the paper (sent as the server's extension field)")
flags.DEFINE_integer("max_batch", 32, "server --slots, and xlit-generate's --batch_size")
flags.DEFINE_integer("warmups", 2, "untimed runs of each configuration first (batches split differently "
                     "from run to run, so each split's shapes may need compiling)")
flags.DEFINE_string("data", "../shared/data", "shared data dir (the paper's prompts)")


def through_server(url: str, prompts, clients: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3600)

    def ask(messages):
        start = time.perf_counter()
        reply = client.chat.completions.create(
            model="bench", messages=messages, max_tokens=FLAGS.new_tokens, temperature=0,
            extra_body={"repetition_penalty": FLAGS.repetition_penalty})
        return time.perf_counter() - start, reply.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(ask, prompts))
    wall = time.perf_counter() - start
    latencies = sorted(seconds for seconds, _ in answers)
    return {"wall_s": wall, "tokens": sum(tokens for _, tokens in answers), "p50_s": statistics.median(latencies),
            "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]}


def through_xlit_generate(model, prompts) -> dict:
    from xlit_jax.decode.runner import generate_to_jsonl

    rows = [{"id": i, "prompt": p} for i, p in enumerate(prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = generate_to_jsonl(model, rows, f"{tmp}/out.jsonl", max_new_tokens=FLAGS.new_tokens,
                                repetition_penalty=FLAGS.repetition_penalty, batch_size=FLAGS.max_batch)
        wall = time.perf_counter() - start
    # new_tokens excludes EOS; the server counts it, as OpenAI does: add it where a row stopped early.
    tokens = sum(r["new_tokens"] + (r["new_tokens"] < FLAGS.new_tokens) for r in out)
    return {"wall_s": wall, "tokens": tokens, "p50_s": wall, "p95_s": wall}


def main(argv):
    del argv
    import xlit_jax
    from xlit_jax.serve.app import ServeConfig, create_app
    from xlit_jax.serve.server import serve_in_thread

    model = xlit_jax.load(FLAGS.model)
    prompts = workloads.paper_prompts(FLAGS.data, FLAGS.requests)
    rows = []
    through_xlit_generate(model, prompts)  # warm-up
    rows.append((f"xlit-generate (batch {FLAGS.max_batch})", through_xlit_generate(model, prompts)))
    config = ServeConfig(slots=FLAGS.max_batch, max_tokens=FLAGS.new_tokens)
    app_ = create_app(model, "bench", config)
    with serve_in_thread(app_) as url:
        for clients in map(int, FLAGS.clients):
            for _ in range(FLAGS.warmups):
                through_server(url, prompts, clients)
            calls = app_.state.worker.stats["decode_calls"]
            result = through_server(url, prompts, clients)
            result["batches"] = app_.state.worker.stats["decode_calls"] - calls
            rows.append((f"xlit-serve, {clients} clients", result))
    print(f"| engine ({FLAGS.requests} requests, max {FLAGS.new_tokens} new tokens) | requests/s | tokens/s "
          "| p50 latency s | p95 latency s | engine calls |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {FLAGS.requests / r['wall_s']:.2f} | {r['tokens'] / r['wall_s']:.1f} | "
              f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r.get('batches', '-')} |")


if __name__ == "__main__":
    run_main(main, "serve_throughput")
