"""A whole training run twice, side by side: ours (the train step of train.step.build) and the PyTorch
reference (perf/torch_reference.py), from the same initial weights, on the same batches, update by update.
Free of flags, for the command (`python -m xlit_jax.perf.torch_twin`) and the test alike.

The batches are built once, by our data pipeline (train.loop.make_batches / next_batch), and handed to both
sides. The reference starts from our initial weights as our exports write them (save_hf_dir, and for LoRA
save_peft_adapter with the fresh adapters), and its final trainable tensors are compared with ours as the
same export writes them, so both sides are read under the names a user would load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np
import optax
from safetensors.numpy import load_file

from xlit_jax import sharding
from xlit_jax.decode.engine import generate_ids
from xlit_jax.errors import InputError
from xlit_jax.io.files import atomic_write_text, markdown_table
from xlit_jax.io.hf import save_hf_dir
from xlit_jax.io.peft import save_peft_adapter
from xlit_jax.train import loop
from xlit_jax.train import step as step_lib
from xlit_jax.train.optim import OptimSettings

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

SIDES = ("jax", "torch")
QUANTITIES = ("loss", "lr", "grad_norm", "param_norm")


@dataclasses.dataclass
class Generation:
    prompts: list  # chat messages
    max_new_tokens: int = 32
    repetition_penalty: float = 1.1  # xlit-eval's and the probes'


def check(cfg) -> None:
    """What the reference cannot do alike, refused before any weights are read."""
    if cfg.lora.rank and cfg.lora.dropout:
        raise InputError(f"lora.dropout={cfg.lora.dropout}: the two sides would draw different dropout masks; "
                         "compare runs without dropout")
    if cfg.model.param_dtype != "float32":
        raise InputError(f"model.param_dtype={cfg.model.param_dtype}: the reference keeps float32 weights "
                         "(bf16 compute is model.dtype=bfloat16)")
    if loop.model_overrides(cfg)["dtype"] not in ("float32", "bfloat16"):
        raise InputError(f"model.dtype={cfg.model.dtype}: the reference runs float32 or bf16 autocast")
    if cfg.lora.rank and cfg.lora.base_quantization != "none":
        raise InputError(f"lora.base_quantization={cfg.lora.base_quantization}: the reference (peft) cannot run a "
                         "quantized base; compare runs with base_quantization=none")


def prepare(cfg, steps: int):
    """(config, initial params, tokenizer, the `steps` batches of [k, B, L] arrays), cfg.train.max_steps set to
    `steps` so that the schedule runs its whole course."""
    cfg.train.max_steps = steps
    mix = loop.load_data(cfg)
    config, params, tokenizer = loop.load_source(cfg)
    data = loop.make_batches(cfg, tokenizer, mix)
    return config, params, tokenizer, [loop.next_batch(data, cfg.data.grad_accum) for _ in range(steps)]


def save_trainable(cfg, config, params, folder: Path) -> Path:
    """Our trainable tensors as we export them: the PEFT adapter (LoRA) or the HF directory (full)."""
    lora = loop.lora_config(cfg)
    if lora is None:
        return save_hf_dir(config, params, folder)
    return save_peft_adapter(config, lora, params, folder)


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def run_jax(cfg, config, params, batches, log_every: int = 1):
    """(a row per update, the final params) of our train step on the first device."""
    train_step = step_lib.build(config, OptimSettings.from_config(cfg), loop.mesh_for(cfg, jax.devices()[:1]),
                                cfg.train.seed, loop.lora_config(cfg), cfg.model.attention)
    state, rows = train_step.init(params), []
    norm = jax.jit(optax.tree.norm)
    with sharding.activate(train_step.mesh):
        for update, batch in enumerate(batches, 1):
            began = time.perf_counter()
            state, metrics = train_step.step(state, sharding.global_batch(batch, train_step.batch_sharding))
            metrics = jax.device_get(metrics) | {"param_norm": norm(state.params)}
            rows.append(_row("jax", update, metrics, time.perf_counter() - began, log_every))
    return rows, state.full_params()


def run_torch(reference, batches, log_every: int = 1) -> list[dict]:
    """A row per update of the reference (perf/torch_reference.py)."""
    rows = []
    for update, batch in enumerate(batches, 1):
        began = time.perf_counter()
        rows.append(_row("torch", update, reference.step(batch), time.perf_counter() - began, log_every))
    return rows


def _row(side: str, update: int, metrics: dict, seconds: float, log_every: int) -> dict:
    row = {"side": side, "update": update, **{k: float(v) for k, v in metrics.items() if k != "finite"},
           "seconds": seconds}
    if update % log_every == 0:
        logging.info("%s update %d: loss %.6f, grad norm %.4g, %.1f s", side, update, row["loss"],
                     row["grad_norm"], seconds)
    return row


def squares(a, b) -> np.ndarray:
    """[||a - b||^2, ||b||^2], in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.array([np.sum((a - b) ** 2), np.sum(b ** 2)])


