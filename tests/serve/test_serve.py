"""xlit-serve through the real `openai` client on loopback: schema, the engine's slots, streaming, sampling,
stops, bad and huge requests, disconnects, and the evaluation's judges pointed at it."""

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
from fastapi import FastAPI

import xlit_jax
from xlit_jax.decode import loglik
from xlit_jax.serve.app import BodyLimit, ServeConfig, create_app
from xlit_jax.serve.limits import Limits
from xlit_jax.serve.server import serve_in_thread

from support import REPO, harness_tasks

KEY = "sk-serve-test-2b7d-do-not-log"
CHAT = [{"role": "user", "content": "Name three colours."}]


pytestmark = pytest.mark.usefixtures("loopback_only")


@pytest.fixture(scope="module")
def tiny(tok):
    """Random tiny weights behind SmolLM2's tokenizer: fast, and the model does not matter here."""
    model = xlit_jax.load("preset:tiny", vocab_size=49152, eos_token_ids=(2,), pad_token_id=2)
    model.tokenizer = tok
    return model


@pytest.fixture(scope="module")
def served(tiny):
    app = create_app(tiny, "tiny", ServeConfig(slots=8, max_tokens=64, max_body_bytes=1 << 20,
                                             max_request_tokens=1 << 16))
    with serve_in_thread(app) as url:
        yield url, app.state.worker


def client(url, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def test_chat_and_completion_are_greedy_generate_in_openai_schema(served, tiny):
    url, _ = served
    chat = client(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0)
    prompt_ids = tiny.encode(CHAT)
    [expected] = tiny.generate_ids([prompt_ids], 8)
    assert chat.choices[0].message.content == tiny.tokenizer.decode(expected, skip_special_tokens=True)
    assert chat.choices[0].finish_reason == "length" and chat.object == "chat.completion"
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (len(prompt_ids), 8)
    text = client(url).completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0)
    [expected] = tiny.generate_ids([tiny.encode("Once upon a time")], 5)
    assert text.choices[0].text == tiny.tokenizer.decode(expected, skip_special_tokens=True)
    assert text.usage.total_tokens == len(tiny.encode("Once upon a time")) + 5
    assert [m.id for m in client(url).models.list()] == ["tiny"]


def test_stop_sequence_cuts_the_text_and_counts_the_tokens_generated(served, tiny):
    url, _ = served
    full = client(url).completions.create(model="tiny", prompt="Hello", max_tokens=24, temperature=0).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    reply = client(url).completions.create(model="tiny", prompt="Hello", max_tokens=24, temperature=0,
                                           stop=[stop, "never-there"])
    assert reply.choices[0].text == full[:full.find(stop)] and reply.choices[0].finish_reason == "stop"
    [ids] = tiny.generate_ids([tiny.encode("Hello")], 24)
    used = reply.usage.completion_tokens
    assert stop in tiny.tokenizer.decode(ids[:used]) and stop not in tiny.tokenizer.decode(ids[:used - 1])


def test_seeded_sampling_is_the_same_whatever_runs_beside_it(served):
    url, worker = served

    def ask(prompt, seed, temperature=1.0):
        return client(url).completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=temperature,
                                              top_p=0.9, seed=seed).choices[0].text

    alone = ask("The weather today", 7)
    assert ask("The weather today", 7) == alone and ask("The weather today", 8) != alone
    with ThreadPoolExecutor(8) as pool:
        crowd = list(pool.map(ask, ["The weather today"] + [f"Other prompt {i}" for i in range(7)],
                              [7] + list(range(100, 107)), [1.0] + [0.0, 0.5] * 3 + [1.0]))
    assert crowd[0] == alone
    assert worker.stats["most_running"] > 1


def test_32_concurrent_clients_get_their_one_by_one_answers_through_the_slots(served):
    url, worker = served
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(32)]

    def ask(prompt):
        messages = [{"role": "user", "content": prompt}]
        return client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                                   temperature=0).choices[0].message.content

    one_by_one = [ask(p) for p in prompts]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, prompts))
    assert together == one_by_one
    assert worker.stats["most_running"] == 8  # every slot busy, the rest queued


