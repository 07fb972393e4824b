"""Stages run by hand (`rlrf generate/score/align -i t`) use the policy iteration t starts from, exactly
as `rlrf run` threads it: the same records, record for record, on a tiny random-weight policy."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from rlrf.cli import app
from rlrf.core.io import read_json, read_jsonl
from rlrf.core.layout import RunLayout

torch.set_num_threads(1)


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--quiet"] if args[0] in {"generate", "align", "run"} else list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _records(path) -> list[dict]:
    return sorted(read_jsonl(path), key=lambda r: (r["user"], r.get("k", 0)))


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "seed": 0, "threads": 1,
        # future lists hold watched and unseen items for every user, so the loop's "training users whose
        # list can rank" are the first generate.max_users training users, as in `rlrf generate`
        "data": {"max_users": 40, "lists": {"source": "future", "length": 10}},
        "sasrec": {"enabled": False},
        "llm": {"model": str(tiny_model_dir)},
        "generate": {"n": 4, "max_new_tokens": 12, "users": "train", "max_users": 8, "batch_size": 32},
        "encoder": {"model": "hashing:32"},
        "reward": {"models": ["dlcm"], "epochs": 3, "embed_dim": 8, "hidden": 16, "adapter_out": 8, "adapter_hidden": 16},
        # a learning rate that moves the tiny policy: iteration 1's samples differ from the base model's
        "align": {"trainer_args": {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 640,
                                   "learning_rate": 0.05, "report_to": []}},
        "score": {"metric": "margin"},
        "loop": {"iterations": 2, "eval_users": 1, "independent_evaluator": False},
    }))
    return path


def test_stages_by_hand_write_the_records_rlrf_run_writes(tmp_path, tiny_config):
    auto, by_hand, base = (RunLayout(tmp_path / name) for name in ("run", "by_hand", "base"))
    _cli("run", "-c", str(tiny_config))
    for layout in (by_hand, base):  # the same prepared data and reward model
        layout.root.mkdir()
        for path in (auto.config, auto.lists, auto.data_summary):
            shutil.copy(path, layout.root / path.name)
        shutil.copytree(auto.reward, layout.reward)

    hand = ("-c", str(tiny_config), "--run-dir", str(by_hand.root))
    for t in (0, 1):
        _cli("generate", *hand, "-i", str(t))
        _cli("score", *hand, "-i", str(t))
        if t == 0:  # iteration 1 cannot start before iteration 0's pairs are aligned
            refused = CliRunner().invoke(app, ["generate", *hand, "-i", "1", "--quiet"])
            assert refused.exit_code == 2
            assert "iteration 0 has pairs but no adapter: run `rlrf align -i 0` first" in refused.output
        _cli("align", *hand, "-i", str(t))

    for t in (0, 1):
        for name in ("responses", "prompts", "scores", "pairs"):
            assert _records(getattr(by_hand, name)(t)) == _records(getattr(auto, name)(t)), (t, name)
        assert load_file(by_hand.adapter(t) / "adapter_model.safetensors").keys() == \
            load_file(auto.adapter(t) / "adapter_model.safetensors").keys()
        for key, value in load_file(by_hand.adapter(t) / "adapter_model.safetensors").items():
            assert torch.equal(value, load_file(auto.adapter(t) / "adapter_model.safetensors")[key]), (t, key)
    assert read_json(by_hand.responses_meta(1))["adapter"] == str(by_hand.adapter(0))

    # what the bug did: iteration 1 sampled from the base model; an explicit llm.adapter= still wins
    _cli("generate", "-c", str(tiny_config), "--run-dir", str(base.root), "-i", "1", "llm.adapter=")
    assert read_json(base.responses_meta(1))["adapter"] is None
    assert [r["text"] for r in _records(base.responses(1))] != [r["text"] for r in _records(by_hand.responses(1))]
