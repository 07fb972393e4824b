"""Fault injection: `rlrf data` killed (SIGKILL) at random points, then rerun, ends with exactly the
records of an uninterrupted run and nothing left over (issue 13).

One run is killed while SASRec trains (as soon as its scratch folder appears, plus a random delay),
then again at a random delay anywhere in the stage, then run to the end. The delays come from a seed
printed on failure; RLRF_KILL_SEED=<n> replays one. Tiny: 40 users, SASRec hidden 8, 1 epoch.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

TINY = {
    "threads": 1,
    "data": {"max_users": 40},
    "sasrec": {"epochs": 1, "hidden_size": 8, "n_heads": 2, "n_layers": 1, "max_seq_length": 20,
               "batch_size": 256, "show_progress": False},
}
RECORDS = ("candidates.jsonl", "lists.jsonl", "data.json", "sasrec/sasrec.json")


def _config(tmp_path: Path, run: str) -> Path:
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump({**TINY, "run_dir": str(tmp_path / run)}))
    return path


def _start(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "rlrf.cli", "data", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def _kill_after(proc: subprocess.Popen, delay: float, until: Path | None = None) -> str:
    """SIGKILL `proc` `delay` s after `until` exists (or after start); returns what happened."""
    if until is not None:
        deadline = time.monotonic() + 120
        while not until.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return f"finished before the kill (rc {proc.returncode})"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return f"killed after {delay:.2f}s" + (f" from {until.name}/ appearing" if until else "")


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def test_data_stage_killed_at_random_points_reruns_to_the_uninterrupted_records(tmp_path):
    from safetensors.torch import load_file

    seed = int(os.environ.get("RLRF_KILL_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    start = time.monotonic()
    _finish(_start(_config(tmp_path, "clean")))
    clean_seconds = time.monotonic() - start

    config = _config(tmp_path, "killed")
    run = tmp_path / "killed"
    events = [_kill_after(_start(config), rng.uniform(0.0, 1.5), until=run / "sasrec" / "work"),
              _kill_after(_start(config), rng.uniform(0.0, clean_seconds))]
    _finish(_start(config))
    context = f"RLRF_KILL_SEED={seed}: {events}"
    print(context)

    clean = tmp_path / "clean"
    for name in RECORDS:
        assert (run / name).read_bytes() == (clean / name).read_bytes(), f"{name} differs; {context}"
    assert _files(run) == _files(clean), context  # no leftovers (scratch, tmp files, RecBole checkpoints)
    a, b = load_file(clean / "sasrec" / "sasrec.safetensors"), load_file(run / "sasrec" / "sasrec.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), context