def post(url, body: bytes, headers=None):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read()), reply.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(served):
    url, _ = served
    good = {"model": "tiny", "prompt": "Hi", "max_tokens": 2, "temperature": 0}
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "the body"),
        (json.dumps({"model": "tiny"}).encode(), 400, "field 'prompt': Field required"),
        (json.dumps({**good, "model": "gpt-4"}).encode(), 404, "'gpt-4' does not exist"),
        (json.dumps({**good, "prompt": "word " * 600}).encode(), 400, "exceeds the model's 512 positions"),
        (json.dumps({"model": "tiny", "prompt": "word " * 600}).encode(), 400, "exceeds the model's 512 positions"),
        (json.dumps({**good, "max_tokens": 0}).encode(), 400, "max_tokens=0 is outside 1..64 (0, with echo"),
        (json.dumps({**good, "max_tokens": 65}).encode(), 400, "max_tokens=65 is outside 1..64"),
        (json.dumps({**good, "n": 1000}).encode(), 400, "field 'n'"),
        (json.dumps({**good, "temperature": -1}).encode(), 400, "field 'temperature'"),
        (json.dumps({**good, "prompt": ""}).encode(), 400, "the prompt is empty"),
    ]
    for body, status, message in cases:
        got, error, _ = post(f"{url}/completions", body)
        assert got == status and message in error["error"]["message"], (body, error)
        assert set(error["error"]) == {"message", "type", "param", "code"}
        assert post(f"{url}/completions", json.dumps(good).encode())[0] == 200
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="nope", messages=CHAT)
    # A client that gives up mid-request: its answer is dropped, the server goes on.
    with pytest.raises(openai.APITimeoutError):
        client(url, timeout=0.05).completions.create(model="tiny", prompt="Slow", max_tokens=64, temperature=0)
    assert client(url).completions.create(model="tiny", prompt="Hi", max_tokens=2).choices[0].text is not None


def test_an_error_inside_the_engine_loop_fails_its_request_only_and_a_dead_loop_says_so(tiny):
    """A request the engine refuses at admission is answered 400 and the loop serves on; when the loop cannot go
    on (a failed decoding call whose fresh engine cannot be built), /health answers 503, requests get 503,
    and on_failure runs (xlit-serve exits non-zero there)."""
    failures = []
    app = create_app(tiny, "tiny", ServeConfig(slots=2, max_tokens=8, max_len=128),
                     on_failure=lambda: failures.append(1))
    worker = app.state.worker
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 2, "temperature": 0}).encode()
    with serve_in_thread(app) as url:
        submit = worker.engine.submit
        worker.engine.submit = lambda request: (_ for _ in ()).throw(ValueError("a request needs a prompt"))
        status, error, _ = post(f"{url}/completions", body)
        assert status == 400 and "a request needs a prompt" in error["error"]["message"]
        worker.engine.submit = submit
        assert post(f"{url}/completions", body)[0] == 200
        worker.engine.run_once = lambda: 1 / 0
        worker._new_engine = lambda: (_ for _ in ()).throw(MemoryError("no room for a cache"))
        assert post(f"{url}/completions", body)[0] == 500  # the failed call's own request
        for _ in range(100):  # the thread records its failure just after answering that request
            if worker.failure:
                break
            time.sleep(0.01)
        health = urllib.request.Request(f"{url.removesuffix('/v1')}/health")
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(health, timeout=10)
        assert answer.value.code == 503 and "MemoryError" in json.loads(answer.value.read())["error"]
        status, error, _ = post(f"{url}/completions", body)
        assert status == 503 and error["error"]["code"] == "engine_stopped"
    assert failures == [1]


def test_full_queue_answers_429_with_retry_after(tiny):
    app = create_app(tiny, "tiny", ServeConfig(slots=1, max_queue=1, max_tokens=64, max_len=128))
    with serve_in_thread(app) as url:
        body = json.dumps({"model": "tiny", "prompt": "Busy", "max_tokens": 64, "temperature": 0}).encode()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(f"{url}/completions", body), range(8)))
        refused = [(error, headers) for status, error, headers in answers if status == 429]
        assert refused and all(status in (200, 429) for status, _, _ in answers)
        assert refused[0][1]["Retry-After"] == "1" and refused[0][0]["error"]["code"] == "queue_full"
        assert post(f"{url}/completions", body)[0] == 200


def test_api_key_is_required_and_never_logged(tiny, caplog):
    app = create_app(tiny, "tiny", ServeConfig(slots=2, max_tokens=8, max_len=128, api_key=KEY))
    with serve_in_thread(app) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key="wrong").models.list()
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key=KEY + "x").completions.create(model="tiny", prompt="Hi", max_tokens=2)
        assert client(url, api_key=KEY).completions.create(model="tiny", prompt="Hi", max_tokens=2).usage
        assert urllib.request.urlopen(url.removesuffix("/v1") + "/health").status == 200
    assert KEY not in caplog.text


