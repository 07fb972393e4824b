"""`rlrf reward probe` (rlrf/reward/probe.py), the summary pool (rlrf/reward/pool.py) and the summary × item match term."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recmodels.train import ListTensors, build_reranker, predict, train_reranker
from rlrf.core.config import RewardConfig
from rlrf.reward import probe
from rlrf.data.lists import RerankList
from rlrf.evaluation.metrics import map_at_k
from rlrf.reward.training import reranker_hyperparameters as hyperparameters, train_settings

torch.set_num_threads(1)


def test_items_summary_template(ml100k_small):
    cat = ml100k_small.catalog
    assert probe.items_summary(cat, []) == ""
    text = probe.items_summary(cat, [0, 1])
    assert text.startswith("Likes ") and cat.titles[0] in text and cat.titles[1] in text


def test_probe_summaries_are_built_from_the_right_items(ml100k_small):
    ds = ml100k_small
    cat = ds.catalog
    users = ds.splits["valid"] + ds.splits["test"] + ds.splits["train"][:2]
    rng = np.random.default_rng(0)
    lists = {}
    for n, u in enumerate(users):
        items = rng.choice(len(cat), size=6, replace=False).tolist()
        labels = [1, 0, 1, 0, 0, 0] if n % 3 else [0] * 6  # every third user has no positive: not probed
        lists[u] = RerankList(u, ds.users[u].items[:3], ds.users[u].ratings[:3], items, labels)
    got = probe.probe_users(ds, lists)
    assert got == [u for n, u in enumerate(users[:-2]) if n % 3]  # valid then test, train never
    texts = probe.probe_texts(ds, lists, got)
    for row, u in enumerate(got):
        lst = lists[u]
        pos = [i for i, y in zip(lst.items, lst.labels) if y]
        neg = [i for i, y in zip(lst.items, lst.labels) if not y]
        assert texts["positives"][row] == probe.items_summary(cat, pos)
        assert texts["negatives"][row] == probe.items_summary(cat, neg)
        assert all(cat.titles[i] in texts["positives"][row] for i in pos)
        # a negative's title appears in the positives-summary only if it is also a substring of a positive's title
        for i in neg:
            if not any(cat.titles[i] in cat.titles[j] for j in pos):
                assert cat.titles[i] not in texts["positives"][row]
        assert texts["other user"][row] == texts["positives"][(row + 1) % len(got)]
        assert texts["empty"][row] == ""


def test_p_greater_counts_ties_half_and_ci_brackets_the_mean():
    assert probe.p_greater(np.array([1.0, 0.5, 0.2]), np.array([0.5, 0.5, 0.3])) == pytest.approx(0.5)
    d = np.array([0.1, 0.2, -0.05, 0.3])
    lo, hi = probe.paired_ci(d)
    assert lo <= d.mean() <= hi


def test_ties_at_the_top_k_ceiling_are_reported_and_the_whole_list_breaks_them():
    """Both summaries fill the top K with positives (NDCG@K 1.0 each) for user 0: a tie at the ceiling,
    though the whole list's NDCG still ranks the positives-summary first."""
    def variant(at_k, whole, margin):
        return {"ndcg@5": np.array(at_k), "ndcg@40": np.array(whole), "margin": np.array(margin)}
    pos = variant([1.0, 0.8, 0.5, 0.6], [0.95, 0.8, 0.6, 0.5], [0.9, 0.5, 0.4, 0.1])
    neg = variant([1.0, 0.8, 0.3, 0.7], [0.90, 0.7, 0.4, 0.6], [0.2, 0.1, 0.3, 0.2])
    scores = {v: pos if v != "negatives" else neg for v in probe.VARIANTS}
    row = probe.summarize(scores, "ndcg@5", list_metric="ndcg@40")
    assert row["ties_pos_neg"] == pytest.approx(0.5) and row["ties_at_ceiling"] == pytest.approx(0.25)
    assert row["losses_pos_neg"] == pytest.approx(0.25)
    assert row["p_pos_gt_neg"] == pytest.approx(0.5)  # 1 win + 2 ties × ½ of 4
    assert row["p_pos_gt_neg_list"] == pytest.approx(0.75)  # 3 wins, 1 loss
    assert row["p_pos_gt_neg_margin"] == pytest.approx(0.75)


