"""Helpers shared by the tests (fixtures live in conftest.py): the repository root, a fresh Python with
several CPU devices, left padding, a scripted chat model, a local OpenAI-API server, one training step
against PyTorch, and two tiny lm-evaluation-harness tasks on local files.
Test modules import from here, never from each other."""

from __future__ import annotations

import ast
import csv
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from xlit_jax import sharding
from xlit_jax.io.hf import save_hf_dir, tensors_from_params
from xlit_jax.io.peft import adapter_tensors, save_peft_adapter
from xlit_jax.models.lora import LoraConfig, init_adapters, merge_params
from xlit_jax.perf.torch_reference import Reference, load_model
from xlit_jax.perf.twin import relative
from xlit_jax.train import optim
from xlit_jax.train import step as step_lib

REPO = Path(__file__).resolve().parents[1]


def in_ci_only(*cases: tuple) -> list:
    """`cases` of a parametrized test marked `slow`: CI runs them (make test-slow); make test keeps the others."""
    return [pytest.param(*case, marks=pytest.mark.slow) for case in cases]


def run_with_devices(code: str, devices: int = 8, timeout: int = 300) -> dict:
    """Run `code` in a fresh Python with `devices` CPU devices; it prints one JSON line last."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=str(REPO),
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# xlit-train as a user runs it: its own processes (tests/train/test_train_loop.py, test_train_harness.py)
def launch(args: list[str], cache: Path, devices: int = 1, code: str | None = None,
           env: dict | None = None) -> subprocess.Popen:
    """xlit-train (or `code` given the same argv) in a fresh process, sharing a compilation cache; `env` adds
    variables."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}") | (env or {})
    command = ["-c", code] if code else ["-m", "launch.train"]
    return subprocess.Popen([sys.executable, *command, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
    """Its stderr, once it exited with status 0."""
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return err


def train_in_two_processes(args: list[str], cache: Path, env: dict | None = None) -> list[str]:
    """xlit-train in two processes with one CPU device each (jax.distributed on localhost); their stderr."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    distributed = ["--config.distributed.initialize=True", f"--config.distributed.coordinator=localhost:{port}",
                   "--config.distributed.num_processes=2"]
    processes = [launch([*args, *distributed, f"--config.distributed.process_id={i}"], cache, env=env)
                 for i in range(2)]
    return [finish(process) for process in processes]


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


# One optimizer step in JAX against PyTorch (test_train_torch_parity, test_model_families): both sides start
# from the same weights (ours exported with save_hf_dir, the adapter with save_peft_adapter) and see the same
# packed batch; the PyTorch side (transformers + torch.optim.AdamW, peft for LoRA) runs every packed example
# as its own sequence, so it also checks that packing (segment ids, restarting positions) isolates them.
STEPS = 10  # schedule length: the step uses its first value
ADAMW = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)


def packed_batch(vocab, rows=2, length=24, seed=0):
    """Rows packed with 2-3 examples each plus padding; the loss mask covers the later part of each."""
    rng = np.random.default_rng(seed)
    out = {k: np.zeros((rows, length), np.int32) for k in ("input_ids", "targets", "segment_ids", "positions")}
    out["loss_mask"] = np.zeros((rows, length), np.float32)
    for r in range(rows):
        col = 0
        for seg, n in enumerate((9, 7, 5)[: 2 + r % 2], 1):
            tokens = rng.integers(3, vocab, n + 1)
            span = slice(col, col + n)
            out["input_ids"][r, span], out["targets"][r, span] = tokens[:-1], tokens[1:]
            out["loss_mask"][r, span] = np.arange(n) >= n // 2
            out["segment_ids"][r, span], out["positions"][r, span] = seg, np.arange(n)
            col += n
    return out


def settings(lr):
    return optim.OptimSettings(lr=lr, min_lr=lr / 10, max_steps=STEPS, **ADAMW)


def jax_step(config, params, batch, lr, lora=None):
    """(loss, gradients, state after one step) from our train step on one micro-batch."""
    schedule, tx = settings(lr).build()
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    trainable, frozen = step_lib.split_trainable(params, lora)

    def mean_loss(p):
        total, count = step_lib.token_losses(config, merge_params(frozen, p), batch, lora)
        return total / count

    grads = merge_params(frozen, jax.jit(jax.grad(mean_loss))(trainable))
    state, shardings = step_lib.init_state(config, params, tx, mesh, lora)
    train_step = step_lib.make_train_step(config, tx, schedule, mesh, shardings, lora=lora)
    with sharding.activate(mesh):
        state, metrics = train_step(state, {k: v[None] for k, v in batch.items()})
    return float(metrics["loss"]), grads, state.full_params()


def torch_step(model, batch, lr):
    """(loss, gradients by name) of the reference's update (perf/torch_reference.py: each packed example
    run alone, then clipping and AdamW with the same schedule)."""
    reference = Reference(model, settings(lr))
    loss, _ = reference.backward({k: v[None] for k, v in batch.items()})
    grads = {name: p.grad.numpy().copy() for name, p in reference.params.items()}
    reference.update()
    return loss, grads


# Tensors whose gradient is of the order of Adam's eps: a key bias b adds q.R(j)b to the scores of a query,
# nearly the same for every key j (RoPE's rotation R(j) is all that varies it), and the softmax ignores what
# is the same (Qwen2's k_proj.bias: gradients ~1e-6). Adam's first update lr * g / (|g| + eps) is then most
# sensitive to the relative rounding error of g's smallest elements: their gradients are compared, not the
# updated weights.
SMALL_GRADIENT = ("k_proj.bias",)


def check_step(config, params, model, named, lr, update_tol=None, lora=None):
    """Same loss (1e-5), gradients (1e-3) and updated tensors (1e-5), relative. With `update_tol`, the
    updates (after - before) too, which keeps the weight check meaningful when lr is small next to the
    weights. Adam's first update is about lr * sign(g), so on a real 30-layer model the few elements whose
    gradient is at rounding level can flip: there we compare gradients instead (as for SMALL_GRADIENT
    tensors)."""
    batch = packed_batch(config.vocab_size)
    before = named(params)
    ours_loss, ours_grads, ours_params = jax_step(config, params, batch, lr, lora)
    theirs_loss, theirs_grads = torch_step(model, batch, lr)
    assert abs(ours_loss - theirs_loss) <= 1e-5 * abs(theirs_loss)
    ours_grads, ours = named(ours_grads), named(ours_params)
    theirs = {k.replace(".default", ""): v.detach().numpy() for k, v in model.state_dict().items()}
    assert ours.keys() == ours_grads.keys() == theirs_grads.keys() and ours
    for name in ours:
        assert relative(ours_grads[name], theirs_grads[name]) <= 1e-3, name
        if name.endswith(SMALL_GRADIENT):
            continue
        assert relative(ours[name], theirs[name]) <= 1e-5, name
        if update_tol is not None:
            assert relative(ours[name] - before[name], theirs[name] - before[name]) <= update_tol, name
    return ours_params


def full_ft_parity(config, params, tmp_path, lr, update_tol=None):
    model = load_model(save_hf_dir(config, params, tmp_path / "hf"))
    named = lambda tree: {k: np.asarray(v) for k, v in tensors_from_params(config, tree)}  # noqa: E731
    check_step(config, params, model, named, lr, update_tol)
    return sorted(named(params))  # the tensors compared


def lora_parity(config, base, tmp_path, lr, update_tol=None):
    """LoRA with B made non-zero (as after some training), so both adapters get gradients; the base must
    stay as it was."""
    lora = LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
    rng = np.random.default_rng(1)
    adapters = jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                                      init_adapters(config, lora, 0))
    params = merge_params(base, adapters)
    model = load_model(save_hf_dir(config, base, tmp_path / "hf"),
                       save_peft_adapter(config, lora, params, tmp_path / "adapter"))
    after = check_step(config, params, model, lambda tree: adapter_tensors(config, lora, tree), lr, update_tol, lora)
    base_before = dict(tensors_from_params(config, base))
    for name, value in tensors_from_params(config, after):  # the base did not move
        np.testing.assert_array_equal(np.asarray(value), base_before[name])
    return sorted(adapter_tensors(config, lora, params))  # the tensors compared


MMLU_TASK = """task: xlit_mmlu_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\
  \\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
"""
XQUAD_TASK = """task: xlit_xquad_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Context: {{{{context}}}}\\n\\nQuestion: {{{{question}}}}\\n\\nAnswer:"
doc_to_target: "{{{{answers[0]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 24
metric_list:
  - metric: exact_match
"""


def harness_tasks(folder, shared_data, items: int):
    """Two tiny lm-eval tasks on local files: MMLU-style multiple choice (log-likelihoods) from the first rows of
    CrossAlpaca's English abstract algebra, and XQuAD-style generation with a stop sequence."""
    folder.mkdir()
    bench = shared_data / "crossalpaca_bench" / "English"
    with open(bench / "MMLU" / "abstract_algebra_test.csv", newline="") as f:
        mmlu = [{"question": q, "choices": [a, b, c, d], "answer": "ABCD".index(gold)}
                for q, a, b, c, d, gold in list(csv.reader(f))[:items]]
    with open(bench / "XQUAD" / "xquad_EN.csv", newline="") as f:
        xquad = [{"context": r["context"], "question": r["question"],
                  "answers": ast.literal_eval(r["answers"])["text"]} for r in list(csv.DictReader(f))[:items // 2]]
    for name, rows, task in (("mmlu", mmlu, MMLU_TASK), ("xquad", xquad, XQUAD_TASK)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"{name}.yaml").write_text(task.format(data=data))
    return folder