def ratio(sums: np.ndarray) -> float:
    """||a - b|| / ||b|| from `squares`."""
    return float(np.sqrt(sums[0] / max(sums[1], 1e-60)))


def relative(a, b) -> float:
    """||a - b|| / ||b||."""
    return ratio(squares(a, b))


def tensor_diffs(ours: dict, theirs: dict) -> dict:
    """The worst tensor's relative difference (and its name) and that of all tensors together, one tensor
    at a time in float64 (SmolLM2's 135M weights would take 2 GB at once)."""
    if ours.keys() != theirs.keys():
        raise ValueError(f"the sides train different tensors: {sorted(ours.keys() ^ theirs.keys())[:4]}")
    per = {name: squares(ours[name], theirs[name]) for name in ours}
    worst = max(per, key=lambda name: ratio(per[name]))
    return {"max": ratio(per[worst]), "worst": worst, "all": ratio(sum(per.values()))}


def quantity_diffs(rows: list[dict]) -> dict:
    """Per quantity: |ours - theirs| / |theirs| at the first and last update, its max and mean."""
    by_side = {side: [r for r in rows if r["side"] == side] for side in SIDES}
    diffs = {}
    for q in QUANTITIES:
        rel = np.array([abs(a[q] - b[q]) / max(abs(b[q]), 1e-30) for a, b in zip(by_side["jax"], by_side["torch"])])
        diffs[q] = {"first": float(rel[0]), "last": float(rel[-1]), "max": float(rel.max()), "mean": float(rel.mean())}
    return diffs


def generate(cfg, config, params, tokenizer, reference, generation: Generation) -> list[dict]:
    """Both final models' greedy answers to the prompts: ours through the decoding engine (LoRA adapters
    unmerged, as trained), theirs through HF generate, from the same token ids."""
    ids = [tokenizer(tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False).input_ids for p in generation.prompts]
    g = generation
    ours = generate_ids(params, config, ids, max_new_tokens=g.max_new_tokens, repetition_penalty=g.repetition_penalty,
                        slots=len(ids), lora=loop.lora_config(cfg), attention=cfg.model.attention)
    theirs = reference.generate(ids, g.max_new_tokens, g.repetition_penalty, config.eos_token_ids)
    return [{"prompt": p[-1]["content"], "same": o == t, "first_difference": first_difference(o, t),
             "ours": tokenizer.decode(o, skip_special_tokens=True),
             "theirs": tokenizer.decode(t, skip_special_tokens=True)}
            for p, o, t in zip(generation.prompts, ours, theirs)]


