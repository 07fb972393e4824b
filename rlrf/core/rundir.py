"""A run directory belongs to one dataset and config, and has one writer at a time.

What a run directory already holds was made under its saved `config.yaml`; a later command that
disagrees with it on the keys below would add files of another dataset (or model) beside the old
ones, and the mix would look like one run. So a writing command compares first and stops, naming
every key that differs:

| keys | what already made under them would be wrong |
|---|---|
| `seed`, `data.*` | everything: the user split, lists.jsonl, data.json, and all built on them |
| `sasrec.*` (when either config enables SASRec) | candidates.jsonl and SASRec lists |
| `encoder.model`, `encoder.normalize` (once `reward/` exists) | the reward models, trained on those embeddings |
| `llm.model` (once an `iter_<t>/`, `eval/` or `sft/` exists) | responses, pairs and adapters of that policy |

Everything else (sampling, scoring, alignment, loop length, reward settings read at train time) may
change between commands: the stages' own skip rules and record keys keep those runs consistent.

Two processes writing one run directory at once would each redo the other's work and race on its
whole files; a writing command therefore holds an exclusive `flock` on a file in the directory for
its whole life. The kernel drops the lock when the process exits or is killed, so a lock file left
by a dead process is simply taken over; commands that only read are never blocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_json
from rlrf.core.layout import RunLayout


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def _same(old: Any, new: Any) -> bool:
    if old == new:
        return True
    if isinstance(old, str) and isinstance(new, str):  # one folder spelt two ways
        return Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
    return False


def identity_keys(saved: dict, layout: RunLayout) -> list[str]:
    """The dotted prefixes that define what `layout` already holds (the table above)."""
    keys = ["seed", "data."]
    if (saved.get("sasrec") or {}).get("enabled", True):
        keys.append("sasrec.")
    if layout.reward.exists():
        keys += ["encoder.model", "encoder.normalize"]
    if any(layout.root.glob("iter_*")) or (layout.root / "eval").exists() or layout.sft.parent.exists():
        keys.append("llm.model")
    return keys


def config_differences(cfg, layout: RunLayout | None = None) -> list[str]:
    """`key: old -> new` for each identity key on which `cfg` disagrees with the run's saved config."""
    layout = layout or RunLayout(cfg.run_dir)
    if not layout.config.is_file():
        return []
    try:
        saved = yaml.safe_load(layout.config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise UserError(f"{layout.config}: not a readable config; this run directory's config is damaged") from None
    current = cfg.model_dump(mode="json")
    keys = identity_keys(saved, layout)
    if current.get("sasrec", {}).get("enabled") and "sasrec." not in keys:
        keys.append("sasrec.")
    old, new = _flat(saved), _flat(current)
    watched = sorted(k for k in set(old) | set(new) if any(k == p or (p.endswith(".") and k.startswith(p)) for p in keys))
    return [f"{k}: {_show(old.get(k))} -> {_show(new.get(k))}" for k in watched
            if k in old and not _same(old.get(k), new.get(k))]


def _show(value: Any) -> str:
    return json.dumps(value)


def check_same_run(cfg) -> None:
    """Stop before anything is written when `cfg` disagrees with what the run directory holds."""
    layout = RunLayout(cfg.run_dir)
    differences = config_differences(cfg, layout)
    if differences:
        raise UserError(
            f"{layout.root} holds a run made with another config ({'; '.join(differences)}): "
            f"continue it with its own config (no -c, or -c {layout.config}), or give this config another --run-dir")


@contextlib.contextmanager
def writer_lock(root: Path, command: str) -> Iterator[None]:
    """Hold the run directory's writer lock for the body; refuse (one line naming the holder) when a
    live process holds it. A directory this call had to create is removed again if the body wrote
    nothing into it, so a command that fails early leaves nothing behind."""
    root = Path(root)
    created = [p for p in (root, *root.parents) if not p.exists()]
    path = RunLayout(root).writer_lock
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{root}: {_holder(fd)} is writing this run directory; wait for it to finish "
                            "or use another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command,
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode() + b"\n", 0)
        yield
    finally:
        if created and [p.name for p in root.iterdir()] == [path.name]:
            path.unlink()
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        os.close(fd)  # closing the only descriptor releases the flock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} ({info['command']}, since {info['since']})"
    except (ValueError, KeyError, TypeError):
        return "another rlrf process"


def recorded_wall_time(layout: RunLayout) -> float | None:
    """The seconds `add_wall_time` summed for this (sub-)run; None when no process recorded any."""
    return json.loads(layout.wall_time.read_text())["seconds"] if layout.wall_time.is_file() else None


def add_wall_time(layout: RunLayout, seconds: float) -> float:
    """The (sub-)run's wall time summed over every process that worked on it, so a table written after a
    resume reports what it cost, not what the last (mostly cached) process spent."""
    total = round((recorded_wall_time(layout) or 0.0) + seconds, 1)
    atomic_write_json(layout.wall_time, {"seconds": total})
    return total
