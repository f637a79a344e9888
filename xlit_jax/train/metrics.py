"""Training metrics: model FLOPs and MFU, and the writers (JSONL, TensorBoard, progress bar).

MFU = model FLOPs per token x tokens per second / peak FLOP/s of all devices. Model FLOPs per token are
the config's (6 x matmul params + attention); a LoRA run skips the frozen weights' gradients, 2 x matmul
params fewer. Peaks come from xlit_jax.hardware (dense bf16 datasheet numbers; on CPU a measured fp32
matmul rate).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax

from xlit_jax import hardware
from xlit_jax.io.files import append_jsonl, atomic_write_text, resume_jsonl
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.lora import LoraConfig

METRICS_FILE = "metrics.jsonl"


def train_flops_per_token(config: LlamaConfig, seq_len: int, lora: LoraConfig | None = None) -> float:
    flops = config.flops_per_token(seq_len)
    if lora is not None:
        flops -= 2.0 * config.matmul_params()
    return flops


def all_devices_peak_flops(override: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s of all attached devices together, where the number comes from); hardware.peak_flops is
    one device's."""
    if override > 0:
        return override, "flag"
    device = jax.devices()[0]
    if device.platform == "cpu":  # fake CPU devices share the host's cores: one host-wide number
        return hardware.peak_flops(device), "measured fp32 matmul"
    return hardware.peak_flops(device) * jax.device_count(), f"table ({device.device_kind})"


def rows_until(path: Path, step: int, keep=lambda row: True) -> list[dict]:
    """Rewrite an append-only JSONL of rows keyed by "step" without the rows after `step` (and those `keep`
    refuses), returning what is left: a resumed run recomputes the steps after its checkpoint."""
    rows = [r for r in resume_jsonl(path) if r["step"] <= step and keep(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


class MetricsWriter:
    """Rows to workdir/metrics.jsonl and TensorBoard (workdir/tb), plus a tqdm bar; process 0 only. A train
    row's keys go to TensorBoard as train/KEY; keys that name their group (eval/loss, probe/fr/...) as they are.
    `rows` are those kept from before a resume."""

    def __init__(self, workdir: str | os.PathLike, start_step: int, max_steps: int, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / METRICS_FILE
        self.writer = self.bar = None
        self.rows: list[dict] = []
        if not self.enabled:
            return
        self.rows = rows_until(self.path, start_step)
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
                    self.writer.add_scalar(key if "/" in key else f"train/{key}", value, row["step"])
        if "loss" in row:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