def topic_data(n_lists, n_items=40, length=8, d_k=16, seed=0, item_k=None):
    """Label depends ONLY on the summary: items belong to one of 2 topics; label 1 iff item topic = summary topic."""
    g = torch.Generator().manual_seed(seed)
    topics = torch.nn.functional.normalize(torch.randn(2, d_k, generator=torch.Generator().manual_seed(99)), dim=-1)
    item_topic = torch.arange(n_items) % 2
    if item_k is None:
        item_k = torch.nn.functional.normalize(topics[item_topic] + 0.3 * torch.randn(n_items, d_k, generator=g), dim=-1)
    user_topic = torch.randint(0, 2, (n_lists,), generator=g)
    user_k = torch.nn.functional.normalize(topics[user_topic] + 0.3 * torch.randn(n_lists, d_k, generator=g), dim=-1)
    items = torch.stack([torch.randperm(n_items, generator=g)[:length] for _ in range(n_lists)])
    labels = (item_topic[items] == user_topic.unsqueeze(1)).float()
    hist = torch.randint(1, n_items + 1, (n_lists, 5), generator=g)  # uninformative history
    data = ListTensors([str(i) for i in range(n_lists)], items + 1, labels, hist, torch.ones_like(hist))
    genres = torch.zeros(n_items, 3)
    genres[torch.arange(n_items), torch.arange(n_items) % 3] = 1.0
    return data, user_k, item_k, genres


@pytest.mark.parametrize("kind", ["dlcm", "prm"])
@pytest.mark.parametrize("match", [False, True])
def test_a_label_that_depends_only_on_the_summary_is_learned(kind, match):
    train, tk, item_k, genres = topic_data(300, seed=1)
    valid, vk, _, _ = topic_data(80, seed=2, item_k=item_k)
    test, sk, _, _ = topic_data(120, seed=3, item_k=item_k)
    cfg = RewardConfig(embed_dim=8, hidden=16, heads=2, layers=1, adapter_out=8, adapter_hidden=16,
                          shared_experts=1, specific_experts=1, dropout=0.0, knowledge_dropout=0.0, epochs=12,
                          batch_size=32, learning_rate=5e-3, weight_decay=0.0, patience=4, summary_match=match)
    ones = lambda n: torch.ones(n, dtype=torch.bool)  # noqa: E731
    torch.manual_seed(0)
    model = build_reranker(hyperparameters(cfg, kind, True, 8), 40, genres, item_k)
    train_reranker(model, train, valid, train_settings(cfg), seed=0, train_k=(tk, ones(300)), valid_k=(vk, ones(80)))
    got = float(map_at_k(predict(model, test, sk, ones(120)), test.labels, 5).mean())
    flipped = float(map_at_k(predict(model, test, -sk, ones(120)), test.labels, 5).mean())  # the other topic's summary
    chance = float(np.mean([map_at_k(torch.rand(120, 8), test.labels, 5).mean() for _ in range(20)]))
    assert got > chance + 0.3, (got, chance)
    assert flipped < chance, (flipped, chance)


def test_match_term_is_zero_without_a_summary_and_for_padding():
    _, uk, item_k, genres = topic_data(4)
    cfg = RewardConfig(embed_dim=8, hidden=16, heads=2, layers=1, adapter_out=8, adapter_hidden=16,
                          shared_experts=1, specific_experts=1, dropout=0.0, knowledge_dropout=0.0, summary_match=True)
    model = build_reranker(hyperparameters(cfg, "dlcm", True, 3), 40, genres, item_k).eval()
    items = torch.tensor([[1, 2, 0], [3, 4, 5]])
    m = model.features.match_logit(items, uk[:2], torch.tensor([True, False]))
    assert m[0, 2] == 0 and (m[1] == 0).all() and (m[0, :2] != 0).all()
    assert model.features.match_logit(items, None, None) == 0.0


def test_split_half_tells_a_taste_signal_from_item_matching():
    from rlrf.reward.probe import split_half_agreement

    rng = np.random.default_rng(0)
    labels = [np.array([True] * 5 + [False] * 5) for _ in range(200)]
    # taste: a summary raises every positive by its own amount, so it wins on any half of the list
    taste = []
    for y in labels:
        lift = rng.normal(size=(4, 1))
        taste.append(rng.normal(scale=0.1, size=(4, 10)) + lift * y)
    # item matching: each summary raises a few items at random, whatever their label
    matching = [rng.normal(size=(4, 10)) for _ in labels]
    t, m = split_half_agreement(taste, labels), split_half_agreement(matching, labels)
    assert t["within_user_corr"] > 0.9 and t["same_best"] > 0.8
    assert abs(m["within_user_corr"]) < 0.15 and abs(m["same_best"] - m["same_best_chance"]) < 0.1
    lo, hi = m["within_user_corr_ci95"]
    assert lo < m["within_user_corr"] < hi and m["same_best_chance"] == 0.25


def test_match_term_starts_at_match_scale_times_the_cosine():
    """reward.match_scale is the cosine's starting weight (AdamW moves it ~one learning rate a step)."""
    _, uk, item_k, genres = topic_data(4)
    items = torch.tensor([[1, 2, 3]])
    logits = {}
    for scale in (1.0, 5.0):
        cfg = RewardConfig(embed_dim=8, hidden=16, heads=2, layers=1, adapter_out=8, adapter_hidden=16,
                              shared_experts=1, specific_experts=1, dropout=0.0, knowledge_dropout=0.0,
                              summary_match=True, match_scale=scale)
        hp = hyperparameters(cfg, "dlcm", True, 3)
        assert hp["match_scale"] == scale  # saved with the model's hyperparameters
        model = build_reranker(hp, 40, genres, item_k).eval()
        torch.nn.init.zeros_(model.features.match_p.weight)  # the cosine part alone
        logits[scale] = model.features.match_logit(items, uk[:1], torch.tensor([True]))
    cos = torch.nn.functional.cosine_similarity(uk[:1].unsqueeze(1), item_k[:3].unsqueeze(0), dim=-1)
    assert torch.allclose(logits[1.0], cos, atol=1e-6)
    assert torch.allclose(logits[5.0], 5 * cos, atol=1e-5)