def first_difference(a: list, b: list) -> int | None:
    """Where two token lists first differ (the shorter one's length when one extends the other); None if equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run(cfg, steps: int, generation: Generation | None = None, log_every: int = 1) -> dict:
    """Both runs of `cfg` for `steps` updates: {"rows": a row per side and update, "diffs": per quantity,
    "params": the final trainable tensors' and the updates' (final - initial) relative differences,
    "answers": greedy answers of both (with `generation`), "settings": what ran}."""
    from xlit_jax.perf import torch_reference  # torch: an optional extra, imported by the twin alone

    check(cfg)
    config, params, tokenizer, batches = prepare(cfg, steps)
    bf16 = loop.model_overrides(cfg)["dtype"] == "bfloat16"
    with tempfile.TemporaryDirectory(prefix="twin-") as tmp:
        tmp = Path(tmp)
        base = save_hf_dir(config, params, tmp / "base")  # LoRA leaves are not part of it
        adapter = save_trainable(cfg, config, params, tmp / "adapter") if cfg.lora.rank else None
        start = read_tensors(adapter or base)
        jax_rows, final = run_jax(cfg, config, params, batches, log_every)
        del params
        ours = read_tensors(save_trainable(cfg, config, final, tmp / "ours"))
        model = torch_reference.load_model(base, adapter)
    reference = torch_reference.Reference(model, OptimSettings.from_config(cfg), bf16)
    rows = jax_rows + run_torch(reference, batches, log_every)
    theirs = reference.tensors()
    updates = {"ours": {n: ours[n] - start[n] for n in ours}, "theirs": {n: theirs[n] - start[n] for n in theirs}}
    result = {"rows": rows, "diffs": quantity_diffs(rows),
              "params": {"final": tensor_diffs(ours, theirs), "update": tensor_diffs(*updates.values())},
              "settings": {"config": cfg.to_dict(), "steps": steps, "method": "lora" if cfg.lora.rank else "ft",
                           "dtype": "bfloat16" if bf16 else "float32",
                           "seconds_per_update": {s: float(np.median([r["seconds"] for r in rows if r["side"] == s]))
                                                  for s in SIDES}}}
    if generation and generation.prompts:
        result["answers"] = generate(cfg, config, final, tokenizer, reference, generation)
    return result


def table(result: dict) -> str:
    """The differences as a markdown table: each quantity's relative difference at the first and the last
    update, its max and mean over the run; the final tensors' and the updates'."""
    e = lambda x: f"{x:.1e}"  # noqa: E731
    rows = [[q, e(d["first"]), e(d["last"]), e(d["max"]), e(d["mean"])] for q, d in result["diffs"].items()]
    for name, p in result["params"].items():
        rows.append([f"{name} tensors, all", "", e(p["all"]), "", ""])
        rows.append([f"{name} tensors, worst ({p['worst']})", "", e(p["max"]), "", ""])
    if "answers" in result:
        same = sum(a["same"] for a in result["answers"])
        rows.append(["greedy answers identical", "", f"{same}/{len(result['answers'])}", "", ""])
    return markdown_table(["relative difference", "first update", "last update", "max", "mean"], rows)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Each quantity of both sides by update, and their relative differences (log scale)."""
    fig, axes = plt.subplots(1, len(QUANTITIES) + 1, figsize=(4 * (len(QUANTITIES) + 1), 3.4))
    by_side = {s: [r for r in rows if r["side"] == s] for s in SIDES}
    updates = [r["update"] for r in by_side["jax"]]
    for ax, q in zip(axes, QUANTITIES):
        for side, style in zip(SIDES, ("-", "--")):
            ax.plot(updates, [r[q] for r in by_side[side]], style, label=side)
        ax.set(title=q, xlabel="update")
    axes[0].legend()
    for q in QUANTITIES:
        rel = [max(abs(a[q] - b[q]) / max(abs(b[q]), 1e-30), 1e-12) for a, b in zip(by_side["jax"], by_side["torch"])]
        axes[-1].semilogy(updates, rel, label=q)
    axes[-1].set(title="|jax - torch| / |torch|", xlabel="update")
    axes[-1].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(result: dict, out: Path, title: str) -> str:
    """updates.jsonl (a row per side and update), summary.json (all but the rows), diffs.md (the table),
    answers.jsonl and curves.png into `out`; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "updates.jsonl", "".join(json.dumps(r) + "\n" for r in result["rows"]))
    summary = {k: v for k, v in result.items() if k != "rows"}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if "answers" in result:
        atomic_write_text(out / "answers.jsonl", "".join(json.dumps(a, ensure_ascii=False) + "\n"
                                                         for a in result["answers"]))
    text = table(result)
    atomic_write_text(out / "diffs.md", f"{title}\n\n{text}\n")
    plot(result["rows"], out / "curves.png", title)
    return text
