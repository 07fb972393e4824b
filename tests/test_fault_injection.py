"""Fault injection: each stage (data, generate, score, align) killed (SIGKILL) at random points, then
rerun, ends with exactly the records of an uninterrupted run and nothing left over.

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

import pytest
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
    return f"killed after {delay:.2f}s" + (f" from {until.name} appearing" if until else "")


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


SCORE_SCRIPT = r"""
import sys
from pathlib import Path

import numpy as np
import torch

from recmodels import encoder as kn
from recmodels.train import build_reranker
from rlrf.reward.training import reranker_hyperparameters
from rlrf.reward import scorer as reward
from rlrf.core.config import RewardConfig, RunConfig
from rlrf.data.lists import RerankList
from rlrf.reward.score import score_responses

torch.set_num_threads(1)
run_dir, cache = Path(sys.argv[1]), Path(sys.argv[2])
hp = reranker_hyperparameters(RewardConfig(embed_dim=8, hidden=16, heads=2, layers=1, adapter_out=8, adapter_hidden=16,
                              shared_experts=1, specific_experts=2, dropout=0.1, knowledge_dropout=0.1), "prm", True, 6)
rng = np.random.default_rng(0)
lists = {}
for u in range(12):
    hist = rng.choice(40, size=5, replace=False).tolist()
    lists[f"u{u}"] = RerankList(f"u{u}", hist, [4.0] * 5, rng.choice(40, size=6, replace=False).tolist(),
                                rng.integers(0, 2, size=6).tolist())
enc = kn.CachedEncoder("hashing:32|norm", kn.EmbeddingCache(cache, "hashing:32|norm"), lambda: kn.HashingEncoder(32),
                       progress=False)