def probe_texts_of_a_policy() -> list[str]:
    return ["Loves Comedy and Romance from the nineties.", "Prefers Sci-Fi, Action and War movies.",
            "Enjoys Drama; dislikes Horror."]


def test_pool_texts_use_train_users_future_and_probe_end_to_end(tmp_path, capsys):
    from rlrf.reward import inputs, training
    from rlrf.core.config import load_config
    from rlrf.reward.probe import run_probe
    from rlrf.reward.pool import PoolSampler, future_liked

    cfg = load_config("quickstart", {
        "run_dir": str(tmp_path / "run"), "threads": 1, "data.max_users": 120,
        "encoder.model": "hashing:64", "encoder.cache_dir": str(tmp_path / "cache"),
        "reward.models": ["dlcm"], "reward.epochs": 2, "reward.hidden": 16, "reward.embed_dim": 8,
        "reward.train_summaries": "pool", "reward.summary_match": True, "reward.history_dropout": 0.2,
    })
    ctx = inputs.prepare(cfg, progress=False)
    train_lists = ctx.split_lists("train")
    sampler = PoolSampler(ctx, train_lists, seed=0)
    assert len(sampler.texts) == len(train_lists) * cfg.reward.pool_size
    for n, lst in enumerate(train_lists[:20]):
        user = ctx.ds.users[lst.user]
        future = user.items[len(lst.history):]
        assert set(future_liked(ctx.ds, lst, "future", 4.0)) <= set(future)  # the user's own future only
        liked = future_liked(ctx.ds, lst, "kar", 4.0)  # KAR lists: liked = rated >= 4
        assert set(liked) <= set(future)
        assert all(i in lst.items or user.ratings[user.items.index(i)] >= 4 for i in liked)
    uk, hk = sampler(1)
    assert uk.shape == (len(train_lists), ctx.encoder.dim) and hk.dtype == torch.bool
    training.train(cfg, 1, ctx=ctx)
    # a policy's summaries: three per held-out user
    held_out = ctx.ds.splits["valid"] + ctx.ds.splits["test"]
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps({"user": u, "iter": 0, "k": k, "text": text}) + "\n"
                                 for u in held_out for k, text in enumerate(probe_texts_of_a_policy())))
    out = run_probe(cfg, n_seeds=1, responses=responses)
    saved = json.loads((tmp_path / "run" / "reward" / "probe.json").read_text())
    row = saved["models"]["dlcm_knowledge"][0]
    assert saved["users"] == out["users"] > 0 and 0 <= row["p_pos_gt_neg"] <= 1
    assert saved["list_metric"] == f"ndcg@{cfg.data.lists.length}" and 0 <= row["p_pos_gt_neg_list"] <= 1
    assert set(row["mean"]) == set(probe.VARIANTS)
    lo, hi = row["gap"]["ci95"]
    assert lo <= row["gap"]["mean"] <= hi
    assert row["policy_summaries"]["users"] > 0
    split = row["policy_split_half"]
    assert 0 < split["users"] <= row["policy_summaries"]["users"] and split["same_best_chance"] == pytest.approx(1 / 3)
    printed = capsys.readouterr().out
    assert "P(pos>neg)" in printed and "split-half" in printed


def test_extra_cuts_build_kar_lists_from_each_cuts_own_history(ml100k_small):
    from rlrf.core.config import ListsConfig
    from rlrf.data.lists import history_cut
    from rlrf.reward.train_cuts import extra_cuts, extra_train_lists

    assert extra_cuts(20, 10, 10, 2) == [5]
    assert extra_cuts(100, 30, 10, 3) == [15, 40, 50]
    assert extra_cuts(2, 1, 10, 2) == []
    ds = ml100k_small
    users = ds.splits["train"][:10]
    extra = extra_train_lists(ds, users, ListsConfig(), 4.0, 3, seed=0)
    assert extra and {lst.user for lst in extra} <= set(users)
    for lst in extra:
        user = ds.users[lst.user]
        cut = len(lst.history)
        assert cut != history_cut(len(user.items), 30) and lst.history == user.items[:cut]
        future = dict(zip(user.items[cut: cut + 10], user.ratings[cut: cut + 10]))
        for i, y in zip(lst.items, lst.labels):
            assert y == int(i in future and future[i] >= 4)
            assert i in future or i not in user.items  # padding is unseen
