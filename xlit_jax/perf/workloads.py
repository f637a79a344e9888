"""The workloads every perf script measures, free of flags so that several scripts can share them: the
paper's prompts, the MMLU questions of docs/performance.md, and one training update of a model (full
fine-tuning or LoRA) on a fixed batch, ours through train.step.build and the PyTorch reference's with the same
optimizer settings and adapters."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import jax
import numpy as np

import xlit_jax
from xlit_jax import sharding
from xlit_jax.evaluate.harness.data import BenchItem, load_benchmarks
from xlit_jax.io.files import read_jsonl
from xlit_jax.models.lora import LORA_RANK, LORA_TARGETS, LoraConfig, init_adapters, merge_params
from xlit_jax.train import step as step_lib
from xlit_jax.train.optim import OptimSettings

SETTINGS = OptimSettings()  # the released configs' AdamW and schedule, for both engines


def paper_prompts(data_dir: str, n: int, languages: Sequence[str] = ("en",)) -> list[list[dict]]:
    """The first n of the paper's evaluation instructions as chat messages, taking the languages in turn
    (instruction 1 in each language, then instruction 2, ...; cycled past the 113)."""
    sets = [[m for _, m in read_jsonl(f"{data_dir}/chirkova2024_eval/alpacaeval_test_subset.{language}.jsonl")]
            for language in languages]
    return [sets[i % len(sets)][(i // len(sets)) % len(sets[0])] for i in range(n)]


def mmlu_questions(data_dir: str, languages: Sequence[str], per_subject: int) -> list[BenchItem]:
    """The first `per_subject` rows (0: all) of every MMLU subject in each language (CrossAlpaca's files, zero-shot,
    no chat template): docs/performance.md's MMLU questions (en, de, 10 each: 200)."""
    taken: collections.Counter = collections.Counter()
    chosen = []
    for item in load_benchmarks(("mmlu",), languages, data_dir).items:
        taken[item.language, item.task] += 1
        if not per_subject or taken[item.language, item.task] <= per_subject:
            chosen.append(item)
    return chosen


def train_batch(vocab: int, batch: int, seq_len: int, leading: tuple = ()) -> dict[str, np.ndarray]:
    """Random [*leading, batch, seq_len] rows, one sequence each, loss on the second half (the 'response')."""
    rng = np.random.default_rng(0)
    shape = (*leading, batch, seq_len)
    return {"input_ids": rng.integers(3, vocab, shape).astype(np.int32),
            "targets": rng.integers(3, vocab, shape).astype(np.int32),
            "loss_mask": np.broadcast_to(np.arange(seq_len) >= seq_len // 2, shape).astype(np.float32),
            "segment_ids": np.ones(shape, np.int32),
            "positions": np.broadcast_to(np.arange(seq_len), shape).astype(np.int32)}


def lora_for(method: str, rank: int = LORA_RANK) -> LoraConfig | None:
    """The perf scripts' adapters (all seven projections, the default alpha) for method 'lora', or 'lora-FORMAT'
    on a base quantized to FORMAT (models/quantize.py); else None."""
    if not method.startswith("lora"):
        return None
    return LoraConfig(rank, targets=LORA_TARGETS, base_quantization=method.partition("-")[2] or "none")


def load_for_training(model: str, method: str, lora_rank: int = LORA_RANK):
    """(config, LoRA or None, params) of `model`, with fresh adapters for method 'lora'."""
    loaded = xlit_jax.load(model)
    config, lora, params = loaded.config, lora_for(method, lora_rank), loaded.params
    if lora is not None:
        params = merge_params(params, init_adapters(config, lora, 0))
    return config, lora, params


def bench_step(config, lora: LoraConfig | None = None):
    """Our train step of `config` (with `lora`'s adapters) with SETTINGS on all devices."""
    return step_lib.build(config, SETTINGS, sharding.make_mesh(), lora=lora)


def jax_train_step(model: str, method: str, rows: int, seq_len: int, lora_rank: int = LORA_RANK):
    """(our TrainStep of `model`, a no-argument function running one blocking update on a fixed batch)."""
    config, lora, params = load_for_training(model, method, lora_rank)
    train_step = bench_step(config, lora)
    state = train_step.init(params)
    del params
    return train_step, repeated_step(train_step, state, device_batch(train_step, rows, seq_len))


def repeated_step(train_step, state, batch):
    """A no-argument function running one blocking step of `train_step` (a TrainStep) on `batch`, carrying
    the state along."""
    holder = {"state": state}

    def step():
        with sharding.activate(train_step.mesh):
            holder["state"], metrics = train_step.step(holder["state"], batch)
        jax.block_until_ready(metrics)

    return step


def device_batch(train_step, rows: int, seq_len: int):
    """A fixed random [1, rows, seq_len] batch on the step's mesh."""
    host = train_batch(train_step.config.vocab_size, rows, seq_len, (1,))
    return sharding.global_batch(host, train_step.batch_sharding)


def torch_lora(model, lora: LoraConfig):
    """`model` (HF transformers) with peft adapters like `lora`."""
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=[f"{t}_proj" for t in lora.targets]))


def torch_adamw(trainable, **kwargs):
    """torch.optim.AdamW with SETTINGS' constant learning rate, betas, eps and weight decay."""
    import torch  # optional (the `torch` extra): only the reference's workers call this

    s = SETTINGS
    return torch.optim.AdamW(trainable, lr=s.lr, betas=(s.b1, s.b2), eps=s.eps, weight_decay=s.weight_decay,
                             **kwargs)
