"""The reference recommenders beside the SPRec table: train-only popularity and a held-out-safe SASRec,
scored by the policies' own scorer on the same users and protocol."""

from __future__ import annotations

import numpy as np
import pytest

from rlrf.core.io import read_jsonl
from rlrf.core.layout import RunLayout
from rlrf.data.dataset import load_dataset, train_popularity
from rlrf.methods.sprec.evaluation import held_out_spec
from rlrf.methods.sprec.references import evaluate_reference, top_k

TWIN = None  # item identity only: these tests are about which items, not about twin titles


def config(tiny_config, protocol: str):
    return tiny_config(data={"max_users": 60, "lists": {"max_history": 5}},
                       sasrec={"epochs": 1, "hidden_size": 16, "show_progress": False},
                       sprec={"eval_protocol": protocol, "eval_splits": ["test"], "ks": [1, 5, 10]})


def test_top_k_masks_and_breaks_ties_by_the_lower_index():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 0.0]])
    assert top_k(scores, [[]], 3).tolist() == [[1, 2, 3]]
    assert top_k(scores, [[1]], 3).tolist() == [[2, 3, 0]]


@pytest.mark.parametrize("protocol", ["sprec", "rlrf"])
def test_popularity_recommends_the_most_trained_items_masked_as_the_protocol_says(tiny_config, protocol):
    cfg = config(tiny_config, protocol)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    spec = held_out_spec(ds, cfg)
    popularity = train_popularity(ds)
    result = evaluate_reference("popularity", cfg, ds, spec, popularity, TWIN)
    rows = {r["user"]: [ds.catalog.index(i) for i in r["items"]]
            for r in read_jsonl(RunLayout(cfg.run_dir).evaluation("popularity").recommendations(0))}
    assert sorted(rows) == sorted(spec.users) and result["users"] == len(spec.users) > 0
    for user, items in rows.items():
        seen = set(ds.users[user].items[:-1])
        allowed = [i for i in np.argsort(-popularity, kind="stable").tolist() if protocol == "sprec" or i not in seen]
        assert items == allowed[:10]
    if protocol == "sprec":  # nothing masked: one list for everyone
        assert result["div_ratio@10"] == pytest.approx(10 / (10 * len(rows)))
    hits = [float(ds.users[u].items[-1] in rows[u][:10]) for u in result["per_user"]["users"]]
    assert result["per_user"]["hr@10"] == hits and result["hr@10"] == pytest.approx(np.mean(hits))


def test_sasrec_ranks_from_the_history_before_the_target_and_is_cached(tiny_config):
    cfg = config(tiny_config, "rlrf")
    ds = load_dataset(cfg.data, seed=cfg.seed)
    spec = held_out_spec(ds, cfg)
    popularity = train_popularity(ds)
    first = evaluate_reference("sasrec", cfg, ds, spec, popularity, TWIN)
    rows = read_jsonl(RunLayout(cfg.run_dir).evaluation("sasrec").recommendations(0))
    for r in rows:  # protocol rlrf: no item of the history before the target
        assert len(r["items"]) == 10 and not set(r["items"]) & {ds.catalog.ids[i] for i in ds.users[r["user"]].items[:-1]}
    assert first["reference"] is True and set(first["per_user"]) == {"users", "hr@1", "ndcg@1", "hr@5", "ndcg@5",
                                                                     "hr@10", "ndcg@10"}
    assert evaluate_reference("sasrec", cfg, ds, spec, popularity, TWIN) == first
