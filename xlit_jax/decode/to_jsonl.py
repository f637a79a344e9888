"""Generate for a list of keyed prompts into an append-only JSONL, resuming what a previous run finished."""

from __future__ import annotations

import os

from absl import logging

from xlit_jax.decode.engine import PromptTooLong
from xlit_jax.errors import InputError
from xlit_jax.io.files import append_jsonl, output_lock, resume_jsonl


def generate_to_jsonl(model, rows: list[dict], out: str | os.PathLike, *, max_new_tokens: int,
                      repetition_penalty: float, slots: int) -> list[dict]:
    """rows: {"id", "prompt", ...}; each output row is the input row (minus the prompt) plus "output",
    "model", "decoding", "prompt_tokens", "new_tokens". Rows whose id is already in `out` are not generated
    again; `out` made by another model or with other decoding settings is refused (finished_rows).
    Each result is appended as its sequence finishes, so a killed run loses only the unfinished ones
    (at most `slots`, the decoding engine's); a second run on the same `out` is refused while this one
    writes (io.files.output_lock). Returns all output rows in the order of `rows`."""
    with output_lock(out):
        return _generate_to_jsonl(model, rows, out, decoding_record(max_new_tokens, repetition_penalty), slots)


def decoding_record(max_new_tokens: int, repetition_penalty: float) -> dict:
    """The settings each output row records as "decoding", and a rerun must match (as xlit-eval's generations)."""
    return {"max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty}


def finished_rows(out: str | os.PathLike, model_name: str, decoding: dict) -> dict[str, dict]:
    """The rows of `out` by id, after checking that each was made by `model_name` with `decoding`: a rerun
    adds to one model's outputs under one setting, never a mix (rows of older versions, which recorded no
    decoding, are taken as made with this run's)."""
    finished = {}
    for number, row in enumerate(resume_jsonl(out), 1):  # our rows are one per line
        made = (row.get("model"), row.get("decoding", decoding))
        if made != (model_name, decoding):
            raise InputError(f"{out}:{number}: made by model {made[0]!r} with {made[1]}, but this run uses "
                             f"{model_name!r} with {decoding}; use another output or the same model and settings")
        finished[str(row["id"])] = row
    return finished


def _generate_to_jsonl(model, rows, out, decoding, slots) -> list[dict]:
    finished = finished_rows(out, model.name, decoding)
    todo = [r for r in rows if str(r["id"]) not in finished]
    logging.info("%d prompts, %d already done, %d to generate", len(rows), len(rows) - len(todo), len(todo))
    if todo:
        ids = [model.encode(r["prompt"]) for r in todo]

        def write(index, out_ids):
            row = {**{k: v for k, v in todo[index].items() if k != "prompt"},
                   "output": model.tokenizer.decode(out_ids, skip_special_tokens=True), "model": model.name,
                   "decoding": decoding, "prompt_tokens": len(ids[index]), "new_tokens": len(out_ids)}
            append_jsonl(out, [row])
            finished[str(row["id"])] = row
            logging.info("%d/%d responses written to %s", len(finished), len(rows), out)

        try:
            model.generate_ids(ids, decoding["max_new_tokens"], decoding["repetition_penalty"], slots,
                               on_finished=write)
        except PromptTooLong as e:  # raised before any decoding
            raise e.named(f"prompt id {todo[e.index]['id']!r}") from None
    return [finished[str(r["id"])] for r in rows]
