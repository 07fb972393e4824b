"""RecBole context-aware model on an rlrf export: which variant reads what, and the experiment table."""

from __future__ import annotations

import json

import pytest
import torch

from rlrf.core.config import RunConfig
from rlrf.export.vectors import ITEM_FIELD, USER_FIELD, run_export

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # RecBole 1.2.1's pandas calls (correct on pandas 2)


@pytest.fixture(scope="module")
def small(tmp_path_factory, ml100k_small):
    root = tmp_path_factory.mktemp("context-run")
    cfg = RunConfig.model_validate({
        "run_dir": str(root / "run"), "seed": 0, "threads": 1, "data": {"max_users": 40},
        "encoder": {"model": "hashing:16", "cache_dir": str(root / "emb")},
    })
    result = run_export(cfg, None, user_source="self", dataset=ml100k_small, show_progress=False)
    return cfg, result


def _model(small, variant, tmp_path):
    from recmodels.context import float_seq_fields, float_seq_positions, recbole_config
    from recmodels.recbole_env import prepare_recbole

    prepare_recbole()
    from recbole.data import create_dataset, data_preparation
    from recbole.model.context_aware_recommender import DeepFM

    _, result = small
    fields = float_seq_fields(result.recbole_data_path, result.recbole_dataset)
    config = recbole_config(result.recbole_data_path, result.recbole_dataset, "DeepFM", variant,
                            knowledge_fields=fields, seed=0, epochs=1, checkpoint_dir=tmp_path)
    dataset = create_dataset(config)
    if variant == "knowledge":
        float_seq_positions(dataset, [*fields[0], *fields[1]])
    train, _, _ = data_preparation(config, dataset)
    return DeepFM(config, train.dataset), train


def test_which_variant_embeds_what(small, tmp_path):
    base, _ = _model(small, "base", tmp_path)
    assert base.float_seq_field_names == []
    stock, _ = _model(small, "knowledge_stock", tmp_path)
    assert stock.float_seq_field_names == [USER_FIELD, ITEM_FIELD]
    assert [t.num_embeddings for t in stock.float_seq_embedding_table] == [2, 2]  # one shared row: index 1
    fixed, train = _model(small, "knowledge", tmp_path)
    assert [t.num_embeddings for t in fixed.float_seq_embedding_table] == [17, 17]  # a row per dimension
    assert fixed.num_feature_field == base.num_feature_field + 2

    # Two user vectors with the same mean but different directions: stock RecBole cannot tell them
    # apart, the position-indexed field can.
    a = torch.zeros(16)
    a[0], a[1] = 1.0, -1.0
    b = torch.zeros(16)
    b[2], b[3] = 1.0, -1.0
    ones = torch.ones(2, 16)
    stock_in = torch.stack([torch.stack([a, ones[0]], -1), torch.stack([b, ones[1]], -1)])
    pos = torch.arange(1, 17, dtype=torch.float32).expand(2, 16)
    fixed_in = torch.stack([torch.stack([a * 16, pos[0]], -1), torch.stack([b * 16, pos[1]], -1)])
    with torch.no_grad():
        e_stock = stock.embed_float_seq_fields([stock_in])
        e_fixed = fixed.embed_float_seq_fields([fixed_in])
    assert torch.allclose(e_stock[0], e_stock[1])  # both means are 0: identical (zero) embeddings
    assert not torch.allclose(e_fixed[0], e_fixed[1])
    table = fixed.float_seq_embedding_table[0].weight
    assert torch.allclose(e_fixed[0, 0], table[1] - table[2], atol=1e-6)  # Σ_j v_j E[j]

    # and the field reaches the batches the model trains on
    batch = next(iter(train))
    assert batch[USER_FIELD].shape[1:] == (16, 2) and batch[ITEM_FIELD].shape[1:] == (16, 2)


def test_experiment_writes_every_row(small):
    from rlrf.experiments.recbole import VARIANTS, run_context_experiment

    cfg, result = small
    out = run_context_experiment(cfg, result.folder, epochs=1, seeds=(0,), show_progress=False)
    assert list(out["summary"]) == list(VARIANTS)
    for variant in VARIANTS:
        s = out["summary"][variant]
        assert 0.0 <= s["test_auc"]["mean"] <= 1.0 and s["test_logloss"]["mean"] > 0
        assert out["runs"][variant][0]["epochs_run"] == 1
    assert out["overlap"]["inside_visible_history"] == 0 and out["overlap"]["eval_interactions"] > 0
    saved = json.loads((result.folder / "recbole_DeepFM.json").read_text())
    assert saved["summary"].keys() == out["summary"].keys()
    table = (result.folder / "recbole_DeepFM.md").read_text()
    assert table.count("| DeepFM") == 3 and "test AUC" in table
    assert not any(p.name.startswith(".recbole") for p in result.folder.parent.iterdir())


def test_experiment_refuses_another_datasets_export(small, tmp_path):
    from rlrf.experiments.recbole import run_context_experiment
    from rlrf.core.errors import UserError

    cfg, result = small
    other = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_users": 41})})
    with pytest.raises(UserError, match="user_ids.txt: 40 users exported"):
        run_context_experiment(other, result.folder, epochs=1, seeds=(0,), show_progress=False)
    with pytest.raises(UserError, match="variant: unknown 'wide'"):
        run_context_experiment(cfg, result.folder, epochs=1, seeds=(0,), variants=("wide",), show_progress=False)
    with pytest.raises(UserError, match="no adapter float_seq field"):  # exported without --adapter-outputs
        run_context_experiment(cfg, result.folder, epochs=1, seeds=(0,), knowledge_fields="adapter", show_progress=False)


def test_select_fields():
    from rlrf.experiments.recbole import select_fields

    fields = (["user_knowledge", "user_knowledge_adapter"], ["item_knowledge", "item_knowledge_adapter"])
    assert select_fields(fields, "raw") == (["user_knowledge"], ["item_knowledge"])
    assert select_fields(fields, "adapter") == (["user_knowledge_adapter"], ["item_knowledge_adapter"])
    assert select_fields(fields, "all") == fields


def test_recbole_settings_come_from_rlrf_never_from_the_command_line(monkeypatch, tmp_path):
    import sys

    from recmodels.recbole_env import make_config, prepare_recbole, run_settings

    prepare_recbole()
    monkeypatch.setattr(sys, "argv", ["rlrf", "experiment", "recbole", "--epochs=99", "--seed=7"])
    config = make_config("BPR", "ml-100k", {"epochs": 3, **run_settings(tmp_path, seed=1)})
    assert config["epochs"] == 3 and config["seed"] == 1
    assert sys.argv[-1] == "--seed=7"  # the process's own arguments are left as they were
