"""Progress that people can follow in a terminal and in a log file alike.

rich redraws one bar in a terminal; written to a file it shows only the bar's last state, so a long
stage run under nohup or a scheduler prints nothing for minutes. Outside a terminal the same calls
print one plain line every `every` seconds instead: done/total, rate and ETA.
"""

from __future__ import annotations

import sys
import time


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
