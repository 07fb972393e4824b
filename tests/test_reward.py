"""The reward stage (rlrf/reward/): scoring API against a per-pair reference, train/eval end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recmodels import encoder as kn
from recmodels.train import build_reranker
from rlrf.core.config import RewardConfig
from rlrf.reward import inputs, training
from rlrf.reward.scorer import RewardScorer, score_summaries
from rlrf.reward.training import reranker_hyperparameters
from rlrf.data.lists import RerankList
from rlrf.core.errors import UserError
from rlrf.evaluation.metrics import map_at_k, ndcg_at_k

torch.set_num_threads(1)

RCFG = RewardConfig(embed_dim=8, hidden=16, heads=2, layers=1, adapter_out=8, adapter_hidden=16,
                    shared_experts=1, specific_experts=2, dropout=0.1, knowledge_dropout=0.1)


def toy_lists(n_users=12, n_items=40, length=6, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for u in range(n_users):
        hist = rng.choice(n_items, size=int(rng.integers(0, 8)), replace=False).tolist()  # user 0.. may have none
        ratings = [float(r) for r in rng.integers(1, 6, size=len(hist))]
        items = rng.choice(n_items, size=length, replace=False).tolist()
        labels = rng.integers(0, 2, size=length).tolist()
        out[f"u{u}"] = RerankList(f"u{u}", hist, ratings, items, labels)
    return out


@pytest.fixture
def scorer(tmp_path):
    n_items = 40
    enc = kn.CachedEncoder("hashing:32|norm", kn.EmbeddingCache(tmp_path, "hashing:32|norm"),
                           lambda: kn.HashingEncoder(32), progress=False)
    item_vecs = enc.encode([f"item {i} genre {i % 5}" for i in range(n_items)])
    genres = np.eye(5, dtype=np.float32)[np.arange(n_items) % 5]
    torch.manual_seed(0)
    model = build_reranker(reranker_hyperparameters(RCFG, "prm", True, 6), n_items, genres, item_vecs)
    return RewardScorer(model, toy_lists(), enc, max_history=5)


def reference(scorer, user, text, k):
    """One pair at a time, straight through the model and the numpy metrics."""
    lst = scorer.data.take([scorer.row[user]])
    vec = torch.from_numpy(scorer.encoder.encode([text])) if text.strip() else torch.zeros(1, scorer.encoder.dim)
    has = torch.tensor([bool(text.strip())])
    with torch.no_grad():
        s = scorer.model.eval()(lst.items, lst.hist, lst.hist_r, vec, has)
    y = lst.labels[0] > 0
    margin = float(s[0][y].mean() - s[0][~y].mean()) if y.any() and (~y).any() else 0.0
    gap = float(s[0].sort().values.diff().min())  # a near-tie may rank either way in float32
    return float(ndcg_at_k(s, lst.labels, k)[0]), float(map_at_k(s, lst.labels, k)[0]), margin, gap


def test_batched_scores_equal_the_per_pair_reference(scorer):
    rng = np.random.default_rng(1)
    users = [f"u{int(i)}" for i in rng.integers(0, 12, size=50)]
    words = ["drama", "comedy", "noir", "space", "romance", "war", "kids", "horror"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 6)))) for _ in users]
    texts[3] = ""  # empty: no knowledge, flagged
    texts[7] = "   "
    got = scorer.score(users, texts, batch_size=16)  # several batches
    assert got["empty"].tolist() == [i in (3, 7) for i in range(50)]
    checked = 0
    for i, (u, t) in enumerate(zip(users, texts)):
        for k in scorer.ks:
            nd, mp, margin, gap = reference(scorer, u, t, k)
            assert got["margin"][i] == pytest.approx(margin, abs=1e-5)
            if gap < 1e-5:
                continue
            checked += 1
            assert got[f"ndcg@{k}"][i] == pytest.approx(nd, abs=1e-6)
            assert got[f"map@{k}"][i] == pytest.approx(mp, abs=1e-6)
    assert checked > 0.9 * 50 * len(scorer.ks)
    # summaries matter: some user gets different scores from different summaries
    per_user = score_summaries(scorer, {"u1": texts[:10], "u2": texts[10:20]})
    assert [len(v) for v in per_user.values()] == [10, 10]
    assert per_user["u1"][3]["empty"] is True
    logits = []
    for t in ["drama drama", "space war", "kids comedy"]:
        lst = scorer.data.take([scorer.row["u2"]])
        with torch.no_grad():
            logits.append(scorer.model(lst.items, lst.hist, lst.hist_r, torch.from_numpy(scorer.encoder.encode([t])),
                                       torch.tensor([True])))
    assert not torch.allclose(logits[0], logits[1])


def test_unknown_user_is_a_user_error(scorer):
    with pytest.raises(UserError, match="no reranking list.*'nobody'"):
        scorer.score(["u1", "nobody"], ["a", "b"])


def test_train_eval_end_to_end_on_a_small_ml100k(tmp_path, capsys):
    from rlrf.core.config import load_config

    cfg = load_config("quickstart", {
        "run_dir": str(tmp_path / "run"), "threads": 1, "data.max_users": 150,
        "encoder.model": "hashing:64", "encoder.cache_dir": str(tmp_path / "cache"),
        "reward.models": ["dlcm"], "reward.epochs": 2, "reward.hidden": 16, "reward.embed_dim": 8,
    })
    with pytest.raises(UserError, match="reward model not found"):
        training.evaluate(cfg, 1)
    ctx = inputs.prepare(cfg, progress=False)
    assert all(t for u, t in ctx.user_texts.items() if ctx.lists[u].history)
    summary = training.train(cfg, 2, ctx=ctx)
    assert set(summary) == {"dlcm", "dlcm_knowledge"} and len(summary["dlcm"]) == 2
    from rlrf.core.layout import RunLayout  # each reranker's epochs also go to TensorBoard
    assert all(list(RunLayout(cfg.run_dir).reward_tensorboard(n, s).glob("events.out.tfevents.*"))
               for n in ("dlcm", "dlcm_knowledge") for s in (0, 1))
    out = training.evaluate(cfg, 2, ctx=ctx)
    saved = json.loads((tmp_path / "run" / "reward" / "eval.json").read_text())
    assert saved["split"] == "test" and saved["seeds"] == [0, 1]
    assert saved["n_lists"] == len([u for u in ctx.ds.splits["test"] if u in ctx.lists])
    for name in ("dlcm", "dlcm_knowledge"):
        r = out["results"][name]
        assert set(r["mean"]) == {f"{m}@{k}" for m in ("ndcg", "map") for k in (1, 3, 5, 7)}
        assert all(0 <= v <= 1 for v in r["mean"].values()) and all(v >= 0 for v in r["sd"].values())
    captured = capsys.readouterr()
    printed = captured.out
    # the validation quality of each variant is recorded, and a worse +knowledge model is warned about
    validation = json.loads((tmp_path / "run" / "reward" / "train.json").read_text())["validation"]["dlcm"]
    assert validation["base_valid_map@5"] == pytest.approx(np.mean([r["valid_map@5"] for r in summary["dlcm"]]))
    assert validation["knowledge_valid_map@5"] == pytest.approx(
        np.mean([r["valid_map@5"] for r in summary["dlcm_knowledge"]]))
    worse = validation["knowledge_valid_map@5"] < validation["base_valid_map@5"]
    assert validation["knowledge_worse"] is worse
    assert ("DLCM +knowledge selects worse than its base" in " ".join(captured.err.split())) is worse
    assert "±" in printed and "random order" in printed and "DLCM +knowledge − base" in printed
    gain = out["knowledge_gain"]["dlcm"]["map@5"]
    lo, hi = gain["ci95"]
    assert lo <= gain["mean"] <= hi
    assert 0 < out["random_order"]["map@5"] < 1 and 0 < out["item_prior"]["map@5"] < 1
    assert "item prior (no model)" in printed
    meta = json.loads((tmp_path / "run" / "reward" / "dlcm_knowledge" / "meta.json").read_text())
    assert meta["dataset"] == "ml-100k" and meta["encoder"] == "hashing:64|norm"
    # the scoring stage's entry point loads model.pt; another encoder is refused, naming both
    sc = RewardScorer.from_run(cfg, ds=ctx.ds, lists=ctx.lists, encoder=ctx.encoder)
    users = ctx.ds.splits["train"][:3]
    got = sc.score(users, [ctx.user_texts[u] for u in users])
    assert got["map@5"].shape == (3,)
    other = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"model": "hashing:32"})})
    with pytest.raises(UserError, match="encoder 'hashing:64\\|norm'.*'hashing:32\\|norm'"):
        RewardScorer.from_run(other, ds=ctx.ds, lists=ctx.lists)


def test_user_knowledge_from_a_responses_file(tmp_path):
    from rlrf.core.config import load_config
    from rlrf.data.dataset import load_dataset

    responses = tmp_path / "responses.jsonl"
    cfg = load_config("quickstart", {
        "run_dir": str(tmp_path / "run"), "data.max_users": 60, "encoder.model": "hashing:32",
        "encoder.cache_dir": str(tmp_path / "cache"), "reward.user_knowledge": str(responses)})
    ds = load_dataset(cfg.data, seed=cfg.seed)
    a, b = list(ds.users)[:2]
    rows = [{"user": a, "iter": 0, "k": 0, "text": "Loves 90s science fiction."},
            {"user": b, "iter": 0, "k": 0, "text": ""},
            {"user": "no-such-user", "iter": 0, "k": 0, "text": "ghost"}]
    responses.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx = inputs.prepare(cfg, progress=False, ds=ds)
    notes = " | ".join(ctx.notes)
    assert "1 unknown ids skipped (no-such-user)" in notes
    assert "1 ids with an empty text" in notes
    assert f"{len(ctx.lists) - 1} users without a summary" in notes
    assert {u: t for u, t in ctx.user_texts.items() if t} == {a: "Loves 90s science fiction."}
    vecs, has = ctx.user_knowledge(list(ctx.lists))
    assert int(has.sum()) == 1 and float(vecs[~has].abs().sum()) == 0.0


def test_knowledge_vs_base_compares_mean_validation_over_seeds():
    summary = {"dlcm": [{"valid_map@5": 0.40}, {"valid_map@5": 0.44}],
               "dlcm_knowledge": [{"valid_map@5": 0.30}, {"valid_map@5": 0.32}],
               "prm": [{"valid_map@5": 0.40}], "prm_knowledge": [{"valid_map@5": 0.45}],
               "dlcm_only_base": [{"valid_map@5": 0.1}]}
    got = training.knowledge_vs_base(summary)
    assert set(got) == {"dlcm", "prm"}
    assert got["dlcm"] == {"base_valid_map@5": pytest.approx(0.42), "knowledge_valid_map@5": pytest.approx(0.31),
                           "knowledge_worse": True}
    assert got["prm"]["knowledge_worse"] is False


def test_section_api_builds_the_same_inputs_as_the_run_adapter(tmp_path):
    from rlrf.core.config import load_config
    from rlrf.core.layout import RunLayout

    cfg = load_config("quickstart", {
        "run_dir": str(tmp_path / "run"), "data.max_users": 60, "encoder.model": "hashing:32",
        "encoder.cache_dir": str(tmp_path / "cache")})
    via_cfg = inputs.prepare(cfg, progress=False)
    via_sections = inputs.prepare_inputs(cfg.data, cfg.reward, cfg.encoder, cfg.sasrec, RunLayout(cfg.run_dir), cfg.seed,
                                         progress=False)
    assert via_sections.user_texts == via_cfg.user_texts and list(via_sections.lists) == list(via_cfg.lists)
    np.testing.assert_array_equal(via_sections.item_vecs, via_cfg.item_vecs)
    assert training.reward_seeds(cfg.seed, 3) == training.seeds_for(cfg, 3) == [0, 1, 2]
