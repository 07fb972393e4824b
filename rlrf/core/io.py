"""Run directories and append-only JSON Lines files that survive being killed.

Stages write one record per line and flush each batch, so a killed stage loses at most the line it
was writing. On restart `JsonlLog` drops a torn last line, reports which keys are already done, and
the stage writes only the missing ones: every key ends up exactly once.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rlrf.core.errors import UserError


def atomic_write_text(path: Path, text: str) -> None:
    """Write a whole file or nothing: readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """A whole JSONL file at once (one record per line), never half-written."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    """All complete records; a torn last line (from a kill mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    with path.open("r", encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) and not line.endswith("\n"):
                break  # torn tail: the writer was killed mid-line
            raise UserError(f"{path}: line {number} is not valid JSON") from None
    return records


class JsonlLog:
    """An append-only JSONL file keyed by `key(record)`, resumable after a kill."""

    def __init__(self, path: Path, key: Callable[[dict], Any]):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_torn_tail()
        self.done: set = {key(r) for r in read_jsonl(self.path)}

    def _truncate_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(keep)

    def append(self, records: Iterable[dict]) -> int:
        """Append records whose key is not yet present; returns how many were written.

        Two commands may fill one file at once (`rlrf export` and `rlrf experiment` share the
        knowledge store), so the append holds an exclusive lock and first takes in the keys the
        other writer added since: each key is still written exactly once.
        """
        records = list(records)
        if not records:
            return 0
        with self.path.open("ab") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                self._truncate_torn_tail()
                self.done |= {self.key(r) for r in read_jsonl(self.path)}
                fresh = []
                for record in records:
                    k = self.key(record)
                    if k not in self.done:
                        self.done.add(k)
                        fresh.append(json.dumps(record, ensure_ascii=False) + "\n")
                if fresh:
                    f.write("".join(fresh).encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return len(fresh)

    def __iter__(self) -> Iterator[dict]:
        return iter(read_jsonl(self.path))

    def __contains__(self, key: Any) -> bool:
        return key in self.done


def read_json(path: Path) -> Any:
    """A JSON file written by atomic_write_json, or None when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON") from None
