"""rlrf export: RecBole atomic files + .npy with id index + meta; refusals; atomic folder."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from rlrf.core.config import RunConfig
from rlrf.core.errors import UserError
from rlrf.export.vectors import (
    ITEM_FIELD, USER_FIELD, export_name, ids_fingerprint, load_export, run_export,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # RecBole 1.2.1's pandas calls (correct on pandas 2)


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-run")
    return RunConfig.model_validate({
        "run_dir": str(root / "run"), "seed": 0, "threads": 1,
        "data": {"max_users": 40},
        "encoder": {"model": "hashing:16", "cache_dir": str(root / "emb")},
    })


@pytest.fixture(scope="module")
def exported(small_cfg, ml100k_small):
    return run_export(small_cfg, None, user_source="self", item_source="self", dataset=ml100k_small,
                      show_progress=False)


def test_numpy_side_round_trips_with_ids(exported, ml100k_small, small_cfg):
    from rlrf.data import texts as kn
    from rlrf.reward.inputs import load_lists_for

    assert exported.folder == small_cfg.run_dir / "export" / "self"
    users, uvecs, items, ivecs, meta = load_export(exported.folder, ml100k_small)
    assert users == list(ml100k_small.users) and items == list(ml100k_small.catalog.ids)
    assert uvecs.shape == (40, 16) and ivecs.shape == (len(ml100k_small.catalog), 16)
    assert uvecs.dtype == np.float32
    enc = kn.load_encoder(small_cfg.encoder, progress=False)
    # row i is the vector of the id on line i: recompute two users and two items independently
    lists = load_lists_for(small_cfg, ml100k_small)
    for row in (0, 17):
        lst = lists[users[row]]
        text = kn.user_self_text(ml100k_small.catalog, lst.history, lst.history_ratings, 4.0)
        np.testing.assert_allclose(uvecs[row], enc.encode([text])[0], atol=1e-6)
    for raw in ("1", "50"):
        i = items.index(raw)
        np.testing.assert_allclose(ivecs[i], enc.encode([ml100k_small.catalog.describe(ml100k_small.catalog.index(raw))])[0],
                                   atol=1e-6)
    assert meta["encoder"] == {"name": "hashing:16", "key": enc.key, "dim": 16}
    assert meta["dataset"]["name"] == "ml-100k" and meta["dataset"]["n_users"] == 40
    assert meta["dataset"]["user_ids_sha256"] == ids_fingerprint(users)
    assert meta["policy"]["tag"] == "base" and meta["policy"]["used"] is False
    assert meta["sources"]["user"] == "self" and meta["adapter_outputs"] is None


def _recbole_dataset(exported, tmp_path, numerical: bool, positions: bool = False):
    from recmodels.recbole_env import prepare_recbole

    prepare_recbole()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    config = Config(model="DeepFM", dataset=exported.recbole_dataset, config_dict={
        "data_path": str(exported.recbole_data_path),
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"], "user": ["user_id", "age", USER_FIELD],
                     "item": ["item_id", "release_year", ITEM_FIELD]},
        "numerical_features": [USER_FIELD, ITEM_FIELD] if numerical else [],
        "threshold": {"rating": 4}, "train_neg_sample_args": None,
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "labeled"},
        "use_gpu": False, "device": "cpu", "state": "WARNING",
        "checkpoint_dir": str(tmp_path), "save_dataset": False, "show_progress": False,
    })
    logging.getLogger().setLevel(logging.WARNING)
    dataset = create_dataset(config)
    if positions:
        from recmodels.context import float_seq_positions

        float_seq_positions(dataset, [USER_FIELD, ITEM_FIELD])
    data_preparation(config, dataset)  # builds the feature tensors the models read
    return dataset


def test_recbole_loader_reads_the_float_seq_fields(exported, ml100k_small, tmp_path):
    users, uvecs, items, ivecs, _ = load_export(exported.folder, ml100k_small)
    ds = _recbole_dataset(exported, tmp_path, numerical=False)
    assert ds.field2type[USER_FIELD].value == "float_seq" and ds.field2seqlen[USER_FIELD] == 16
    assert ds.user_num - 1 == 40  # every exported user, no other ([PAD] is row 0)
    for raw in (users[0], users[25]):
        row = int(ds.token2id("user_id", raw))
        got = ds.user_feat[USER_FIELD][row].numpy()
        np.testing.assert_array_equal(got, uvecs[users.index(raw)])  # float32 exact through the text file
    for raw in ("1", "181"):
        if raw not in ds.field2token_id["item_id"]:
            continue
        row = int(ds.token2id("item_id", raw))
        np.testing.assert_array_equal(ds.item_feat[ITEM_FIELD][row].numpy(), ivecs[items.index(raw)])
    # the original columns are still there, in the same rows
    row = int(ds.token2id("user_id", users[0]))
    assert ds.id2token("age", int(ds.user_feat["age"][row])) == ml100k_small.users[users[0]].profile["age"]


def test_recbole_numerical_float_seq_is_value_index_pairs(exported, ml100k_small, tmp_path):
    """What a context-aware model receives: [value, index] per position; 1.2.1 sets every index to 1."""
    users, uvecs, *_ = load_export(exported.folder, ml100k_small)
    ds = _recbole_dataset(exported, tmp_path, numerical=True)
    row = int(ds.token2id("user_id", users[3]))
    pairs = ds.user_feat[USER_FIELD][row].numpy()
    assert pairs.shape == (16, 2)
    np.testing.assert_array_equal(pairs[:, 0], uvecs[3])
    assert (pairs[:, 1] == 1).all() and ds.num(USER_FIELD) == 2


def test_float_seq_positions_give_each_dimension_its_embedding(exported, ml100k_small, tmp_path):
    users, uvecs, items, ivecs, _ = load_export(exported.folder, ml100k_small)
    ds = _recbole_dataset(exported, tmp_path, numerical=True, positions=True)
    row = int(ds.token2id("user_id", users[3]))
    pairs = ds.user_feat[USER_FIELD][row].numpy()
    np.testing.assert_allclose(pairs[:, 0], uvecs[3] * 16, rtol=1e-6)
    np.testing.assert_array_equal(pairs[:, 1], np.arange(1, 17))
    assert ds.num(USER_FIELD) == 17 and ds.num(ITEM_FIELD) == 17


def test_inter_copy_keeps_only_the_run_users(exported, ml100k_small):
    name = exported.recbole_dataset
    assert name == "ml-100k-rlrf"
    lines = (exported.recbole_data_path / name / f"{name}.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert len(lines) - 1 == sum(len(u.items) for u in ml100k_small.users.values())
    assert {line.split("\t")[0] for line in lines[1:]} == set(ml100k_small.users)


def test_dataset_mismatch_is_refused(exported, ml100k_small):
    from rlrf.core.config import DataConfig
    from rlrf.data.dataset import load_dataset

    other = load_dataset(DataConfig(max_users=41), seed=0)
    with pytest.raises(UserError, match=r"user_ids\.txt: 40 users exported, dataset 'ml-100k' has 41"):
        load_export(exported.folder, other)
    with pytest.raises(UserError, match=r"meta\.json: exported for dataset 'ml-100k', not 'ml-1m'"):
        load_export(exported.folder, "ml-1m")


def test_encoder_mismatch_is_refused(exported, ml100k_small):
    with pytest.raises(UserError, match=r"meta\.json: exported with encoder 'hashing:16\|norm', not 'hashing:32\|norm'"):
        load_export(exported.folder, ml100k_small, encoder_key="hashing:32|norm")
    load_export(exported.folder, ml100k_small, encoder_key="hashing:16|norm")  # the right one passes


def test_edited_id_file_is_refused(small_cfg, ml100k_small, tmp_path):
    out = tmp_path / "exp"
    run_export(small_cfg, None, user_source="self", dataset=ml100k_small, out_dir=out, show_progress=False)
    ids = (out / "item_ids.txt").read_text().splitlines()
    (out / "item_ids.txt").write_text("\n".join([ids[1], ids[0], *ids[2:]]) + "\n")
    with pytest.raises(UserError, match="item_ids.txt: ids do not match meta.json"):
        load_export(out, ml100k_small)


def test_failure_leaves_nothing_and_keeps_the_old_export(small_cfg, ml100k_small, tmp_path, monkeypatch):
    import rlrf.export.vectors as ex

    out = tmp_path / "exp"
    run_export(small_cfg, None, user_source="self", dataset=ml100k_small, out_dir=out, show_progress=False)
    before = json.loads((out / "meta.json").read_text())["created"]

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "write_recbole", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        run_export(small_cfg, None, user_source="self", dataset=ml100k_small, out_dir=out, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temporary folder left
    assert json.loads((out / "meta.json").read_text())["created"] == before
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        run_export(small_cfg, None, user_source="self", dataset=ml100k_small, out_dir=fresh, show_progress=False)
    assert not fresh.exists()


def test_policy_source_needs_an_adapter_for_an_iteration(small_cfg, ml100k_small):
    with pytest.raises(UserError, match="no complete adapter for iteration 3"):
        run_export(small_cfg, 3, dataset=ml100k_small, show_progress=False)
    with pytest.raises(UserError, match="user source: unknown 'llm'"):
        run_export(small_cfg, None, user_source="llm", dataset=ml100k_small, show_progress=False)


def test_export_names():
    assert export_name(1) == "iter_1"
    assert export_name(None) == "base"
    assert export_name(None, "self", "self") == "self"
    assert export_name(2, "policy", "policy") == "iter_2_item-policy"
    assert export_name(2, "self", "policy") == "iter_2_user-self_item-policy"


def test_adapter_outputs_are_the_reranker_towers(tmp_path, ml100k_small):
    import torch

    from rlrf.data import texts as kn
    from recmodels.train import load_reranker
    from rlrf.reward import training as reward

    cfg = RunConfig.model_validate({
        "run_dir": str(tmp_path / "run"), "seed": 0, "threads": 1, "data": {"max_users": 40},
        "encoder": {"model": "hashing:16", "cache_dir": str(tmp_path / "emb")},
        "reward": {"models": ["dlcm"], "epochs": 1, "adapter_out": 4, "adapter_hidden": 8},
    })
    reward.train(cfg, ctx=reward.prepare(cfg, progress=False, ds=ml100k_small))
    res = run_export(cfg, None, user_source="self", adapter_outputs=True, dataset=ml100k_small, show_progress=False)
    users, ua, items, ia, meta = load_export(res.folder, ml100k_small, adapter=True)
    assert ua.shape == (40, 4) and ia.shape == (len(items), 4) and meta["adapter_outputs"]["dim"] == 4
    _, uvecs, _, ivecs, _ = load_export(res.folder, ml100k_small)
    enc = kn.load_encoder(cfg.encoder, progress=False)
    model, _ = load_reranker(cfg.run_dir / "reward" / "dlcm_knowledge", "ml-100k", enc.key, len(items),
                             ml100k_small.catalog.genre_matrix())
    a = model.features.adapter
    with torch.no_grad():
        u, _ = a._tower(torch.from_numpy(uvecs[:2]), a.user_experts, a.shared, a.user_gate)
    np.testing.assert_allclose(ua[:2], u.numpy(), atol=1e-6)
    assert res.fields == {"user": [USER_FIELD, USER_FIELD + "_adapter"], "item": [ITEM_FIELD, ITEM_FIELD + "_adapter"]}
