"""Progress that people can follow in a terminal and in a log file alike.

rich redraws one bar in a terminal; written to a file it shows only the bar's last state, so a long
stage run under nohup or a scheduler prints nothing for minutes. Outside a terminal the same calls
print one plain line every `every` seconds instead: done/total, rate and ETA. Every writing command
also keeps its console lines, time-stamped, in the run directory's run.log (`run_log`).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
from pathlib import Path
from typing import Iterator


def progress_bar(show: bool = True, *, unit: str = "", every: float = 30.0):
    """A rich Progress (terminal) or a `LineProgress` (log file); both take add_task/update/advance.
    Tasks may carry a `tps` field (tokens per second), shown beside the rate."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if show and not console.is_terminal:
        return LineProgress(every=every, unit=unit)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[tps]:.1f} tok/s" if unit == "tok" else ""), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not show)


class LineProgress:
    """rich.Progress's task API, printed as a line per `every` seconds (and one when a task ends)."""

    def __init__(self, every: float = 30.0, unit: str = "", stream=None):
        self.every, self.unit, self.stream = every, unit, stream or sys.stderr
        self.tasks: list[dict] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description: str, total: float | None = None, **fields) -> int:
        now = time.perf_counter()
        self.tasks.append({"description": description, "total": total, "done": 0.0, "start": now, "printed": now,
                           "fields": fields})
        return len(self.tasks) - 1

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, advance: float | None = None, completed: float | None = None, **fields) -> None:
        t = self.tasks[task]
        t["done"] = completed if completed is not None else t["done"] + (advance or 0)
        t["fields"].update(fields)
        now = time.perf_counter()
        finished = t["total"] is not None and t["done"] >= t["total"]
        if finished or now - t["printed"] >= self.every:
            t["printed"] = now
            print(self.line(t, now), file=self.stream, flush=True)

    def line(self, t: dict, now: float) -> str:
        elapsed = max(now - t["start"], 1e-9)
        rate = t["done"] / elapsed
        total = t["total"]
        parts = [f"{t['description']}: {t['done']:g}/{total:g}" if total else f"{t['description']}: {t['done']:g}"]
        if total:
            parts.append(f"{100 * t['done'] / total:.0f}%")
        parts.append(f"{rate:.2f}/s")
        if "tps" in t["fields"]:
            parts.append(f"{t['fields']['tps']:.1f} tok/s")
        parts.append(f"elapsed {elapsed:.0f} s")
        if total and rate > 0 and t["done"] < total:
            parts.append(f"ETA {(total - t['done']) / rate:.0f} s")
        return ", ".join(parts)


def stage(message: str) -> None:
    """A stage marker (data, reward model, generate, score, align, evaluate) with the time it began,
    so a log shows where the hours went."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# a cursor movement or line erase: a live bar redrawing itself in a terminal, not a line to keep
_REDRAW = re.compile(r"\x1b\[(?:\d*[ABCDK]|\?25[lh])")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CLOCK = re.compile(r"^\d\d:\d\d:\d\d (?=\S)")  # a stage marker's time: the log's own stamp says it


class _Tee(io.TextIOBase):
    """A console stream that also appends each finished line, time-stamped, to a log file: what a
    carriage return overwrote and a terminal bar's redraws are left out, as the eye would."""

    def __init__(self, stream, log: "_LogFile"):
        self.stream, self.log, self.pending = stream, log, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        if not _REDRAW.search(text):
            *lines, self.pending = (self.pending + text).split("\n")
            for line in lines:
                self.log.line(line)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")

    def close_pending(self) -> None:
        if self.pending:
            self.log.line(self.pending)
            self.pending = ""


class _LogFile:
    """The file is only created by the first line, so a command that printed nothing leaves none."""

    def __init__(self, path: Path, header: str):
        self.path, self.header, self.file, self.closed = path, header, None, False

    def line(self, text: str) -> None:
        if self.closed:  # a logging handler that kept the console stream past the command: console only
            return
        text = _CLOCK.sub("", _ANSI.sub("", text.rsplit("\r", 1)[-1]).rstrip())
        if not text:
            return
        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")
            self._write(f"=== {self.header}")
        self._write(text)

    def _write(self, text: str) -> None:
        self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self.file.flush()

    def close(self) -> None:
        self.closed = True
        if self.file is not None:
            self.file.close()


@contextlib.contextmanager
def run_log(path: Path, command: str, companions: tuple[str, ...] | None = None) -> Iterator[None]:
    """Tee stdout and stderr into `path` (a run directory's run.log), each line time-stamped, under a
    header naming the command: a run started in a terminal keeps its record beside its results.
    Appends, so the commands of one run directory follow each other in one file. A log this call
    started in a folder that holds nothing else (but `companions`, e.g. the writer lock) is removed
    again when `companions` is given: a command that failed before writing anything leaves no run
    directory behind."""
    path = Path(path)
    started = not path.exists()
    log = _LogFile(path, command)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = tees = _Tee(streams[0], log), _Tee(streams[1], log)
    try:
        yield
    finally:
        for tee in tees:
            tee.close_pending()
        sys.stdout, sys.stderr = streams
        log.close()
        if companions is not None and started and path.exists() and {p.name for p in path.parent.iterdir()} <= {path.name, *companions}:
            path.unlink()
