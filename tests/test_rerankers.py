"""Hybrid-expert adapter, DLCM and PRM on synthetic data (recmodels/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recmodels.experts import HybridExperts
from recmodels.train import (
    ListTensors, build_reranker, load_reranker, predict, save_reranker, train_reranker,
)
from rlrf.core.config import RewardConfig
from rlrf.core.errors import UserError
from rlrf.evaluation.metrics import map_at_k
from rlrf.reward.training import reranker_hyperparameters as hyperparameters, train_settings

torch.set_num_threads(1)


def rcfg(**kw):
    base = dict(embed_dim=8, hidden=32, heads=2, layers=1, adapter_out=16, adapter_hidden=32, shared_experts=2,
                specific_experts=2, dropout=0.0, knowledge_dropout=0.0, epochs=15, batch_size=32, learning_rate=5e-3,
                weight_decay=0.0, patience=4)
    base.update(kw)
    return RewardConfig(**base)


def test_adapter_shapes_and_gates_sum_to_one():
    torch.manual_seed(0)
    ad = HybridExperts(d_knowledge=12, d_out=5, hidden=7, n_shared=3, n_specific=2)
    user_k, item_k = torch.randn(4, 12), torch.randn(4, 6, 12)
    out, gu, gi = ad(user_k, item_k, return_gates=True)
    assert out.shape == (4, 6, 15)  # user, item, user * item
    assert gu.shape == (4, 5) and gi.shape == (4, 6, 5)  # specific + shared experts per tower
    torch.testing.assert_close(gu.sum(-1), torch.ones(4))
    torch.testing.assert_close(gi.sum(-1), torch.ones(4, 6))
    assert (gu > 0).all() and (gi > 0).all()
    # the user part is the same at every position; the item part differs per item
    torch.testing.assert_close(out[:, 0, :5], out[:, 3, :5])
    assert not torch.allclose(out[:, 0, 5:], out[:, 3, 5:])
    torch.testing.assert_close(out[..., 10:], out[..., :5] * out[..., 5:10])
    # shared experts are shared: the towers hold one ModuleList of them, used by both
    assert len(ad.shared) == 3 and len(ad.user_experts) == 2 and len(ad.item_experts) == 2
    out.sum().backward()
    assert all(p.grad is not None for e in ad.shared for p in e.parameters())


def synthetic(n_lists, n_items=60, length=8, d_k=16, seed=0):
    """Labels depend only on the knowledge: 1 iff <user vector, item vector> > 0."""
    g = torch.Generator().manual_seed(seed)
    item_k = torch.nn.functional.normalize(torch.randn(n_items, d_k, generator=g), dim=-1)
    user_k = torch.nn.functional.normalize(torch.randn(n_lists, d_k, generator=g), dim=-1)
    items = torch.stack([torch.randperm(n_items, generator=g)[:length] for _ in range(n_lists)])
    labels = ((user_k.unsqueeze(1) * item_k[items]).sum(-1) > 0).float()
    hist = torch.randint(1, n_items + 1, (n_lists, 5), generator=g)
    data = ListTensors([str(i) for i in range(n_lists)], items + 1, labels, hist, torch.ones_like(hist))
    genres = torch.zeros(n_items, 4)
    genres[torch.arange(n_items), torch.arange(n_items) % 4] = 1.0
    return data, user_k, item_k, genres


@pytest.mark.parametrize("kind", ["dlcm", "prm"])
def test_models_learn_a_knowledge_signal(kind):
    train, tk, item_k, genres = synthetic(600, seed=1)
    valid, vk, _, _ = synthetic(150, seed=2)
    test, sk, _, _ = synthetic(200, seed=3)
    # valid/test lists use the same item vectors (the catalog's knowledge) with new users
    valid.labels = ((vk.unsqueeze(1) * item_k[valid.items - 1]).sum(-1) > 0).float()
    test.labels = ((sk.unsqueeze(1) * item_k[test.items - 1]).sum(-1) > 0).float()
    ones = lambda n: torch.ones(n, dtype=torch.bool)  # noqa: E731
    results = {}
    for knowledge in (False, True):
        cfg = rcfg()
        hp = hyperparameters(cfg, kind, knowledge, 8)
        torch.manual_seed(0)
        model = build_reranker(hp, 60, genres, item_k if knowledge else None)
        train_reranker(model, train, valid, train_settings(cfg), seed=0, train_k=(tk, ones(600)) if knowledge else None,
                       valid_k=(vk, ones(150)) if knowledge else None)
        scores = predict(model, test, sk if knowledge else None, ones(200) if knowledge else None)
        results[knowledge] = float(map_at_k(scores, test.labels, 5).mean())
    chance = float(np.mean([map_at_k(torch.rand(200, 8), test.labels, 5).mean() for _ in range(20)]))
    assert results[True] > chance + 0.25, (results, chance)  # learned through the knowledge
    assert results[True] > results[False] + 0.2, (results, chance)  # and only through it
    assert results[False] < chance + 0.1, (results, chance)


def test_empty_knowledge_uses_the_missing_vector_and_roundtrip(tmp_path):
    data, uk, item_k, genres = synthetic(10)
    hp = hyperparameters(rcfg(), "prm", True, 8)
    model = build_reranker(hp, 60, genres, item_k).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.features.missing_user)
        none = model(data.items, data.hist, data.hist_r)
        flagged = model(data.items, data.hist, data.hist_r, uk, torch.zeros(10, dtype=torch.bool))
        given = model(data.items, data.hist, data.hist_r, uk, torch.ones(10, dtype=torch.bool))
    torch.testing.assert_close(none, flagged)
    assert not torch.allclose(none, given)
    save_reranker(tmp_path, model, hp, {"dataset": "toy", "encoder": "enc-a", "n_items": 60})
    loaded, meta = load_reranker(tmp_path, "toy", "enc-a", 60, genres)
    torch.testing.assert_close(predict(loaded, data, uk, torch.ones(10, dtype=torch.bool)), given)
    with pytest.raises(UserError, match="dataset 'toy'.*'ml-1m'"):
        load_reranker(tmp_path, "ml-1m", "enc-a", 60, genres)
    with pytest.raises(UserError, match="encoder 'enc-a'.*'enc-b'"):
        load_reranker(tmp_path, "toy", "enc-b", 60, genres)


def test_history_reaches_both_models():
    data, _, _, genres = synthetic(6)
    for kind in ("dlcm", "prm"):
        torch.manual_seed(0)
        model = build_reranker(hyperparameters(rcfg(), kind, False, 8), 60, genres).eval()
        other = data.take(range(6))
        other.hist = torch.roll(data.hist, 1, dims=0)
        with torch.no_grad():
            assert not torch.allclose(predict(model, data), predict(model, other))


def test_summary_only_ablation_ignores_the_history():
    data, uk, item_k, genres = synthetic(6)
    cfg = rcfg(knowledge_history=False)
    hp = hyperparameters(cfg, "dlcm", True, 8)
    assert hp["history"] is False and hyperparameters(cfg, "dlcm", False, 8)["history"] is True
    model = build_reranker(hp, 60, genres, item_k).eval()
    other = data.take(range(6))
    other.hist = torch.roll(data.hist, 1, dims=0)
    has = torch.ones(6, dtype=torch.bool)
    torch.testing.assert_close(predict(model, data, uk, has), predict(model, other, uk, has))
    assert not torch.allclose(predict(model, data, uk, has), predict(model, data, uk.roll(1, 0), has))


def test_item_prior_features_join_and_survive_a_roundtrip(tmp_path):
    data, uk, item_k, genres = synthetic(6)
    prior = torch.rand(60, 2)
    hp = hyperparameters(rcfg(item_prior=True), "dlcm", False, 8)
    assert hp["item_prior"] is True
    with pytest.raises(ValueError, match="item prior"):
        build_reranker(hp, 60, genres)
    torch.manual_seed(0)
    model = build_reranker(hp, 60, genres, None, prior).eval()
    assert model.features.out_dim == build_reranker(hyperparameters(rcfg(), "dlcm", False, 8), 60, genres).features.out_dim + 2
    torch.testing.assert_close(model.features.item_prior[data.items][..., 0], prior[data.items - 1][..., 0])
    # the wide path: w · logit(share), w = 1 at init
    torch.testing.assert_close(model.features.prior_logit(data.items),
                               torch.logit(prior[data.items - 1][..., 0].clamp(1e-4, 1 - 1e-4)))
    save_reranker(tmp_path, model, hp, {"dataset": "toy", "encoder": None, "n_items": 60})
    loaded, _ = load_reranker(tmp_path, "toy", "any", 60, genres)
    torch.testing.assert_close(predict(loaded, data), predict(model, data))
