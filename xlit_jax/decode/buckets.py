"""Shape buckets: sizes rounded up so that a whole run compiles a handful of programs."""

from __future__ import annotations

MIN_PROMPT_BUCKET = 32


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def prompt_bucket(n: int) -> int:
    """The smallest of 32, 48, 64, 96, 128, 192, ... (powers of two and 1.5x them) >= n: a length is padded
    by at most a third instead of up to half, for twice the compilations (docs/performance.md)."""
    power = bucket(n, MIN_PROMPT_BUCKET)
    three_quarters = power * 3 // 4
    return three_quarters if n <= three_quarters and three_quarters >= MIN_PROMPT_BUCKET else power
