"""The one interface of the instruction evaluation's scorers (language, spelling, relevance, the GPT-style
judge, modifier fulfilment): the run gives each scorer the items it `applies` to, `chunk_size` at a time,
and appends what `score` returns to item_scores.jsonl under the scorer's `name`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from xlit_jax.evaluate.instructions.evalsets import EvalItem


@runtime_checkable
class Scorer(Protocol):
    name: str  # the `scorer` field of its rows in item_scores.jsonl
    chunk_size: int  # responses per `score` call, and per append to item_scores.jsonl

    def applies(self, item: EvalItem) -> bool:
        """Whether this scorer scores `item` (every item, unless a scorer says otherwise)."""
        return True

    def score(self, items: list[EvalItem], responses: list[str]) -> list[dict]:
        """One result per item, in order: {"scores": {metric: value}, "details": {...}} (scores may be
        empty: the response was left out), or {"error": "..."} to be retried by the next run."""
        ...
