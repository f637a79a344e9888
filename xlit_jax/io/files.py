"""Atomic file output: a reader never sees half a file, and a crash leaves the old version intact."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from xlit_jax.errors import InputError


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike):
    """Yield a temp dir beside `directory`; on success it replaces `directory` in one rename."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def csv_text(rows, fields) -> str:
    """`rows` (dicts) as CSV text with a header of `fields`; keys outside `fields` are left out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def append_jsonl(path: str | os.PathLike, rows) -> None:
    """Append rows and flush to disk, so finished work survives a crash of the writer."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark some editors write at the start of a file


def read_jsonl(path: str | os.PathLike, truncated_tail_ok: bool = False, skipped: list | None = None):
    """Yield (line_number, object) for each non-blank line (a UTF-8 byte-order mark is allowed); a line
    that is malformed JSON or not UTF-8 is an InputError naming it, or, when a `skipped` list is given,
    its error message is appended there and the line left out.

    `truncated_tail_ok` ignores a last line with no newline that does not parse: the mark of a writer that
    was killed mid-line, as an output file being resumed may have.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    lines = data.removeprefix(BOM).splitlines(keepends=True)
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            error = f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start + 1} of the line)"
        except json.JSONDecodeError as e:
            if truncated_tail_ok and number == len(lines) and not raw.endswith(b"\n"):
                return
            error = f"{path}:{number}: malformed JSON: {e.msg} (column {e.colno})"
        else:
            yield number, row
            continue
        if skipped is None:
            raise InputError(error) from None
        skipped.append(error)


def resume_jsonl(path: str | os.PathLike) -> list[dict]:
    """The complete rows of an append-only output file, cutting off a half-written last line (a killed
    writer's) so that new rows can be appended after it."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    return [row for _, row in read_jsonl(path)]
