"""The workloads every benchmark measures, free of flags so that several benchmarks can share them: the
paper's prompts, and one training update of a model (full fine-tuning or LoRA) on a fixed batch."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from xlit_jax.models.config import LORA_TARGETS  # all seven projections

ADAMW = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
LR = 1e-5


def paper_prompts(data_dir: str, n: int) -> list[list[dict]]:
    """The first n of the paper's English evaluation instructions, as chat messages (cycled if n > 113)."""
    from xlit_jax.io.files import read_jsonl

    messages = [m for _, m in read_jsonl(f"{data_dir}/chirkova2024_eval/alpacaeval_test_subset.en.jsonl")]
    return [messages[i % len(messages)] for i in range(n)]


def train_batch(vocab: int, batch: int, seq_len: int, leading: tuple = ()) -> dict[str, np.ndarray]:
    """Random [*leading, batch, seq_len] rows, one sequence each, loss on the second half (the 'response')."""
    rng = np.random.default_rng(0)
    shape = (*leading, batch, seq_len)
    return {"input_ids": rng.integers(3, vocab, shape).astype(np.int32),
            "targets": rng.integers(3, vocab, shape).astype(np.int32),
            "loss_mask": np.broadcast_to(np.arange(seq_len) >= seq_len // 2, shape).astype(np.float32),
            "segment_ids": np.ones(shape, np.int32),
            "positions": np.broadcast_to(np.arange(seq_len), shape).astype(np.int32)}


def seconds_per_call(run: Callable[[], Any], calls: int) -> float:
    """Mean wall seconds of `calls` calls of `run`, after one warm-up call (JAX compiles, torch allocates)."""
    run()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def load_for_training(model: str, method: str, lora_rank: int):
    """(config, params) of `model`, with fresh adapters on all seven projections for method 'lora'."""
    import xlit_jax
    from xlit_jax.models.lora import init_adapters, merge_params

    loaded = xlit_jax.load(model)
    config, params = loaded.config, loaded.params
    if method == "lora":
        config = config.replace(lora_rank=lora_rank, lora_alpha=2.0 * lora_rank, lora_targets=LORA_TARGETS)
        params = merge_params(params, init_adapters(config, 0))
    return config, params


@dataclasses.dataclass
class JaxTrainStep:
    """Our jitted train step on one device mesh, ready to run on a fixed batch."""

    config: Any
    run: Callable[[], None]  # one update, blocking until it is done
    lower: Callable[[], Any]  # the step lowered for its arguments (for compiled text and analyses)


def jax_train_step(model: str, method: str, batch: int, seq_len: int, lora_rank: int = 16) -> JaxTrainStep:
    import jax

    from xlit_jax import sharding
    from xlit_jax.bench import repeated_step
    from xlit_jax.train import optim, step as step_lib

    config, params = load_for_training(model, method, lora_rank)
    schedule = optim.make_schedule("linear", LR, 1000, LR / 10)
    tx = optim.make_optimizer(schedule, **ADAMW)
    mesh = sharding.make_mesh()
    state, shardings = step_lib.init_state(config, params, tx, mesh)
    del params
    step = step_lib.make_train_step(config, tx, schedule, mesh, shardings)
    arrays = sharding.global_batch(train_batch(config.vocab_size, batch, seq_len, (1,)),
                                   sharding.batch_sharding(mesh, leading=1))
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                                      (state, arrays))  # the state itself is donated by the first run

    def lower():
        with sharding.activate(mesh):
            return step.lower(*abstract)

    run = repeated_step(step, state, arrays, mesh)

    return JaxTrainStep(config, run, lower)