@pytest.mark.slow  # ~20-40 s: CI runs it (.ci/run), make test does not, to stay under 10 minutes
def test_eval_binary_runs_both_judges_against_the_server(served, tiny, tmp_path, shared_data):
    """xlit-eval generates with a small model, then asks the server as the paper's judge (whose answers,
    from random weights, are no judgement: recorded as errors) and as the relevance judge."""
    from xlit_jax.io.hf import save_hf_dir

    url, worker = served
    model_dir = save_hf_dir(tiny.config, tiny.params, tmp_path / "tiny_hf", tokenizer=tiny.tokenizer)
    requests = worker.stats["requests"]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "launch.evaluate", f"--model={model_dir}", "--languages=en", "--limit=2",
         "--max_new_tokens=4", "--metrics=judge,relevance", "--judge_model=tiny", f"--judge_base_url={url}",
         "--judge_attempts=1", f"--relevance_judge={url}", "--relevance_max_new_tokens=4",
         f"--data_dir={shared_data}", f"--out_dir={tmp_path / 'eval'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = [json.loads(line) for line in (tmp_path / "eval" / "item_scores.jsonl").read_text().splitlines()]
    judged = [s for s in scores if s["scorer"] == "judge"]
    relevance = [s for s in scores if s["scorer"] == "relevance"]
    assert len(judged) == len(relevance) == 2
    assert all("no usable answer" in s["error"] for s in judged)
    assert all(isinstance(s["details"]["judge_answer"], str) for s in relevance)
    assert worker.stats["requests"] - requests == 4


