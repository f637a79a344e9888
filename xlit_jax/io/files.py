"""Atomic file output: a reader never sees half a file, and a crash or a full disk leaves the old version intact.

A write that fails at the filesystem (no space, quota, file size limit, permissions) is a UserError naming
the file and the OS error: the binaries report it in one line and the same command, rerun once there is room,
carries on. Append-only outputs (keyed JSONL) never keep a damaged line: resuming one sets it aside and the
work it held is redone.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import functools
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from xlit_jax.errors import InputError, UserError, WeightsError

log = logging.getLogger(__name__)
DAMAGED_SUFFIX = ".damaged"  # resume_jsonl moves an output's damaged lines to PATH.damaged


def os_errno(error: BaseException) -> int | None:
    """The errno behind a failed write: from an OSError in the exception chain, or from the text TensorStore
    (Orbax) and safetensors wrap it in; None if there is none."""
    while error is not None:
        if isinstance(error, OSError) and error.errno:
            return error.errno
        found = re.search(r"os_error_code='(\d+)'|\(os error (\d+)\)", str(error))
        if found:
            return int(found.group(1) or found.group(2))
        error = error.__cause__ or error.__context__
    return None


def os_error(error: BaseException) -> str | None:
    """The OS error behind a failed write, as "[Errno 28] No space left on device", or None."""
    code = os_errno(error)
    return None if code is None else f"[Errno {code}] {os.strerror(code)}"


@contextlib.contextmanager
def reported_os_errors(describe):
    """Turn an error that the filesystem caused (a full disk, a quota) into a UserError whose message is
    `describe(the OS error)`; any other error passes through."""
    try:
        yield
    except Exception as e:
        reason = os_error(e)
        if reason is None:
            raise
        raise UserError(describe(reason)) from None


NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # the disk, the quota or the file size limit is full
NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_advice(code: int | None) -> str:
    """What to do about a write that failed with errno `code`: room, permission, or the path itself."""
    if code in NO_ROOM:
        return "free space (or raise the quota) and rerun the same command: finished work is kept"
    if code in NO_PERMISSION:
        return "permission denied: make it writable (or choose another output) and rerun the same command"
    return "fix the path (or choose another output) and rerun the same command"


@contextlib.contextmanager
def reported_write(path: str | os.PathLike):
    """A write of `path` that fails at the filesystem is one line naming `path`, the OS error and what to do."""
    try:
        yield
    except Exception as e:
        code = os_errno(e)
        if code is None:
            raise
        raise UserError(f"cannot write {path}: [Errno {code}] {os.strerror(code)}; {write_advice(code)}") from None


def make_folder(path: str | os.PathLike) -> None:
    """mkdir -p, where a path that exists as something other than a folder says what it is (mkdir says
    "File exists" for a symlink loop or a dangling link too)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        path.stat()  # raises the real reason: a symlink loop (ELOOP), a dangling link (ENOENT)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None


def check_writable(path: str | os.PathLike, folder: bool = False) -> None:
    """A UserError now, before any slow work, if `path` (an output file, or with `folder` an output folder)
    cannot be written: no permission, a read-only filesystem, a symlink loop, a folder where a file should be.
    A missing folder is made; a missing file is created and removed again."""
    path = Path(path)
    with reported_write(path):
        make_folder(path if folder else path.parent)
        if folder:
            probe = tempfile.TemporaryFile(dir=path)
            probe.close()
        elif path.exists():
            open(path, "ab").close()
        else:
            open(path, "xb").close()
            path.unlink()


@functools.cache
def umask() -> int:
    """The process's umask, read once: from /proc (Linux), else by setting and restoring it (which is not
    thread-safe, so it is done once, early)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike, folder: bool = False) -> None:
    """mkstemp and mkdtemp make 0600 files and 0700 folders; an output renamed into place gets the mode any
    new file of this process would (0666 or 0777, less the umask)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


# What marks a folder as a user's work that no binary replaces, even when asked to: a training run, an
# evaluation, a study (the names their writers use: train/metrics.py, evaluate/, study/).
WORK_MARKERS = {"experiment.json": "a training run", "checkpoints": "a training run", "metrics.jsonl": "a training run",
                "generations.jsonl": "an evaluation", "item_scores.jsonl": "an evaluation", "study.json": "a study",
                "cells": "a study"}


def check_replaceable(directory: str | os.PathLike, overwrite: bool, flag: str = "--overwrite") -> None:
    """A UserError unless `directory` may be written whole: it does not exist, is empty, or `overwrite` is
    given and it holds no training run, evaluation or study (those are never replaced). Cheap: binaries call
    it before any slow work."""
    target = Path(os.path.abspath(directory))  # "" and "." are the current folder, ".." the one above it
    if not target.exists():
        return
    if not target.is_dir():
        raise UserError(f"{target}: exists and is not a folder; choose another output folder")
    around = _surrounding(target.resolve())
    if around:
        raise UserError(f"{target}: is {around}; it is never replaced: choose another output folder")
    marker = next((name for name in WORK_MARKERS if (target / name).exists()), None)
    if marker:
        raise UserError(f"{target}: holds {WORK_MARKERS[marker]} ({marker}); it is never replaced: "
                        "choose another output folder")
    if any(target.iterdir()) and not overwrite:
        raise UserError(f"{target}: exists and is not empty; pass {flag} to replace it, or choose another folder")


