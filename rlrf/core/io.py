"""Run directories and append-only JSON Lines files that survive being killed.

Stages write one record per line and flush each batch, so a killed stage loses at most the line it
was writing. On restart `JsonlLog` drops a torn last line, reports which keys are already done, and
the stage writes only the missing ones: every key ends up exactly once. Every other reader goes
through `read_jsonl`, which refuses a torn file with one line instead of reading part of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rlrf.core.errors import UserError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """A whole file or nothing: `write(tmp)` fills `.<name>.tmp` beside `path`, which then replaces it.

    The one write-then-rename of rlrf: readers never see half a file, and a writer killed midway
    leaves only the temporary file, which the next write of the same path overwrites."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(final: Path, tag: str = "") -> Iterator[Path]:
    """A whole folder or nothing: fill the yielded temporary folder; on success it replaces `final`.

    `tag` separates concurrent writers of one folder (e.g. the pid); a leftover with the same tag
    from a killed run is cleared first, and nothing of a failed attempt stays behind."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp{tag}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old{tag}"
            shutil.rmtree(old, ignore_errors=True)
            final.replace(old)
            tmp.replace(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a whole file or nothing: readers never see half of it."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """A whole JSONL file at once (one record per line), never half-written."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    """All records of a JSONL file; the one reader every stage uses.

    A torn last line (its writer was killed mid-line) is refused with one line naming the file and
    line, never skipped: a stage must not go on with a partial set. Only the file's own writer
    repairs it (`JsonlLog` truncates the torn tail when it opens the file to resume). Reading holds
    a shared lock, so a `JsonlLog.append` in another process is never seen half-written.
    """
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a JSON Lines file")
    with path.open("rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        try:
            data = f.read()
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return _parse_jsonl(path, data)


def _parse_jsonl(path: Path, data: bytes) -> list[dict]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not valid utf-8") from None
    lines = text.split("\n")  # the last piece is "" when the file ends with a newline
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: its writer was stopped mid-line
                raise UserError(f"{path}: line {number} is cut short (its writer was stopped mid-line); "
                                "re-run the stage that writes this file to repair it") from None
            raise UserError(f"{path}: line {number} is not valid JSON") from None
    return records


class JsonlLog:
    """An append-only JSONL file keyed by `key(record)`, resumable after a kill."""

    def __init__(self, path: Path, key: Callable[[dict], Any]):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set = set()
        if self.path.exists():
            with self.path.open("ab") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                try:
                    self.done = {key(r) for r in self._repair_and_read()}
                finally:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _repair_and_read(self) -> list[dict]:
        """Truncate a torn tail (only this file's writer may), then every record. Call holding the lock."""
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a directory, not a JSON Lines file")
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        return _parse_jsonl(self.path, data)

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
                self.done |= {self.key(r) for r in self._repair_and_read()}
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

    def drop(self, keys: set) -> None:
        """Rewrite the file without the records of `keys` (whole or not at all), under the lock.
        The file is replaced, so a writer that opened it before waits on the old copy: for logs with
        one writer (a run directory's scores), not for the shared knowledge store."""
        if not keys or not self.path.exists():
            return
        with self.path.open("ab") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                keep = [r for r in self._repair_and_read() if self.key(r) not in keys]
                atomic_write_jsonl(self.path, keep)
                self.done = {self.key(r) for r in keep}
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def __iter__(self) -> Iterator[dict]:
        return iter(read_jsonl(self.path))

    def __contains__(self, key: Any) -> bool:
        return key in self.done


# ---------------------------------------------------------------------------------------------
# Model files: safetensors only. A torch.save file can run arbitrary code when loaded, so rlrf never
# writes one and never loads one (no torch.load anywhere).


def save_state_dict(path: Path, state_dict: dict, metadata: dict[str, str] | None = None) -> None:
    """A state dict as one safetensors file, written whole or not at all (tmp file + rename)."""
    from safetensors.torch import save

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    tmp.write_bytes(save(tensors, metadata=metadata))  # (save_file would create it mode 0600)
    tmp.replace(path)


def read_safetensors(path: Path, hint: str) -> tuple[dict, dict[str, str]]:
    """(tensors, header metadata) of a safetensors file; anything else is a one-line UserError.

    A torch.save file (an older rlrf's checkpoint, or a planted one) is refused with one line; its
    bytes are only parsed as a safetensors header, never executed. `hint` says how to make it again.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; {hint}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        with path.open("rb") as f:
            head = f.read(2)
        if head == b"PK" or head[:1] == b"\x80":  # torch.save's zip archive, or its legacy format
            raise UserError(f"{path}: a torch.save file (an older rlrf's format), which rlrf never loads because "
                            f"loading one can run code; delete it and {hint}") from None
        raise UserError(f"{path}: not a safetensors file ({err}); delete it and {hint}") from None
    return tensors, metadata


def read_json(path: Path) -> Any:
    """A JSON file written by atomic_write_json, or None when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON") from None
