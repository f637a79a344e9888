"""The PyTorch reference of our training: transformers' LlamaForCausalLM (peft for LoRA) with
torch.optim.AdamW, fed our data pipeline's batches and started from our weights. It imports torch at the top
(the optional `torch` extra): only the twin benchmark (perf/twin.py) and the parity tests import it.

An update here is ours (train/step.py, train/optim.py) written the PyTorch way:
- the batch: the same [k, B, L] arrays. Each packed example (a segment of a row) runs as its own sequence
  with its own positions: a micro-batch's examples go through the model as one batch of sequences,
  right-padded under a 2-D attention mask, not as packed rows under a block-diagonal 4-D mask. So nothing of
  the packing is trusted on this side (agreement also checks that segment ids and restarting positions
  isolate the examples), and the model runs HF's ordinary padding path rather than a custom 4-D mask, whose
  expected form transformers has changed between versions. Right padding comes after each sequence's
  tokens: under the causal mask no real token sees it.
- the loss: the NLL summed over the loss-masked targets of all k micro-batches, divided by their count (a
  token-weighted mean, as our step's). The count is known before the first forward, so each micro-batch's
  backward runs at once with its share, and no graph outlives its micro-batch.
- clipping: clip_grad_norm_ (torch scales by max / (norm + 1e-6), optax by max / norm: 1e-6 relative when
  it clips).
- AdamW in one parameter group, so every trainable tensor is decayed: optax.adamw has no mask either.
- the schedule: LambdaLR over our own schedule function, so update t + 1 uses its value at t, as ours does.
- bf16: torch.autocast on the CPU (bf16 matmuls, fp32 weights and optimizer), the loss from fp32 logits.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import peft
import torch
import transformers

from xlit_jax.train.optim import OptimSettings


def load_model(hf_dir: str | Path, adapter_dir: str | Path | None = None):
    """transformers' model from our exported weights (save_hf_dir), in float32; with `adapter_dir` (our
    save_peft_adapter), peft's LoRA model on it, adapters trainable, its LoraConfig (rank, alpha, targets) and
    initial adapters the ones we wrote."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    if adapter_dir is None:
        return model
    return peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


UNPACKED = ("input_ids", "positions", "targets", "loss_mask")


def unpack(micro_batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The packed examples of a [B, L] micro-batch as separate sequences: [n, T] tensors, right-padded to the
    longest (T), with their attention mask. Padding comes after each sequence's tokens, so under the causal
    mask no real token sees it, and its loss mask is 0."""
    segments = micro_batch["segment_ids"]
    spans = [(r, segments[r] == s) for r in range(len(segments)) for s in np.unique(segments[r]) if s]
    shape = (len(spans), max(int(cols.sum()) for _, cols in spans))
    out = {key: np.zeros(shape, np.float32 if key == "loss_mask" else np.int64)
           for key in (*UNPACKED, "attention_mask")}
    for i, (r, cols) in enumerate(spans):
        n = int(cols.sum())
        for key in UNPACKED:
            out[key][i, :n] = micro_batch[key][r, cols]
        out["attention_mask"][i, :n] = 1
    return {key: torch.from_numpy(value) for key, value in out.items()}


class Reference:
    """A model and its optimizer, updated from our batches: `step(batch)` is one update (`backward` then
    `update`, apart for a test to read the gradients in between)."""

    def __init__(self, model, settings: OptimSettings, bf16: bool = False):
        self.model, self.settings, self.bf16 = model, settings, bf16
        # peft names its adapters ...lora_A.default.weight; the adapter file (and our export) ...lora_A.weight
        self.params = {name.replace(".default", ""): p for name, p in model.named_parameters() if p.requires_grad}
        schedule, _ = settings.build()
        self.opt = torch.optim.AdamW(self.params.values(), lr=settings.lr, betas=(settings.b1, settings.b2),
                                     eps=settings.eps, weight_decay=settings.weight_decay)
        self.lr_at = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda t: float(schedule(t)) / settings.lr)

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def backward(self, batch: dict[str, np.ndarray]) -> tuple[float, float]:
        """(mean loss, target count) of a [k, B, L] batch; its gradients accumulated in the params' .grad."""
        self.model.train()
        count = max(float(batch["loss_mask"].sum()), 1.0)
        loss = 0.0
        for micro in range(batch["input_ids"].shape[0]):
            b = unpack({key: value[micro] for key, value in batch.items()})
            with self.autocast():
                logits = self.model(input_ids=b["input_ids"], position_ids=b["positions"],
                                    attention_mask=b["attention_mask"]).logits
            nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), b["targets"].flatten(),
                                                    reduction="none")
            part = (nll * b["loss_mask"].flatten()).sum() / count
            part.backward()
            loss += part.item()
        return loss, count

    def update(self) -> dict[str, float]:
        """Clip, step the optimizer and the schedule: the lr used, the gradient norm before clipping (and the
        norm clip_grad_norm_ computed from them) and the trainable params' norm after the update."""
        trainable = list(self.params.values())
        lr = self.opt.param_groups[0]["lr"]
        grad_norm = norm([p.grad for p in trainable])
        clip_grad_norm = torch.nn.utils.clip_grad_norm_(trainable, self.settings.clip_norm or float("inf"))
        self.opt.step()
        self.lr_at.step()
        self.opt.zero_grad(set_to_none=True)
        return {"lr": lr, "grad_norm": grad_norm, "clip_grad_norm": float(clip_grad_norm),
                "param_norm": norm(trainable)}

    def step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        loss, count = self.backward(batch)
        return {"loss": loss, **self.update(), "target_tokens": count}

    def tensors(self) -> dict[str, np.ndarray]:
        """The trainable tensors by their exported names (HF's, or the adapter file's)."""
        return {name: p.detach().numpy().copy() for name, p in self.params.items()}

    def generate(self, prompts: list[list[int]], max_new_tokens: int, repetition_penalty: float,
                 eos: tuple[int, ...]) -> list[list[int]]:
        """HF's greedy continuations (EOS stripped), one prompt at a time (no padding to agree on), in the
        training precision."""
        self.model.eval()
        outputs = []
        for prompt in prompts:
            ids = torch.tensor([prompt])
            with torch.no_grad(), self.autocast():
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                                          eos_token_id=list(eos), pad_token_id=eos[0])
            new = out[0, len(prompt):].tolist()
            outputs.append(new[:next((i for i, t in enumerate(new) if t in eos), len(new))])
        return outputs


def norm(tensors) -> float:
    """The global L2 norm, summed in float64: torch's float32 norms on the CPU are off by ~7e-5 relative on
    tensors of millions of elements (SmolLM2's embedding), which would hide the differences measured."""
    with torch.no_grad():
        return float(torch.stack([t.detach().double().square().sum() for t in tensors]).sum().sqrt())
