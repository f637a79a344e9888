"""Helpers shared by the tests (fixtures live in conftest.py): the repository root, a fresh Python with
several CPU devices, left padding, a scripted chat model and a local OpenAI-API server.
Test modules import from here, never from each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_with_devices(code: str, devices: int = 8, timeout: int = 300) -> dict:
    """Run `code` in a fresh Python with `devices` CPU devices; it prints one JSON line last."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=str(REPO),
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def left_padded(sequences, pad_id=0):
    """numpy ids and attention mask for sequences of different lengths, padded on the left."""
    length = max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_id, np.int64)
    mask = np.zeros((len(sequences), length), np.int64)
    for i, s in enumerate(sequences):
        ids[i, length - len(s):] = s
        mask[i, length - len(s):] = 1
    return ids, mask


class ScriptedModel:
    """Answers each chat prompt with `reply(user_text)` (default: the user's text back, which is in the
    prompt's language and well spelled), through the same `generate` interface as xlit_jax models.
    `stop_after` raises KeyboardInterrupt once that many responses were delivered, like a killed run."""

    def __init__(self, name="scripted", reply=None, stop_after=None):
        self.name = name
        self.reply = reply or (lambda text: text)
        self.stop_after = stop_after
        self.prompts_seen = []
        self.calls = []

    def generate(self, prompts, max_new_tokens=256, repetition_penalty=1.0, slots=8, on_finished=None, sampling=None):
        self.calls.append({"max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty})
        texts = [self.reply(p[-1]["content"] if isinstance(p, list) else p) for p in prompts]
        for index, text in enumerate(texts):
            if index == self.stop_after:
                raise KeyboardInterrupt
            self.prompts_seen.append(prompts[index])
            if on_finished is not None:
                on_finished(index, text)
        return texts


def chat_completion(content: str) -> dict:
    """A chat.completion body as the OpenAI API returns it."""
    return {"id": "chatcmpl-9x2k", "object": "chat.completion", "created": 1732262400,
            "model": "gpt-3.5-turbo-0125", "system_fingerprint": "fp_test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 612, "completion_tokens": 58, "total_tokens": 670}}


class FakeOpenAI:
    """An HTTP server on 127.0.0.1 serving /v1/chat/completions. `answer(prompt, attempt)` returns
    (status, content) for the n-th request carrying the same prompt; requests are recorded."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = []  # (authorization header, request body)
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with owner._lock:
                    owner.requests.append((self.headers.get("Authorization"), body))
                    attempt = sum(b["messages"][-1]["content"] == prompt for _, b in owner.requests)
                status, content = owner.answer(prompt, attempt) if self.path == "/v1/chat/completions" \
                    else (404, "no such route")
                payload = chat_completion(content) if status == 200 else {
                    "error": {"message": content, "type": "invalid_request_error", "code": None}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# Greedy decoding against HF generate (test_generate, test_engine)
NEW_TOKENS = 64
HF_PAD = 0  # <|endoftext|>: HF penalizes pad ids too, so pad with a token the model never wants


def paper_prompts(shared_data, per_language=2):
    prompts = []
    for lang in ("en", "fr", "pt", "ru"):
        lines = (shared_data / "chirkova2024_eval" / f"alpacaeval_test_subset.{lang}.jsonl").read_text().splitlines()
        prompts += [json.loads(line) for line in lines[3:3 + per_language]]
    return prompts


def hf_generate(model, prompts):
    import torch

    ids, mask = left_padded(prompts, HF_PAD)
    with torch.no_grad():
        out = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW_TOKENS,
                             do_sample=False, repetition_penalty=1.1, pad_token_id=HF_PAD)
    return [strip_after_eos(row[ids.shape[1]:].tolist(), model.generation_config.eos_token_id) for row in out]


def strip_after_eos(tokens, eos):
    eos = {eos} if isinstance(eos, int) else set(eos)
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


# The tiny training runs (test_train_loop, test_train_probes)
OVERRIDES = {"data.seq_len": 64, "data.tokens_per_batch": 128, "data.grad_accum": 2, "train.max_steps": 8,
             "train.save_every": 2, "train.log_every": 1, "train.keep": 10, "optim.lr": 1e-3, "optim.min_lr": 1e-4}
COMPARED = ("step", "loss", "grad_norm", "lr", "target_tokens")


def write_chats(path: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    words = "the a cat dog sat ran on under mat tree red blue quickly slowly and then".split()
    say = lambda k: " ".join(rng.choice(words, k))  # noqa: E731
    with open(path, "w") as f:
        for _ in range(n):
            messages = [{"role": "user", "content": say(rng.integers(2, 6))},
                        {"role": "assistant", "content": say(rng.integers(3, 12))}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def tiny_config(data: Path, **changes):
    from configs.experiments import tiny_ft

    cfg = tiny_ft.get_config()
    cfg.data.sources = (f"chat:{data}",)
    for key, value in {**OVERRIDES, **changes}.items():
        section, field = key.split(".")
        cfg[section][field] = value
    return cfg