def _surrounding(folder: Path) -> str | None:
    """What `folder` is, when replacing it would take more than an output: the root, a home folder, or a folder
    the current one is in (a mistyped or empty output path resolves there)."""
    if folder == Path(folder.anchor):
        return "the filesystem's root"
    if folder == Path.home().resolve():
        return "the home folder"
    if Path.cwd().is_relative_to(folder):
        return "the current folder or one above it"
    return None


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, overwrite: bool = False):
    """Yield a temp dir beside `directory`; on success it replaces `directory` in one rename. An existing
    folder is replaced only as check_replaceable allows."""
    target = Path(os.path.abspath(directory))  # a name and a parent even for "." or ".."
    check_replaceable(target, overwrite)
    with reported_write(target):
        make_folder(target.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            yield tmp
            honour_umask(tmp, folder=True)
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


def markdown_row(cells: list) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table of `rows` (cells formatted by the caller, str() of anything else); with no rows, its
    head, to print rows one by one under (markdown_row)."""
    return "\n".join([markdown_row(header), "|" + "---|" * len(header)] + [markdown_row(row) for row in rows])


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    with reported_write(path):
        make_folder(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            honour_umask(tmp)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def append_jsonl(path: str | os.PathLike, rows) -> None:
    """Append rows and flush to disk, so finished work survives a crash of the writer; a write that fails
    (a full disk) is cut off again, so the file never ends in part of a row."""
    data = memoryview("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))
    with reported_write(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
        finally:
            os.close(fd)


_held_locks: set[Path] = set()  # output locks this process holds: taking one again is a no-op


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, folder: bool = False):
    """Hold `path` (an append-only output file, or with `folder` an output folder) for this process while it
    writes there: a second writer is refused in one line instead of writing the same keys again. The lock is
    an flock, released when the process ends however it ends: on the folder itself (made if missing), or on
    .NAME.lock beside a file. A binary takes it before loading a model, the writer again around its writes;
    taking it first checks that `path` can be written (check_writable), so an unwritable output is found then
    too."""
    path = Path(path)
    target = path.absolute() if folder else path.with_name(f".{path.name}.lock").absolute()
    if target in _held_locks:
        yield
        return
    check_writable(path, folder)
    with reported_write(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY if folder else os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{path}: another run is writing it now; wait for it to end or choose another "
                            "output") from None
        _held_locks.add(target)
        try:
            yield
        finally:
            _held_locks.discard(target)
    finally:
        os.close(fd)


BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark some editors write at the start of a file
# json raises RecursionError (no JSONDecodeError) on arrays or objects nested deeper than about the
# recursion limit (1,000): no real record is; a hostile or broken file may be
TOO_DEEP = f"nested too deeply (JSON deeper than about {sys.getrecursionlimit()} levels is not read)"


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A user's UTF-8 text file (a prompt template, say); a missing one is an InputError naming it as `what`."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None


def read_json(path: Path, hint: str = "") -> dict:
    """A model's JSON file (a config, a weights index); a missing or malformed one is a WeightsError naming it,
    followed by `hint` (what to do about it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        where = f"{path}: missing"
    except json.JSONDecodeError as e:
        where = f"{path}:{e.lineno}: invalid JSON: {e.msg}"
    except RecursionError:
        where = f"{path}: {TOO_DEEP}"
    except UnicodeDecodeError:
        where = f"{path}: not UTF-8 text"
    raise WeightsError(where + hint)


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
        except RecursionError:
            error = f"{path}:{number}: {TOO_DEEP}"
        else:
            yield number, row
            continue
        if skipped is None:
            raise InputError(error) from None
        skipped.append(error)


def _output_rows(path: Path, truncated_tail_ok: bool) -> tuple[dict[int, dict], list[str]]:
    """An output file's rows by line number, and an error message for each damaged line (not UTF-8, not
    JSON, or not a JSON object)."""
    errors = []
    rows = {}
    for number, row in read_jsonl(path, truncated_tail_ok, skipped=errors):
        if isinstance(row, dict):
            rows[number] = row
        else:
            errors.append(f"{path}:{number}: not a JSON object")
    return rows, errors


def read_output_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a keyed output file that may be being written or resumed (for reports and status): a
    half-written last line is ignored, a damaged line is logged by file and line and left out."""
    rows, errors = _output_rows(Path(path), truncated_tail_ok=True)
    for error in errors:
        log.warning("%s: left out (the run that resumes this file redoes it)", error)
    return list(rows.values())


def resume_jsonl(path: str | os.PathLike) -> list[dict]:
    """The complete rows of an append-only output file, to append new ones after. A half-written last line
    (a killed writer's) is cut off; a damaged line anywhere else (a failing disk, an editor) is logged by
    file and line, moved to PATH.damaged and taken out of the file, so its work is redone, never trusted."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    rows, errors = _output_rows(path, truncated_tail_ok=False)
    if errors:
        lines = path.read_bytes().removeprefix(BOM).splitlines(keepends=True)
        damaged = [line for number, line in enumerate(lines, 1) if line.strip() and number not in rows]
        with reported_write(path), open(f"{path}{DAMAGED_SUFFIX}", "ab") as f:
            f.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in damaged))
        atomic_write_text(path, "".join(lines[n - 1].decode("utf-8") for n in rows))
        for error in errors:
            log.warning("%s: damaged, moved to %s%s; its work is redone", error, path, DAMAGED_SUFFIX)
    return list(rows.values())
