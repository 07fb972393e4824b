"""Golden records: a small `rlrf run` on the real default models (SmolLM2, all-MiniLM-L6-v2, ml-100k)
must write exactly the records whose hashes are committed in tests/golden/quickstart_small.json.

Why: the README promises that a run reproduces to the digit with the same requirements.lock on the
same CPU family. A dependency bump, a numerics change (dtype, kernels, batching) or a code change
that moves any record fails here, loudly, instead of silently moving every number in docs/. When the
change is deliberate, refresh the hashes and say so in the commit:

    .venv/bin/python tests/test_golden.py --refresh

The hashes are only comparable on the CPU family and thread count they were recorded with (bf16
decoding and oneDNN kernels differ across instruction sets); elsewhere the test is skipped, saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "quickstart_small.json"
COMMAND = ["run", "-c", "quickstart", "threads=2", "data.max_users=150", "generate.max_users=8", "reward.epochs=3",
           "loop.eval_users=8", "generate.max_new_tokens=32"]
# What a record's bytes may carry that is not a result: timings, paths, the machine.
VOLATILE = ("seconds", "tokens_per_s", "per_second", "runtime", "environment", "adapter", "resumed_from", "load",
            "peak_rss", "started", "path", "dir", "target_modules")


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every record of a run: JSONL files and adapter weights as bytes, JSON summaries
    without their volatile keys."""
    out = {}
    for path in sorted(run_dir.rglob("*")):
        rel = str(path.relative_to(run_dir))
        if path.suffix in (".jsonl", ".safetensors") and not path.name.startswith("."):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        elif path.name in ("metrics.json", "pairs.meta.json", "data.json", "eval.json"):
            text = json.dumps(_clean(json.loads(path.read_text())), sort_keys=True)
            out[rel] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def machine() -> dict:
    from rlrf.core.environment import cpu_flags

    return {"cpu_flags": cpu_flags(), "threads": 2}


def run_small(run_dir: Path, cache_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RLRF_CPU_BF16", "RLRF_CPU_KERNELS", "RLRF_FAST_TRAIN")}
    env.update(HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "rlrf.cli", *COMMAND, "--run-dir", str(run_dir),
                             f"encoder.cache_dir={cache_dir}"],  # an empty embedding cache: nothing from earlier runs
                            capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_a_small_real_run_writes_the_committed_records(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    if golden["machine"] != machine():
        pytest.skip(f"golden hashes were recorded on {golden['machine']}, this machine is {machine()}")
    run_small(tmp_path / "run", tmp_path / "cache")
    got = digests(tmp_path / "run")
    moved = sorted(k for k in golden["records"].keys() | got.keys() if golden["records"].get(k) != got.get(k))
    assert not moved, ("records moved from tests/golden/quickstart_small.json: " + ", ".join(moved)
                       + ". If the change is deliberate, refresh them with "
                         "`.venv/bin/python tests/test_golden.py --refresh` and say why in the commit.")


if __name__ == "__main__" and sys.argv[1:] == ["--refresh"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_small(Path(tmp) / "run", Path(tmp) / "cache")
        records = digests(Path(tmp) / "run")
    GOLDEN.write_text(json.dumps({"command": "rlrf " + " ".join(COMMAND), "machine": machine(),
                                  "records": records}, indent=1) + "\n")
    print(f"wrote {GOLDEN} ({len(records)} records)")
