"""`rlrf run` on a tiny policy keeps a time-stamped run.log in the run directory: the command, a
marker per stage, and a closing line with the result; no library progress bar or raw log dict."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from rlrf.core.layout import RunLayout


def test_a_tiny_run_logs_its_stages_and_result_time_stamped_in_run_log(tmp_path, tiny_model_dir):
    config = {
        "run_dir": str(tmp_path / "run"), "seed": 0, "threads": 1,
        "data": {"max_users": 40},
        "llm": {"model": str(tiny_model_dir)},
        "generate": {"n": 2, "max_new_tokens": 8, "max_users": 8, "batch_size": 32},
        "encoder": {"model": "hashing:32"},
        "reward": {"models": ["dlcm"], "epochs": 2, "embed_dim": 8, "hidden": 16, "adapter_out": 8, "adapter_hidden": 16},
        "align": {"trainer_args": {"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 2,
                                   "max_length": 640}},
        "score": {"metric": "margin"},
        "loop": {"iterations": 1, "eval_users": 3},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "rlrf.cli", "run", "-c", str(path)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    log = RunLayout(tmp_path / "run").run_log.read_text()
    lines = log.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines)
    assert lines[0].endswith(f"=== rlrf run -c {path}")
    for marker in ("data: users, split and reranking lists", "reward model: training dlcm", "evaluating policy policy_0",
                   "iteration 0: generate", "iteration 0: score", "evaluating policy policy_1",
                   "result: policy_1 vs policy_0 on 3 test users: mean reward "):
        assert re.search(r"^\S+ \d\d:\d\d:\d\d (\[rlrf4rec\] )?" + re.escape(marker), log, re.M), marker
    assert "GGUF" not in result.stderr and "it/s]" not in result.stderr  # no tqdm bars without --verbose
    assert max(len(line) for line in lines) < 300
    assert re.search(r"^\S+ \S+ step 1/2 \(50%\): loss \d\.\d{4}, margin [+-]\d\.\d{4}, lr \S+, \d+\.\d\d s/step, ETA \d+ s$", log, re.M)
    assert re.search(r"^\S+ \S+ training done: 2 steps in \d+\.\d s, mean loss \d\.\d{4}$", log, re.M)
    assert "{'loss'" not in log and "{'train_runtime'" not in log  # no raw trainer dicts
