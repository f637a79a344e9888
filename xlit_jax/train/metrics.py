"""Training metrics: model FLOPs and MFU, and the writers (JSONL, TensorBoard, progress bar).

MFU = model FLOPs per token x tokens per second / peak FLOP/s of all devices. Model FLOPs per token are
the config's (6 x matmul params + attention); a LoRA run skips the frozen weights' gradients, 2 x matmul
params fewer. Peaks are dense bf16 datasheet numbers; on CPU the peak is a measured fp32 matmul rate.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from xlit_jax.io.files import append_jsonl, atomic_write_text, resume_jsonl
from xlit_jax.models.config import LlamaConfig

# device_kind substring -> peak dense bf16 FLOP/s per device; the first match wins.
PEAK_FLOPS = (
    ("TPU v6", 918e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v4", 275e12), ("TPU v3", 123e12),
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
)


def train_flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    flops = config.flops_per_token(seq_len)
    if config.lora_rank:
        flops -= 2.0 * (config.num_params(include_embeddings=False) + config.vocab_size * config.hidden_size)
    return flops


@functools.cache
def measured_cpu_flops(size: int = 1024, repeats: int = 8) -> float:
    """The host's fp32 matmul rate: the best of `repeats` timed [size, size] products."""
    x = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def peak_flops(override: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s of all devices, where the number comes from)."""
    if override > 0:
        return override, "flag"
    device = jax.devices()[0]
    if device.platform == "cpu":  # fake CPU devices share the host's cores: one host-wide number
        return measured_cpu_flops(), "measured fp32 matmul"
    return peak_flops_of(device.device_kind) * jax.device_count(), f"table ({device.device_kind})"


def peak_flops_of(device_kind: str) -> float:
    """Peak dense bf16 FLOP/s of one device of this kind (PEAK_FLOPS)."""
    for kind, flops in PEAK_FLOPS:
        if kind in device_kind:
            return flops
    raise ValueError(f"no peak FLOP/s known for {device_kind!r}; pass the peak as a flag")


class MetricsWriter:
    """Rows to workdir/metrics.jsonl and TensorBoard (workdir/tb), plus a tqdm bar; process 0 only."""

    def __init__(self, workdir: str | os.PathLike, start_step: int, max_steps: int, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self.writer = self.bar = None
        if not self.enabled:
            return
        # A resumed run recomputes the steps after its checkpoint: drop their old rows.
        rows = [r for r in resume_jsonl(self.path) if r["step"] <= start_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(Path(workdir) / "tb"), purge_step=start_step + 1)
        from tqdm import tqdm

        self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, [row])
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, row["step"])
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
