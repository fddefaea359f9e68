"""JSON Lines in and out. Reading names the file and line of any broken line; writing is atomic, and a
disk that fills up mid-write is one clear error (the partial file is removed, the old file kept)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from traitloop.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every non-blank line as a dict. A broken line is a UserError naming file and line number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}, line {number}: not valid JSON ({err.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def jsonl_problem(path: str | Path) -> str | None:
    """What is wrong with a JSONL file that traitloop wrote itself (write_jsonl), or None when nothing is:
    a line that is not a JSON object, or a last line without its newline (the file was cut off). Reads
    the file without raising, for the run store's checks before it resumes."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if data and not data.endswith(b"\n"):
        last = data.count(b"\n") + 1
        return f"its last line (line {last}) is cut off: the file was not written completely"
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"line {number} is not valid JSON"
        if not isinstance(row, dict):
            return f"line {number} is not a JSON object"
    return None


def is_disk_full(err: BaseException) -> bool:
    """An error (or one it was raised from) that means the disk or the quota is full."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return True
        text = str(err)
        if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            return True  # safetensors (Rust) reports it as text
        err = err.__cause__ or err.__context__
    return False


def disk_full_error(path: str | Path) -> UserError:
    """The one message for a write that ran out of space."""
    path = Path(path)
    return UserError(
        f"{path}: no space left on the device while writing it; the partial file was removed and nothing finished "
        f"was lost. Free some space on the disk that holds {path.parent} (df -h {path.parent}) and rerun the same "
        "command: it resumes at this stage"
    )


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see old or new, never half.
    A full disk is a UserError naming the file ("no space left"), with the temporary file removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_disk_full(err):
            raise disk_full_error(path) from None
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
