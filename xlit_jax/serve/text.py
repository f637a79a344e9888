"""From generated ids to the text a client gets: stop sequences, token counts, and streaming deltas."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop sequence) or "length"


def stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop sequence starts in `text`, or None."""
    hits = [text.find(stop) for stop in stops if stop in text]
    return min(hits) if hits else None


def finish(tokenizer, ids: list[int], finish_reason: str, stops: tuple[str, ...]) -> Completion:
    """The text of `ids` (EOS stripped) cut before the first stop sequence. Completion tokens are those
    generated up to where decoding would have stopped: EOS counts, and with a stop sequence, the fewest
    tokens whose text contains it."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    position = stop_at(text, stops)
    if position is not None:
        return Completion(text[:position], _tokens_reaching(tokenizer, ids, stops), "stop")
    if finish_reason == "stop":  # the engine stripped the EOS
        return Completion(text, len(ids) + 1, "stop")
    return Completion(text, len(ids), "length")


def settled(text: str, stops: tuple[str, ...]) -> int:
    """How much of a growing `text` can be streamed now: not a trailing partial character (the tokenizer
    shows it as U+FFFD) nor the tail that could be the start of a stop sequence."""
    end = len(text.rstrip("\ufffd"))
    return max(0, end - max((len(s) - 1 for s in stops), default=0))


def _tokens_reaching(tokenizer, ids: list[int], stops: tuple[str, ...]) -> int:
    """The smallest k such that the text of ids[:k] contains a stop (binary search: it only grows)."""
    low, high = 1, len(ids)
    while low < high:
        middle = (low + high) // 2
        if any(stop in tokenizer.decode(ids[:middle], skip_special_tokens=True) for stop in stops):
            high = middle
        else:
            low = middle + 1
    return low
