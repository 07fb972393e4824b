"""Knowledge per policy: one greedy text per user, stored once per policy and shared by export and experiments."""

from __future__ import annotations

import pytest
import yaml

from rlrf.core.config import load_config
from rlrf.core.errors import UserError
from rlrf.core.layout import RunLayout
from rlrf.generation.knowledge import generate_user_knowledge, knowledge_layout, policy_adapter
from rlrf.core.io import read_jsonl


@pytest.fixture
def tiny_cfg(tmp_path, tiny_model_dir):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "threads": 1, "data": {"max_users": 40},
        "llm": {"model": str(tiny_model_dir)}, "generate": {"n": 4, "max_new_tokens": 6, "temperature": 0.8},
    }))
    return load_config(path)


def test_one_greedy_summary_per_user_of_the_split_then_reused(tiny_cfg, ml100k_small):
    path = generate_user_knowledge(tiny_cfg, None, "test", dataset=ml100k_small, show_progress=False)
    assert path.parent.parent == knowledge_layout(tiny_cfg.run_dir, None).root
    records = read_jsonl(path)
    assert sorted(r["user"] for r in records) == sorted(ml100k_small.splits["test"])
    assert {r["k"] for r in records} == {0}  # one text per user, whatever generate.n says
    # asking for every user keeps the test users' texts and adds the rest
    generate_user_knowledge(tiny_cfg, None, "all", dataset=ml100k_small, show_progress=False)
    everyone = {r["user"]: r["text"] for r in read_jsonl(path)}
    assert set(everyone) == set(ml100k_small.users)
    assert all(everyone[r["user"]] == r["text"] for r in records)


def test_an_iteration_without_an_adapter_is_refused(tiny_cfg):
    assert RunLayout(tiny_cfg.run_dir).aligned_iterations() == []
    assert policy_adapter(tiny_cfg.run_dir, None) is None
    with pytest.raises(UserError, match="no complete adapter for iteration 3"):
        policy_adapter(tiny_cfg.run_dir, 3)
