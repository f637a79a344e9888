"""When a training plan does not fit: the changes to try, smallest first, and the first that fits."""

from __future__ import annotations

from xlit_jax.data import pipeline
from xlit_jax.plan.training import plan_training


def fit_suggestions(cfg):
    """Changes to try, smallest first, when a plan does not fit: (what to pass, the changed config)."""
    options = []
    order = ("none", "dots", "full")
    for remat in order[order.index(cfg.model.remat) + 1:]:
        options.append((f"--config.model.remat={remat}", {"model.remat": remat}))
    d = cfg.data
    rows = pipeline.batch_size_for(d.tokens_per_batch, d.seq_len)
    while rows > 1 and rows % 2 == 0:
        rows //= 2
        accum = d.grad_accum * (pipeline.batch_size_for(d.tokens_per_batch, d.seq_len) // rows)
        options.append((f"--config.data.tokens_per_batch={rows * d.seq_len} --config.data.grad_accum={accum}",
                        {"data.tokens_per_batch": rows * d.seq_len, "data.grad_accum": accum}))
    if cfg.mesh.data != 1:
        options.append(("--config.mesh.data=1 --config.mesh.fsdp=-1", {"mesh.data": 1, "mesh.fsdp": -1}))
    return options


def with_changes(cfg, changes: dict):
    new = cfg.copy_and_resolve_references()
    with new.unlocked():
        for key, value in changes.items():
            section, field = key.split(".")
            new[section][field] = value
    return new


def smallest_fitting_change(cfg, devices, target: str):
    """(flags, plan) for the first fitting config along the suggestions, applied cumulatively; None if none
    fits. Each try is a compilation (about a minute for a 7B model)."""
    current, flags = cfg, []
    for flag, changes in fit_suggestions(cfg):
        current, flags = with_changes(current, changes), flags + [flag]
        try:
            plan = plan_training(current, devices, target)
        except ValueError:  # e.g. fewer rows than batch shards: this layout cannot run on the mesh
            continue
        if plan.fits:
            return " ".join(flags), plan
    return None
