"""Alignment on 2 CPU processes (torchrun, gloo): one adapter, written once, equal to a 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_align import _write_pairs

from rlrf.core.distributed import shard


def test_shards_are_disjoint_and_cover_everything():
    items = list(range(11))
    parts = [shard(items, of=3, index=i) for i in range(3)]
    assert sorted(x for p in parts for x in p) == items
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1:])


def _config(tmp_path, name, model_dir, per_device):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / name), "threads": 1, "llm": {"model": str(model_dir)},
        "lora": {"r": 4, "lora_alpha": 8},
        "align": {"beta": 0.5, "trainer_args": {"max_steps": 2, "per_device_train_batch_size": per_device,
                                                "max_length": 128, "learning_rate": 1e-2, "report_to": []}},
    }))
    return path


def _align(config, nproc):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "29533"]
    cmd = (launcher if nproc > 1 else [sys.executable]) + ["-m", "rlrf.cli", "align", "-c", str(config), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_two_process_ddp_align_equals_one_process(tmp_path, tiny_model_dir, tiny_tokenizer):
    single = _config(tmp_path, "single", tiny_model_dir, per_device=2)
    ddp = _config(tmp_path, "ddp", tiny_model_dir, per_device=1)
    for name in ("single", "ddp"):
        _write_pairs(tmp_path / name, tiny_tokenizer, n=4)
    one = _align(single, 1)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _align(ddp, 2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("wrote ") == 1  # only the main process reports (and writes)
    a = load_file(str(tmp_path / "single" / "iter_0" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "iter_0" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)
    moved = max((a[k].abs().max().item() for k in a if "lora_B" in k))
    assert moved > 1e-3  # the steps did change the adapter, so equality is not trivial
    log = json.loads((tmp_path / "ddp" / "iter_0" / "align_log.json").read_text())
    assert log["summary"]["steps"] == 2 and log["summary"]["pairs"] == 4


def test_generate_on_two_processes_writes_the_same_records_as_one(tmp_path, tiny_model_dir):
    from rlrf.core.io import read_jsonl

    records = {}
    for nproc in (1, 2):
        path = tmp_path / f"gen{nproc}.yaml"
        path.write_text(yaml.safe_dump({
            "run_dir": str(tmp_path / f"run{nproc}"), "threads": 1, "data": {"max_users": 30},
            "llm": {"model": str(tiny_model_dir)},
            "generate": {"n": 2, "max_new_tokens": 6, "users": "train", "max_users": 5},
        }))
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534"]
        cmd = (launcher if nproc > 1 else [sys.executable]) + ["-m", "rlrf.cli", "generate", "-c", str(path), "--quiet"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        rows = read_jsonl(tmp_path / f"run{nproc}" / "iter_0" / "responses.jsonl")
        records[nproc] = sorted(((r["user"], r["k"], r["text"]) for r in rows))
    assert len(records[1]) == 10 and records[2] == records[1]  # each (user, k) once, the same text