torch.manual_seed(0)
model = build_reranker(hp, 40, np.eye(5, dtype=np.float32)[np.arange(40) % 5], enc.encode([f"item {i}" for i in range(40)]))
scorer = reward.RewardScorer(model, lists, enc, max_history=5)
score_responses(RunConfig(run_dir=run_dir, score={"batch_size": 8}), 0, scorer, show_progress=False)
"""


def _score_run(tmp_path: Path, name: str) -> Path:
    import json

    run = tmp_path / name
    (run / "iter_0").mkdir(parents=True)
    words = ["action", "drama", "comedy", "noir", "romance", "war", "space", "crime", "horror", "music"]
    with (run / "iter_0" / "responses.jsonl").open("w") as f:
        for u in range(12):
            for k in range(100):
                text = " ".join(words[(u * k + j) % len(words)] for j in range(1 + k % 7))
                f.write(json.dumps({"user": f"u{u}", "iter": 0, "k": k, "text": text, "n_tokens": 3,
                                    "prompt_hash": "h"}) + "\n")
    return run


def _start_score(run: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", SCORE_SCRIPT, str(run), str(cache)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def test_score_killed_at_random_points_reruns_to_the_uninterrupted_scores(tmp_path):
    """`score_responses` (what `rlrf score` runs) SIGKILLed twice at random, then rerun: every (user, k)
    scored exactly once, with the values of an uninterrupted run."""
    import json

    seed = int(os.environ.get("RLRF_KILL_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    clean, killed = _score_run(tmp_path, "clean"), _score_run(tmp_path, "killed")
    start = time.monotonic()
    _finish(_start_score(clean, tmp_path / "cache_clean"))
    seconds = time.monotonic() - start
    # kill while scores.jsonl is being written, then anywhere in the run
    events = [_kill_after(_start_score(killed, tmp_path / "cache"), rng.uniform(0.0, 0.5),
                          until=killed / "iter_0" / "scores.jsonl"),
              _kill_after(_start_score(killed, tmp_path / "cache"), rng.uniform(0.0, seconds))]
    scores = killed / "iter_0" / "scores.jsonl"
    before = scores.read_bytes().count(b"\n") if scores.exists() else 0
    _finish(_start_score(killed, tmp_path / "cache"))
    context = f"RLRF_KILL_SEED={seed}: {events}, {before} lines before the rerun"
    print(context)

    def records(run):
        lines = (run / "iter_0" / "scores.jsonl").read_text().splitlines()
        return {(r["user"], r["k"]): r for r in map(json.loads, lines)}, len(lines)

    want, n_want = records(clean)
    got, n_got = records(killed)
    assert n_got == len(got) == n_want == len(want) == 1200, context  # each (user, k) exactly once
    for key, record in want.items():
        assert got[key].keys() == record.keys(), context
        for name, value in record.items():
            assert got[key][name] == pytest.approx(value, abs=1e-6), (key, name, context)


def _start_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "rlrf.cli", *args, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _policy_config(tmp_path: Path, run: str, model_dir: Path, **sections) -> Path:
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / run), "threads": 1, "data": {"max_users": 40},
                                    "llm": {"model": str(model_dir)}, **sections}))
    return path


def _clean_then_killed(tmp_path: Path, stage: str, model_dir: Path, first_kill_after: Path, **sections) -> str:
    """Run `stage` cleanly into run "clean"; into run "killed", SIGKILL it twice (after `first_kill_after`
    appears, then at a random point of a clean run's duration), then run it to the end. Returns the
    replay context (RLRF_KILL_SEED=<n> replays the same kill points)."""
    seed = int(os.environ.get("RLRF_KILL_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    start = time.monotonic()
    _finish(_start_cli(stage, "-c", str(_policy_config(tmp_path, "clean", model_dir, **sections))))
    seconds = time.monotonic() - start
    config = _policy_config(tmp_path, "killed", model_dir, **sections)
    events = [_kill_after(_start_cli(stage, "-c", str(config)), rng.uniform(0.0, 1.5), until=first_kill_after),
              _kill_after(_start_cli(stage, "-c", str(config)), rng.uniform(0.0, seconds))]
    _finish(_start_cli(stage, "-c", str(config)))
    context = f"RLRF_KILL_SEED={seed}: {events}"
    print(context)
    return context


def test_generate_killed_at_random_points_reruns_to_the_uninterrupted_records(tmp_path, tiny_model_dir):
    from rlrf.core.io import read_jsonl

    generate = {"generate": {"n": 3, "max_new_tokens": 24, "users": "train", "max_users": 12, "batch_size": 6}}
    context = _clean_then_killed(tmp_path, "generate", tiny_model_dir,
                                 tmp_path / "killed" / "iter_0" / "responses.jsonl", **generate)

    def records(run: str) -> list:
        return sorted(read_jsonl(tmp_path / run / "iter_0" / "responses.jsonl"), key=lambda r: (r["user"], r["k"]))

    assert len(records("clean")) == 36 and records("killed") == records("clean"), context


def test_align_killed_at_random_points_reruns_to_the_uninterrupted_adapter(tmp_path, tiny_model_dir, tiny_tokenizer):
    from safetensors.torch import load_file

    from test_align import _write_pairs

    align = {"align": {"trainer_args": {"max_steps": 6, "per_device_train_batch_size": 1, "max_length": 128,
                                        "learning_rate": 1e-2, "report_to": []}}, "lora": {"r": 4, "lora_alpha": 8}}
    for run in ("clean", "killed"):
        _write_pairs(tmp_path / run, tiny_tokenizer, n=6)
    context = _clean_then_killed(tmp_path, "align", tiny_model_dir, tmp_path / "killed" / "iter_0" / ".adapter.work",
                                 **align)

    a = load_file(tmp_path / "clean" / "iter_0" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "iter_0" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a), context
    assert _files(tmp_path / "killed" / "iter_0") == _files(tmp_path / "clean" / "iter_0"), context  # no leftovers


def torch_equal(x, y) -> bool:
    return bool((x == y).all())
