"""Per-task results written as they are made (JSON Lines), so a long run can stop anywhere and resume.

Line 1 says what the run is: ``{"llm_int8_task_log": 1, "header": {...}}`` (the model, the data
file); a resumed run must have the same header. Every further line is one record, appended,
flushed and synced to disk before the next task starts: ``{"method": ..., "task": index, ...}``.
A run killed mid-write leaves at most one torn last line (no newline): resuming cuts it off and
scores that task again; a damaged line anywhere else is an error naming the file and the line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["TaskLog", "read_task_log"]

_MAGIC = "llm_int8_task_log"


def _parse(path: Path, raw: bytes) -> tuple[dict, list[dict], int]:
    """(header, records, length of the complete lines in bytes); a torn last line is left out."""
    end = raw.rfind(b"\n") + 1  # bytes up to the last newline: complete lines only
    lines = raw[:end].decode("utf-8", errors="replace").split("\n")[:-1]
    if not lines:
        raise ValueError(f"{path}: line 1: no header (an empty or torn per-task log)")
    try:
        first = json.loads(lines[0])
    except json.JSONDecodeError:
        first = None
    if not isinstance(first, dict) or first.get(_MAGIC) != 1 or not isinstance(first.get("header"), dict):
        raise ValueError(f"{path}: line 1: not an llm-int8 per-task log header")
    records = []
    for lineno, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {lineno}: not a JSON record ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("method"), str) or "task" not in record:
            raise ValueError(f"{path}: line {lineno}: a record needs 'method' (text) and 'task'")
        records.append(record)
    return first["header"], records, end


def read_task_log(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """(header, records) of a per-task log; a torn last line (an interrupted write) is ignored."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"per-task log not found: {p}")
    header, records, _ = _parse(p, p.read_bytes())
    return header, records


class TaskLog:
    """Append-only per-task records in ``path``; ``resume=True`` continues a log with the same ``header``.

    Without ``resume`` the file must not exist yet (or be empty), so no result is ever overwritten.
    """

    def __init__(self, path: str | os.PathLike, header: dict, resume: bool = False) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(header))  # as it reads back from the file
        self._records: dict[tuple[str, object], dict] = {}
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and not resume:
            raise FileExistsError(f"{self.path} exists: pass --resume to continue it, or give another file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        has_header = exists and self._load()
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the run, closed by close()
        if not has_header:
            self._write({_MAGIC: 1, "header": self.header})

    def _load(self) -> bool:
        """Read the records of an existing log; False if it holds not even a whole header line."""
        raw = self.path.read_bytes()
        if b"\n" not in raw:  # killed while writing its header: start it again
            self.path.write_bytes(b"")
            return False
        header, records, end = _parse(self.path, raw)
        for key in sorted(set(header) | set(self.header)):
            if header.get(key) != self.header.get(key):
                raise ValueError(
                    f"{self.path}: written by another run ({key}: {header.get(key)!r}, now {self.header.get(key)!r}); "
                    "resume with the same settings or give another file"
                )
        for record in records:
            self._records[(record["method"], record["task"])] = record
        if end < len(raw):  # a torn last line from an interrupted write: cut it off, redo that task
            with open(self.path, "r+b") as f:
                f.truncate(end)
        return True

    def _write(self, obj: dict) -> None:
        self._file.write((json.dumps(obj) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def done(self, method: str) -> dict:
        """``{task: record}`` already in the log for ``method``."""
        return {task: r for (m, task), r in self._records.items() if m == method}

    def append(self, record: dict) -> None:
        """Write one record (with ``method`` and ``task``) to disk before returning."""
        if not isinstance(record.get("method"), str) or "task" not in record:
            raise ValueError("a record needs 'method' (text) and 'task'")
        self._write(record)
        self._records[(record["method"], record["task"])] = record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TaskLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