@pytest.mark.manual
def test_smollm2_greedy_answers_equal_xlit_generate(smollm2, tmp_path):
    questions = ["What is the capital of France?", "Give me a synonym for happy.", "Write a haiku about rain."]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": [{"role": "user", "content": q}]}) + "\n"
                               for i, q in enumerate(questions)))
    done = subprocess.run([sys.executable, "-m", "launch.generate", f"--prompts={prompts}",
                           f"--out={tmp_path / 'out.jsonl'}", "--max_new_tokens=24", "--repetition_penalty=1.1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    generated = {r["id"]: r["output"] for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    with serve_in_thread(create_app(smollm2, "smollm2", ServeConfig(slots=4))) as url:
        def ask(question):
            return client(url).chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0,
                extra_body={"repetition_penalty": 1.1}).choices[0].message.content

        with ThreadPoolExecutor(3) as pool:
            served_answers = list(pool.map(ask, questions))
    assert served_answers == [generated[i] for i in range(len(questions))]


def test_streamed_chat_and_completion_are_the_whole_answer_with_usage_last(served, tiny):
    url, _ = served
    stream = client(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=24, temperature=0,
                                                 stream=True)
    chunks = list(stream)
    whole = client(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=24, temperature=0)
    assert len(chunks) > 2 and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and chunks[0].usage is None
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"
    full = client(url).completions.create(model="tiny", prompt="Hello", max_tokens=24, temperature=0).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    pieces = list(client(url).completions.create(model="tiny", prompt="Hello", max_tokens=24, temperature=0,
                                                 stop=[stop], stream=True))
    assert "".join(p.choices[0].text for p in pieces) == full[:full.find(stop)]
    assert pieces[-1].choices[0].finish_reason == "stop" and pieces[-1].usage.prompt_tokens > 0


def test_a_client_that_disconnects_frees_its_slot(tiny):
    # 64 slots: every step computes them all, so 400 tokens take seconds, not the 0.5 s the client waits
    app = create_app(tiny, "tiny", ServeConfig(slots=64, max_tokens=400, max_len=448, steps=1))
    worker = app.state.worker
    with serve_in_thread(app) as url:
        for stream in (True, False):
            body = json.dumps({"model": "tiny", "prompt": "Go on", "max_tokens": 400, "temperature": 0,
                               "stream": stream}).encode()
            request = urllib.request.Request(f"{url}/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            if stream:
                with urllib.request.urlopen(request, timeout=60) as reply:
                    assert reply.readline().startswith(b"data: {")  # decoding has begun; hang up
            else:
                with pytest.raises((urllib.error.URLError, TimeoutError)):
                    urllib.request.urlopen(request, timeout=0.5)
            deadline = time.monotonic() + 20
            while worker.stats["cancelled"] < (1 if stream else 2) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert worker.stats["cancelled"] == (1 if stream else 2)
            assert client(url).completions.create(model="tiny", prompt="Next", max_tokens=3).usage.completion_tokens


def test_huge_bodies_are_refused_413_and_huge_prompts_before_they_are_tokenized(served):
    url, worker = served
    # 32 MiB: more than loopback's socket buffers take, so the server must read it to the end (and drop it)
    # for the client, still sending, to get the answer rather than a reset connection
    status, error, _ = post(f"{url}/completions", b'{"model": "tiny", "prompt": "' + b"x" * (32 << 20) + b'"}')
    assert status == 413 and "at most 1048576" in error["error"]["message"]
    # 1 MB of text cannot be 512 tokens of SmolLM2's (its longest token has 81 characters): refused by its length
    # ("the prompt has N characters"), not after a long tokenization ("the prompt has N tokens")
    words = "word " * 200_000
    chat = {"model": "tiny", "messages": [{"role": "user", "content": words}]}
    for path, body in (("completions", {"model": "tiny", "prompt": words}), ("chat/completions", chat)):
        status, error, _ = post(f"{url}/{path}", json.dumps(body).encode())
        assert status == 400 and error["error"]["code"] == "context_length_exceeded", error
        assert "the prompt has 1000000 characters: more than the model's 512 positions" in error["error"]["message"]
    assert worker.queued() == 0


def test_large_bodies_that_arrive_together_are_parsed_in_separate_turns_of_the_event_loop():
    """8 bodies of 1 MB complete at once: each app step after its last read (where FastAPI parses the JSON) runs
    in its own turn of the loop and is followed by a pause as long, so a /health waits behind one parse at most
    and the flood takes half the loop at most; small bodies are not held."""

    async def scenario():
        turn, arrived, parsed = 0, asyncio.Event(), []

        async def ticker():
            nonlocal turn
            while True:
                turn += 1
                await asyncio.sleep(0)

        async def app(scope, receive, send):
            while (await receive()).get("more_body"):
                pass
            parsed.append((scope["size"], turn, time.perf_counter()))  # the parse, in the step of the last read
            time.sleep(0.01 if scope["size"] > 1 << 10 else 0)

        def request(size):
            chunks = [{"type": "http.request", "body": b"x" * (size // 2), "more_body": more} for more in (True, False)]

            async def receive():
                if not chunks[0]["more_body"]:
                    await arrived.wait()
                return chunks.pop(0)

            headers = [(b"content-length", str(size).encode())]
            return {"type": "http", "headers": headers, "size": size}, receive

        ticking = asyncio.create_task(ticker())
        limit = BodyLimit(app, limit=4 << 20)
        requests = [request(1 << 20) for _ in range(8)] + [request(1 << 10) for _ in range(8)]
        tasks = [asyncio.create_task(limit(scope, receive, None)) for scope, receive in requests]
        await asyncio.sleep(0)
        arrived.set()
        await asyncio.gather(*tasks)
        ticking.cancel()
        return parsed

    parsed = asyncio.run(scenario())
    large = [turn for size, turn, _ in parsed if size == 1 << 20]
    small = [turn for size, turn, _ in parsed if size == 1 << 10]
    assert len(large) == 8 and len(set(large)) == 8, parsed  # one parse per turn
    assert len(set(small)) == 1 and min(small) <= min(large), parsed  # the small ones all in the first turn
    starts = [start for size, _, start in parsed if size == 1 << 20]
    assert min(np.diff(starts)) >= 0.02, starts  # each 10 ms parse followed by as long a pause: half the loop


def test_the_queue_limit_counts_only_requests_waiting_for_a_slot(served, monkeypatch):
    """--max_queue=2 and 6 requests at once with 8 slots free: none is refused (they counted as queued until
    the engine's thread moved them into slots)."""
    url, worker = served
    monkeypatch.setattr(worker, "_max_queue", 2)
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 2, "temperature": 0}).encode()
    for _ in range(2):
        with ThreadPoolExecutor(6) as pool:
            statuses = [status for status, _, _ in pool.map(lambda _: post(f"{url}/completions", body), range(6))]
        assert statuses == [200] * 6


def raw_request(url: str, request: bytes, timeout: float = 10) -> bytes:
    """Send `request` as is (headers in any bytes) and read the answer to its end."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        return read_all(sock)


def read_all(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body.startswith(b"{") else {}


NON_ASCII_KEY = "clé-ключ-鍵"


def test_host_names_and_the_key_are_checked_first_on_every_path_but_health(tiny):
    """DNS rebinding: another Host is 421 (even with the key). With a key: the docs and malformed JSON are 401
    without it, before the body is parsed; a non-ASCII key sent as UTF-8 matches; /health says only ok. Query
    strings never reach the access log."""
    app = create_app(tiny, "tiny", ServeConfig(slots=2, max_tokens=8, max_len=128, api_key=NON_ASCII_KEY))
    key = b"Authorization: Bearer " + NON_ASCII_KEY.encode() + b"\r\n"

    def ask(method: str, path: str, headers: bytes = b"", body: bytes = b"", host: bytes = b"127.0.0.1"):
        head = f"{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n".encode()
        return answer(raw_request(url, head + b"Host: " + host + b"\r\n" + headers + b"\r\n" + body))

    with serve_in_thread(app) as url:
        status, error = ask("GET", "/v1/models", key, host=b"rebound.example.com:8000")
        assert status == 421 and error["error"]["code"] == "host_not_allowed"
        for host in (b"localhost:1", b"[::1]"):
            assert ask("GET", "/v1/models", key, host=host)[0] == 200
        for path in ("/docs", "/openapi.json", "/v1/models"):
            assert ask("GET", path)[0] == 401 and ask("GET", path, key)[0] == 200, path
        status, error = ask("POST", "/v1/completions", b"Content-Type: application/json\r\n", b"{not json")
        assert status == 401 and error["error"]["code"] == "invalid_api_key"
        assert ask("POST", "/v1/completions", b"Authorization: Bearer " + NON_ASCII_KEY.encode("latin-1", "replace")
                   + b"\r\n", b"{}")[0] == 401
        assert ask("GET", "/health") == (200, {"status": "ok"}) and "model" in ask("GET", "/health", key)[1]
    access = logging.getLogger("uvicorn.access")  # create_app filtered it; uvicorn logs the path with its query
    record = access.makeRecord(access.name, logging.INFO, __file__, 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/v1/models?api_key={KEY}", "1.1", 401), None)
    assert access.filter(record) and record.getMessage() == '127.0.0.1:5 - "GET /v1/models HTTP/1.1" 401'


def test_idle_connections_late_requests_and_surplus_connections_are_closed_and_the_cap_is_logged(caplog):
    """A connection that sends nothing is closed after idle_timeout; headers sent a byte at a time get 408
    after request_timeout; past max_connections a new connection gets 503 and a log line, and once the idle
    ones are closed the server answers again."""
    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
    limits = Limits(max_connections=4, idle_timeout=0.5, request_timeout=1.0)
    with serve_in_thread(app, limits=limits) as url:
        base = url.removesuffix("/v1")
        host, port = base.split("//")[1].split(":")
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(4)]
        time.sleep(0.1)
        status, error = answer(raw_request(url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
        assert status == 503 and error["error"]["code"] == "too_many_connections"
        assert "4 connections are open, the limit" in caplog.text
        start = time.monotonic()
        assert [read_all(sock) for sock in idle] == [b""] * 4  # closed by the server
        assert time.monotonic() - start < 2
        with socket.create_connection((host, int(port)), timeout=5) as slow:
            start = time.monotonic()
            try:
                for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n":  # 1.5 s of it
                    slow.send(bytes([byte]))
                    time.sleep(0.04)
            except OSError:  # closed while still sending
                pass
            status, error = answer(read_all(slow))
        assert status == 408 and 0.9 < time.monotonic() - start < 3
        assert urllib.request.urlopen(base + "/health", timeout=5).status == 200
        for sock in idle:
            sock.close()


def completion(url, **body):
    status, answer_, _ = post(f"{url}/completions", json.dumps({"model": "tiny", **body}).encode())
    assert status == 200, answer_
    return answer_


def test_prompts_in_every_form_give_one_choice_each_in_order(served, tiny):
    """A string, strings, token ids, lists of token ids: choice i * n + j is prompt i's j-th; greedy text equals
    generate_ids; the usage counts each prompt once."""
    url, _ = served
    texts = ["Once upon a time", "The capital of France", "1, 2, 3,"]
    ids = [tiny.encode(t) for t in texts]
    expected = [tiny.tokenizer.decode(o, skip_special_tokens=True) for o in tiny.generate_ids(ids, 4)]
    for prompt in (texts, ids):
        reply = completion(url, prompt=prompt, max_tokens=4, temperature=0)
        assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
        assert [c["text"] for c in reply["choices"]] == expected
        assert reply["usage"] == {"prompt_tokens": sum(map(len, ids)), "completion_tokens": 12, "total_tokens":
                                  sum(map(len, ids)) + 12}
    assert completion(url, prompt=ids[1], max_tokens=4, temperature=0)["choices"][0]["text"] == expected[1]
    reply = completion(url, prompt=texts[:2], max_tokens=4, temperature=0, n=2)
    assert [c["text"] for c in reply["choices"]] == [expected[0]] * 2 + [expected[1]] * 2
    sampled = completion(url, prompt=texts[0], max_tokens=8, temperature=1.0, n=3, seed=11)
    assert len({c["text"] for c in sampled["choices"]}) == 3  # n samples, each its own seed (seed + j)
    again = completion(url, prompt=texts[0], max_tokens=8, temperature=1.0, n=3, seed=11)
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in sampled["choices"]]


def test_echo_and_logprobs_are_the_scoring_pass_and_agree_with_loglikelihood(served, tiny):
    """lm-evaluation-harness's request (token ids, echo, logprobs 1, max_tokens 1, temperature 0): the prompt's
    tokens with null first, their log-probs summing to loglikelihood_ids's value over any continuation, top-1
    dicts whose max equals the token's log-prob where it is the greedy one, and the one generated token, the
    engine's greedy token."""
    url, _ = served
    context, continuation = tiny.encode("The weather today is"), tiny.encode(" sunny and warm")
    sequence = context + continuation
    reply = completion(url, prompt=[sequence], max_tokens=1, temperature=0, echo=True, logprobs=1)
    [choice] = reply["choices"]
    logprobs = choice["logprobs"]
    [[greedy]] = tiny.generate_ids([sequence], 1)
    assert logprobs["tokens"] == [tiny.tokenizer.decode([t]) for t in sequence + [greedy]]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert choice["text"] == tiny.tokenizer.decode(sequence) + tiny.tokenizer.decode([greedy])
    assert logprobs["text_offset"][:2] == [0, len(logprobs["tokens"][0])]
    [(expected, is_greedy)] = loglik.loglikelihood_ids(tiny.params, tiny.config, [(context, continuation)])
    scored = logprobs["token_logprobs"][len(context):-1]
    assert abs(sum(scored) - expected) <= 1e-4
    tops = logprobs["top_logprobs"][len(context):-1]
    assert all(len(top) in (1, 2) for top in tops)  # the top-1, and the token itself when it is another
    assert is_greedy == all(value == max(top.values()) for value, top in zip(scored, tops))
    assert logprobs["token_logprobs"][-1] == max(logprobs["top_logprobs"][-1].values())  # the greedy token
    assert reply["usage"]["completion_tokens"] == 1
    # generated tokens' log-probs (no echo): those of the scoring pass over prompt + output, top-k sorted
    reply = completion(url, prompt="Hello", max_tokens=5, temperature=0, logprobs=3)
    logprobs = reply["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == 5 and all(len(top) == 3 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == len("Hello")
    for value, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert value == max(top.values())  # greedy: each token is its position's top-1
    # max_tokens 0 with echo: the prompt scored, nothing generated; without logprobs, the prompt echoed
    reply = completion(url, prompt=["a b c", "d e"], max_tokens=0, echo=True, logprobs=0)
    assert [c["text"] for c in reply["choices"]] == ["a b c", "d e"] and reply["usage"]["completion_tokens"] == 0
    assert [len(c["logprobs"]["tokens"]) for c in reply["choices"]] == [len(tiny.encode(t)) for t in ("a b c", "d e")]
    reply = completion(url, prompt="x y", max_tokens=0, echo=True)
    assert reply["choices"][0]["text"] == "x y" and reply["choices"][0]["logprobs"] is None


def test_chat_logprobs_in_openai_chat_shape(served, tiny):
    url, _ = served
    reply = client(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, temperature=0,
                                                logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == 4 and "".join(c.token for c in content) == reply.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob == entry.logprob  # greedy
        assert entry.bytes == list(entry.token.encode())
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    plain = client(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, temperature=0,
                                                logprobs=True)
    assert [c.top_logprobs for c in plain.choices[0].logprobs.content] == [[]] * 4
    assert client(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=2).choices[0].logprobs is None


def test_hostile_completion_requests_are_refused_400_and_the_server_serves_on(served):
    url, worker = served
    good = {"model": "tiny", "prompt": "Hi", "max_tokens": 2, "temperature": 0}
    cases = [
        ({"prompt": []}, "prompt: an empty list"),
        ({"prompt": [[]]}, "prompt[0]: not a non-empty list of token ids"),
        ({"prompt": [1, "a"]}, "one kind, not mixed"),
        ({"prompt": [[1], "a"]}, "one kind, not mixed"),
        ({"prompt": [True, 2]}, "one kind, not mixed"),
        ({"prompt": [1.5]}, "one kind, not mixed"),
        ({"prompt": {"a": 1}}, "field 'prompt"),
        ({"prompt": [-1, 5]}, "token id -1 is outside the vocabulary (0..49151)"),
        ({"prompt": [[5], [49152]]}, "prompt[1]: token id 49152 is outside the vocabulary"),
        ({"prompt": [7] * 300_000}, "prompt has 300000 tokens: more than the model's 512 positions"),
        ({"prompt": [[7]] * 257}, "257 prompts; at most 256"),
        ({"prompt": ["a"] * 100, "n": 3}, "100 prompts x n=3 = 300 choices; at most 256"),
        ({"prompt": "Hi", "n": 1000}, "field 'n'"),
        ({"prompt": "Hi", "n": 0}, "field 'n'"),
        ({"logprobs": 1_000_000}, "field 'logprobs'"),
        ({"logprobs": -1}, "field 'logprobs'"),
        ({"logprobs": True}, "field 'logprobs'"),
        ({"echo": "yes"}, "field 'echo'"),
        ({"max_tokens": 0}, "max_tokens=0 is outside 1..64"),
        ({"max_tokens": -1, "echo": True}, "max_tokens=-1 is outside 0..64"),
        ({"prompt": ["word " * 460] * 2, "max_tokens": 64, "n": 2}, "that exceeds the model's 512 positions"),
        ({"prompt": [[7] * 500] * 200, "echo": True, "max_tokens": 0, "logprobs": 1}, "at most 65536"),
        ({"stream": True, "n": 2}, "stream: one prompt, n=1"),
        ({"stream": True, "echo": True}, "stream: one prompt, n=1"),
        ({"stream": True, "logprobs": 0}, "stream: one prompt, n=1"),
        ({"model": "other", "prompt": [5]}, "does not exist"),
        ({"logit_bias": {"5": 100}}, "field 'logit_bias': not supported by this server: leave it out or send {}"),
        ({"presence_penalty": 0.5}, "field 'presence_penalty': not supported by this server"),
        ({"best_of": 3}, "field 'best_of': not supported"),
        ({"suffix": "end"}, "field 'suffix': not supported"),
    ]
    for change, message in cases:
        status, error, _ = post(f"{url}/completions", json.dumps({**good, **change}).encode())
        assert 400 <= status < 500 and message in error["error"]["message"], (change, error)
        assert set(error["error"]) == {"message", "type", "param", "code"}
    chat = {"model": "tiny", "messages": CHAT, "max_tokens": 2}
    for change, message in (({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
                            ({"logprobs": True, "top_logprobs": 21}, "field 'top_logprobs'"),
                            ({"logprobs": 1}, "field 'logprobs'"),
                            ({"logprobs": True, "stream": True}, "stream: one prompt, n=1")):
        status, error, _ = post(f"{url}/chat/completions", json.dumps({**chat, **change}).encode())
        assert status == 400 and message in error["error"]["message"], (change, error)
    neutral = {"logit_bias": {}, "presence_penalty": 0.0, "frequency_penalty": 0, "best_of": 1, "user": "u"}
    answer = completion(url, **{k: v for k, v in good.items() if k != "model"}, **neutral)
    assert answer["choices"][0]["text"] is not None
    assert worker.queued() == 0


def test_vllm_tokenizer_endpoints_serve_lm_evals_remote_tokenizer(served, tiny):
    url, _ = served
    base = url.removesuffix("/v1")
    body = {"prompt": "Hello world", "add_special_tokens": False}
    status, reply, _ = post(f"{base}/tokenize", json.dumps(body).encode())
    assert status == 200 and reply["tokens"] == tiny.tokenizer("Hello world", add_special_tokens=False).input_ids
    status, reply, _ = post(f"{base}/tokenize", json.dumps({"messages": CHAT}).encode())
    assert reply["tokens"] == tiny.encode(CHAT) and reply["count"] == len(reply["tokens"])
    status, reply, _ = post(f"{base}/detokenize", json.dumps({"tokens": tiny.encode("Hello world")}).encode())
    assert reply == {"prompt": "Hello world"}
    for path, body, message in (("detokenize", {"tokens": [-5]}, "token id -5 is outside"),
                                ("tokenize", {}, "either prompt or messages"),
                                ("tokenize", {"prompt": "x" * 200_000}, "characters: more than"),
                                ("tokenize", {"prompt": "x", "model": "gpt-4"}, "does not exist")):
        status, error, _ = post(f"{base}/{path}", json.dumps(body).encode())
        assert 400 <= status < 500 and message in error["error"]["message"], (path, error)
    with urllib.request.urlopen(f"{base}/tokenizer_info", timeout=10) as reply:
        info = json.loads(reply.read())
    assert info["eos_token"] == tiny.tokenizer.eos_token and "im_start" in info["chat_template"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # ~2-3 min on 2 cores: the xlit-serve binary loads SmolLM2, lm-eval runs two tasks through it
def test_lm_eval_local_completions_and_chat_through_xlit_serve(smollm2, tmp_path, shared_data, monkeypatch):
    """lm-evaluation-harness as its users point it at a vLLM server: `local-completions` with its defaults (token-id
    requests, echo + logprobs, tokenized through the server's /tokenize) on an MMLU-style task, and
    `local-chat-completions` on an XQuAD-style generation task, against the real xlit-serve binary with
    SmolLM2. Each log-likelihood agrees with Model.loglikelihood (1e-4: the same fp32 computation in other
    packs, summed from JSON floats) with the same greedy flags, and each generation is Model.generate's greedy
    text (no repetition penalty) cut at the task's stop."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[harness]')")
    from lm_eval.tasks import TaskManager

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    tasks = TaskManager(include_path=str(harness_tasks(tmp_path / "tasks", shared_data, items=6)))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "launch.serve", "--model=smollm2-135m", "--model_name=smollm2",
                               f"--port={port}", "--slots=4", "--max_tokens=64"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()[-3000:]
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        scored = lm_eval.simple_evaluate(model="local-completions", tasks=["xlit_mmlu_tiny"], task_manager=tasks,
                                         model_args={"base_url": f"{base}/v1/completions", "model": "smollm2",
                                                     "batch_size": 8}, log_samples=True)
        generated = lm_eval.simple_evaluate(model="local-chat-completions", tasks=["xlit_xquad_tiny"],
                                            task_manager=tasks, apply_chat_template=True,
                                            model_args={"base_url": f"{base}/v1/chat/completions",
                                                        "model": "smollm2"}, log_samples=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    samples = scored["samples"]["xlit_mmlu_tiny"]
    assert len(samples) == 6 and all(len(s["resps"]) == 4 for s in samples)
    pairs = [tuple(argument) for s in samples for argument in s["arguments"]]
    served = [response[0] for s in samples for response in s["resps"]]
    ours = smollm2.loglikelihood(pairs)
    np.testing.assert_allclose([v for v, _ in served], [v for v, _ in ours], atol=1e-4)
    assert [g for _, g in served] == [g for _, g in ours]
    assert scored["results"]["xlit_mmlu_tiny"]["acc,none"] == np.mean(
        [int(np.argmax([v for v, _ in ours[4 * i:4 * i + 4]]) == s["doc"]["answer"]) for i, s in enumerate(samples)])
    samples = generated["samples"]["xlit_xquad_tiny"]
    assert len(samples) == 3
    for sample in samples:
        messages = json.loads(sample["arguments"][0][0][0])  # lm-eval's JsonChatStr: the chat as JSON
        expected = smollm2.generate(messages, max_new_tokens=24, repetition_penalty=1.0).split("\n")[0]
        assert sample["resps"][0][0] == expected


@pytest.mark.slow  # ~60 s on 2 cores (compiling the scoring and decoding programs for 4 + 2 items)
def test_lm_eval_in_process_through_xlit_lm(tiny, tmp_path, shared_data, monkeypatch):
    """The same two harness tasks in process (evaluate/harness/lm_eval_lm.py's XlitLM, no server): log-likelihoods
    are Model.loglikelihood's exactly (the same call), generations the engine's greedy text cut at the stop."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[harness]')")
    from lm_eval.tasks import TaskManager

    from xlit_jax.evaluate.harness.lm_eval_lm import XlitLM

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    tasks = TaskManager(include_path=str(harness_tasks(tmp_path / "tasks", shared_data, items=4)))
    out = lm_eval.simple_evaluate(model=XlitLM(tiny, max_gen_toks=8), tasks=["xlit_mmlu_tiny", "xlit_xquad_tiny"],
                                  task_manager=tasks, log_samples=True)
    samples = out["samples"]["xlit_mmlu_tiny"]
    pairs = [tuple(argument) for s in samples for argument in s["arguments"]]
    assert [tuple(r[0]) for s in samples for r in s["resps"]] == [tuple(r) for r in tiny.loglikelihood(pairs)]
    for sample in out["samples"]["xlit_xquad_tiny"]:
        context, settings = sample["arguments"][0]
        [ids] = tiny.generate_ids([tiny.tokenizer(context, add_special_tokens=False).input_ids], 24)
        assert sample["resps"][0][0] == tiny.tokenizer.decode(ids, skip_special_tokens=True).split("\n")[0]
