"""One optimizer step in JAX against PyTorch (transformers + torch.optim.AdamW, peft for LoRA), fp32.

Both sides start from the same weights (ours exported with save_hf_dir; the adapter with
save_peft_adapter) and see the same packed batch. The PyTorch side runs every packed example as its own
sequence, so it also checks that packing (segment ids, restarting positions) isolates the examples.
"""

import jax
import numpy as np
import pytest
import torch
import transformers

from xlit_jax import sharding
from xlit_jax.io.hf import save_hf_dir, tensors_from_params
from xlit_jax.io.peft import adapter_tensors, save_peft_adapter
from xlit_jax.models.llama import init_params
from xlit_jax.models.lora import LoraConfig, init_adapters, merge_params
from xlit_jax.models.presets import get_preset
from xlit_jax.train import optim
from xlit_jax.train import step as step_lib

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


def jax_step(config, params, batch, lr, lora=None):
    """(loss, gradients, state after one step) from our train step on one micro-batch."""
    schedule = optim.make_schedule("pasero", lr, STEPS, lr / 10)
    tx = optim.make_optimizer(schedule, **ADAMW)
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
    """(loss, gradients by name): the masked mean NLL over each packed example run alone, then clipping
    and AdamW with the same schedule."""
    trainable = {name.replace(".default", ""): p for name, p in model.named_parameters() if p.requires_grad}
    schedule = optim.make_schedule("pasero", lr, STEPS, lr / 10)
    opt = torch.optim.AdamW(trainable.values(), lr=lr, betas=(ADAMW["b1"], ADAMW["b2"]), eps=ADAMW["eps"],
                            weight_decay=ADAMW["weight_decay"])
    lr_at = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: float(schedule(t)) / lr)
    total, count = torch.zeros(()), 0.0
    for r in range(batch["input_ids"].shape[0]):
        for seg in set(batch["segment_ids"][r].tolist()) - {0}:
            cols = batch["segment_ids"][r] == seg
            ids = torch.tensor(batch["input_ids"][r, cols], dtype=torch.long)[None]
            logits = model(input_ids=ids, position_ids=torch.tensor(batch["positions"][r, cols])[None]).logits[0]
            nll = torch.nn.functional.cross_entropy(
                logits, torch.tensor(batch["targets"][r, cols], dtype=torch.long), reduction="none")
            mask = torch.tensor(batch["loss_mask"][r, cols])
            total, count = total + (nll * mask).sum(), count + float(mask.sum())
    loss = total / count
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in trainable.items()}
    torch.nn.utils.clip_grad_norm_(list(trainable.values()), ADAMW["clip_norm"])
    opt.step()
    lr_at.step()
    return loss.item(), grads


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_step(config, params, model, named, lr, update_tol=None, lora=None):
    """Same loss (1e-5), gradients (1e-3) and updated tensors (1e-5), relative. With `update_tol`, the
    updates (after - before) too, which keeps the weight check meaningful when lr is small next to the
    weights. Adam's first update is about lr * sign(g), so on a real 30-layer model the few elements whose
    gradient is at rounding level can flip: there we compare gradients instead."""
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
        assert relative(ours[name], theirs[name]) <= 1e-5, name
        if update_tol is not None:
            assert relative(ours[name] - before[name], theirs[name] - before[name]) <= update_tol, name
    return ours_params


def full_ft_parity(config, params, tmp_path, lr, update_tol=None):
    save_hf_dir(config, params, tmp_path / "hf")
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    named = lambda tree: {k: np.asarray(v) for k, v in tensors_from_params(config, tree)}  # noqa: E731
    check_step(config, params, model, named, lr, update_tol)


def lora_parity(config, base, tmp_path, lr, update_tol=None):
    """LoRA with B made non-zero (as after some training), so both adapters get gradients; the base must
    stay as it was."""
    import peft

    lora = LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
    rng = np.random.default_rng(1)
    adapters = jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                                      init_adapters(config, lora, 0))
    params = merge_params(base, adapters)
    save_hf_dir(config, base, tmp_path / "hf")
    save_peft_adapter(config, lora, params, tmp_path / "adapter")
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(model, tmp_path / "adapter", is_trainable=True)
    after = check_step(config, params, model, lambda tree: adapter_tensors(config, lora, tree), lr, update_tol, lora)
    base_before = dict(tensors_from_params(config, base))
    for name, value in tensors_from_params(config, after):  # the base did not move
        np.testing.assert_array_equal(np.asarray(value), base_before[name])


def test_tiny_full_ft_step_matches_pytorch(tmp_path):
    config = get_preset("tiny")
    full_ft_parity(config, init_params(config, 0), tmp_path, lr=1e-3, update_tol=1e-3)


def test_tiny_lora_step_matches_peft(tmp_path):
    config = get_preset("tiny-tied")
    lora_parity(config, init_params(config, 0), tmp_path, lr=1e-3, update_tol=1e-3)


@pytest.mark.manual
def test_smollm2_full_ft_step_matches_pytorch(smollm2, tmp_path):
    full_ft_parity(smollm2.config, smollm2.params, tmp_path, lr=1e-5)  # the paper's full fine-tuning lr


@pytest.mark.manual
def test_smollm2_lora_step_matches_peft(smollm2, tmp_path):
    lora_parity(smollm2.config, smollm2.params, tmp_path, lr=1e-5)  # one of the paper's LoRA lrs
