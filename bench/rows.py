"""How a benchmark runs its rows: each row in its own Python subprocess (its own peak RSS, threads
and allocator state), reporting back one `ROW <json>` line on stdout."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


def emit(row: dict) -> None:
    """Called by the worker: hand its row to the parent."""
    print("ROW " + json.dumps(row), flush=True)


def run_row(script: str, name: str, argv: list[str], extra_path: list[str] = (),
            env: dict[str, str] | None = None) -> tuple[dict | None, str]:
    """Run `script --worker name argv...` with the repository (and `extra_path`) importable and
    `env` added to the environment; returns (its row, "") or (None, why it failed)."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *extra_path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, script, "--worker", name, *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode != 0 or not found:
        return None, f"failed (exit {proc.returncode}): {proc.stderr[-3000:].strip()}"
    return json.loads(found[-1]), ""
