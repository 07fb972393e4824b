"""SPRec: greedy self-play negatives in the policy's own words (never the target, by item or title),
equal pair counts for every arm, train-only popularity, twin titles as hits, sliding-window SFT,
seeds pooled with paired CIs, and the whole command on a tiny random policy."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rlrf.data.texts import load_encoder
from rlrf.core.config import EncoderConfig, read_yaml
from rlrf.core.io import read_json, read_jsonl
from rlrf.core.layout import RunLayout
from rlrf.evaluation import metrics as m
from rlrf.generation.grounding import Grounding, TitleGrounder
from rlrf.methods.loop import run_loop
from rlrf.methods.sprec import arms, collect
from rlrf.methods.sprec.comparison import PolicyLists, compare, metric_keys
from rlrf.methods.sprec.evaluation import evaluation_histories, held_out_spec, title_ranks
from rlrf.data.dataset import train_popularity
from rlrf.methods.sprec.examples import answer_text, iteration_users, sft_windows, window_records
from rlrf.methods.sprec.negatives import SAMPLERS, Negative, build_pairs, sampled_negatives, self_play_negatives

torch.set_num_threads(1)


def append_jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def grounder(ml100k_small):
    encoder = load_encoder(EncoderConfig(model="hashing:64", cache=False), progress=False)
    return TitleGrounder(ml100k_small.catalog, encoder, min_similarity=0.3, popularity=train_popularity(ml100k_small))


def _twins(cat):
    return [i for i, t in enumerate(cat.titles) if t == "Chasing Amy"]


def test_self_play_negatives_are_the_policys_own_texts_never_the_target_by_item_or_title(ml100k_small, grounder):
    cat = ml100k_small.catalog
    amy, twin = _twins(cat)  # "Chasing Amy (1997)" is two items
    star_wars = next(i for i, t in enumerate(cat.titles) if t == "Star Wars")
    candidates = [
        (0, "Chasing Amy (1997)", Grounding(twin, "exact")),        # the target's twin: the target by title
        (1, "I recommend chasing amy.", Grounding(None, "none", 0.1)),  # ungrounded, but names the target
        (2, "   ", Grounding(None, "none")),                          # empty
        (3, " Star Wars (1977) is a classic\n", Grounding(star_wars, "exact")),
        (4, "star wars", Grounding(star_wars, "normalised")),          # the same title again
        (5, "A Film Nobody Made (2031)", Grounding(None, "none", 0.2)),  # ungrounded: still the policy's answer
    ]
    negs = self_play_negatives(grounder, amy, candidates, k=5)
    assert [n.text for n in negs] == ["Star Wars (1977) is a classic", "A Film Nobody Made (2031)"]
    assert [n.item for n in negs] == [star_wars, None] and [n.source for n in negs] == ["sampled", "sampled"]
    greedy = self_play_negatives(grounder, amy, [(0, "Star Wars", Grounding(star_wars, "exact"))], k=1)
    assert greedy == [Negative("Star Wars", star_wars, "greedy")]
    assert self_play_negatives(grounder, amy, candidates[:3], k=1) == []


def test_sampled_negatives_avoid_the_target_and_the_history():
    rng = np.random.default_rng(0)
    popularity = np.array([1000, 1, 1, 1, 500, 1, 1, 1, 1, 1])
    for _ in range(200):
        drawn = sampled_negatives(rng, 10, 3, exclude={0, 2}, popularity=popularity)
        assert len(set(drawn)) == 3 and not {0, 2} & set(drawn)
    counts = np.bincount([sampled_negatives(rng, 10, 1, {0}, popularity)[0] for _ in range(300)], minlength=10)
    assert counts[4] > 200
    assert sampled_negatives(rng, 3, 5, exclude={0, 1, 2}) == []  # nothing left to draw


def test_pairs_put_the_real_next_item_first_and_refuse_the_target_as_negative(ml100k_small):
    from rlrf.generation.generate import Prompt

    cat = ml100k_small.catalog
    user = next(iter(ml100k_small.users))
    target = ml100k_small.users[user].items[-1]
    prompt = Prompt(user, "PROMPT", [1, 2], {"target": cat.ids[target]})
    other = (target + 1) % len(cat)
    (pair,) = build_pairs(ml100k_small, [prompt], {user: [Negative("what the policy wrote", other, "greedy")]},
                          similarity=lambda i, j: 0.25)
    assert pair["chosen"] == answer_text(cat, target) and pair["rejected"] == "what the policy wrote"
    assert pair["margin"] == pytest.approx(0.75) and pair["prompt"] == "PROMPT" and pair["rejected_sources"] == ["greedy"]
    (pair,) = build_pairs(ml100k_small, [prompt], {user: [Negative("ungrounded", None, "greedy")]}, similarity=lambda i, j: 0.25)
    assert pair["margin"] == 1.0
    with pytest.raises(AssertionError):
        build_pairs(ml100k_small, [prompt], {user: [Negative(answer_text(cat, target), target, "random")]})


def test_popularity_counts_training_users_only(ml100k_small):
    ds = ml100k_small
    pop = train_popularity(ds)
    train_items = [i for u in ds.splits["train"] for i in ds.users[u].items]
    assert pop.sum() == len(train_items) and (pop == np.bincount(train_items, minlength=len(ds.catalog))).all()
    held_out = [u for s in ("valid", "test") for u in ds.splits[s]]
    only_held_out = {ds.users[u].items[-1] for u in held_out} - set(train_items)
    assert only_held_out and all(pop[i] == 0 for i in only_held_out)  # test users' targets do not count
    assert (np.asarray(ds.catalog.popularity) >= pop).all() and (np.asarray(ds.catalog.popularity) > pop).any()


def test_a_twin_title_counts_as_a_hit(ml100k_small, grounder):
    amy, twin = _twins(ml100k_small.catalog)
    recs = np.array([[3, twin, 7], [amy, 1, 2], [5, 6, -1]])
    targets = np.array([amy, amy, amy])
    assert title_ranks(recs, targets).tolist() == [-1, 0, -1]
    assert title_ranks(recs, targets, grounder.twin).tolist() == [1, 0, -1]


def test_sft_sees_sliding_windows_of_train_users(ml100k_small, tiny_sprec_config):
    from rlrf.generation.generate import build_prompts
    from rlrf.generation.policy import policy_tokenizer

    ds, cfg = ml100k_small, tiny_sprec_config
    users = [u for u in ds.splits["train"] if len(ds.users[u].items) >= 2][:5]
    windows = sft_windows(ds, cfg.sprec, cfg.seed, users)
    assert len(windows) == sum(min(cfg.sprec.sft_windows, len(ds.users[u].items) - 1) for u in users)
    tok = policy_tokenizer(cfg.llm)
    records = window_records(cfg, ds, tok, windows)
    for (u, t), r in zip(windows, records):
        assert r["completion"] == answer_text(ds.catalog, ds.users[u].items[t]) and 1 <= t < len(ds.users[u].items)
    # the window at the last position is exactly the generation prompt
    last = {u: r for (u, t), r in zip(windows, records) if t == len(ds.users[u].items) - 1}
    for p in build_prompts(cfg, ds, tok, "next_item", users=users):
        assert last[p.key]["prompt"] == p.text
    capped = sft_windows(ds, cfg.sprec.model_copy(update={"sft_max_examples": 7}), cfg.seed, users)
    assert len(capped) == 7 and set(capped) <= set(windows)


def test_self_play_is_greedy_falls_back_to_samples_and_every_arm_makes_one_pair_per_user(tiny_sprec_config, monkeypatch):
    """The first generation is greedy (temperature 0, one answer); only users whose answer is the
    target or empty get sampled answers; a user with no usable answer at all gets a catalogue item."""
    import rlrf.generation.generate as gen

    cfg = tiny_sprec_config
    arm_list = arms(cfg, show_progress=False)
    ds = arm_list[0][0].ds
    cat = ds.catalog
    users = iteration_users(ds, cfg.sprec, cfg.seed, 0)
    target_user, empty_user, hopeless_user = users[0], users[1], users[2]
    calls = []

    def fake_generate_texts(g, prompts, policy, layout, *, mode, iteration, sampling, n, **_):
        calls.append((sampling.temperature, n, [p.key for p in prompts]))
        have = {(r["user"], r["k"]) for r in read_jsonl(layout.responses(iteration, mode))}
        append_jsonl(layout.prompts(iteration, mode), [{"user": p.key, "prompt_hash": p.hash} for p in prompts
                                                       if (p.key, 0) not in have])
        rows = []
        for p in prompts:
            target = cat.index(p.meta["target"])
            for k in range(n):
                if (p.key, k) in have:
                    continue
                if p.key == hopeless_user:
                    text = answer_text(cat, target)
                elif sampling.temperature == 0:
                    text = {target_user: answer_text(cat, target), empty_user: ""}.get(p.key, f"My own guess {p.key}")
                else:
                    text = f"Sampled guess {k}"
                rows.append({"user": p.key, "iter": iteration, "k": k, "text": text, "target": p.meta["target"]})
        append_jsonl(layout.responses(iteration, mode), rows)

    monkeypatch.setattr(gen, "generate_texts", fake_generate_texts)
    stats = {}
    for method, layout, seed in arm_list:
        method.generate(cfg, layout, seed, 0, None)  # from the base policy
        stats[method.name] = method.score(cfg, layout, seed, 0)
    assert calls[0] == (0.0, 1, users)  # greedy, one answer per user
    assert calls[1][0] == cfg.sprec.fallback_temperature and calls[1][1] == cfg.sprec.samples
    assert sorted(calls[1][2]) == sorted([target_user, empty_user, hopeless_user])
    assert len(calls) == 2  # the baselines generate nothing
    assert {s["pairs"] for s in stats.values()} == {len(users)}  # equal pair counts
    pairs = {p["user"]: p for p in read_jsonl(RunLayout(cfg.run_dir).arm("sprec").pairs(0))}
    assert pairs[users[3]]["rejected"] == f"My own guess {users[3]}" and pairs[users[3]]["rejected_sources"] == ["greedy"]
    assert pairs[target_user]["rejected"] == "Sampled guess 0" and pairs[empty_user]["rejected_sources"] == ["sampled"]
    assert pairs[hopeless_user]["rejected_sources"] == ["catalogue"]
    assert pairs[hopeless_user]["rejected"] != pairs[hopeless_user]["chosen"]
    assert stats["sprec"]["greedy_is_target"] == 2 and stats["sprec"]["greedy_empty"] == 1
    assert stats["sprec"]["sources"] == {"greedy": len(users) - 3, "sampled": 2, "catalogue": 1}


def test_eval_protocols_differ_in_masking_and_mgus_history(ml100k_small, tiny_sprec_config):
    ds, cfg = ml100k_small, tiny_sprec_config
    users = [u for u in ds.splits["test"] if len(ds.users[u].items) > cfg.data.lists.max_history + 1][:3]
    spec = held_out_spec(ds, cfg)
    masked, baseline = evaluation_histories(ds, spec, users)  # sprec: SPRec's own
    assert all(masked[u] == [] for u in users)
    assert all(baseline[u] == ds.users[u].items[:-1][-cfg.data.lists.max_history:] for u in users)
    masked, baseline = evaluation_histories(ds, replace(spec, protocol="rlrf"), users)
    assert all(masked[u] == baseline[u] == ds.users[u].items[:-1] for u in users)


def test_seeds_are_pooled_and_differences_from_sft_get_paired_bootstrap_cis(ml100k_small):
    cat = ml100k_small.catalog
    genre = cat.genre_matrix().astype(float)
    pop = train_popularity(ml100k_small).astype(float)
    rng = np.random.default_rng(0)
    n, k = 40, 10
    hist = [rng.choice(len(cat), 5).tolist() for _ in range(n)]

    def lists(seed, hits):
        recs = np.random.default_rng(seed).choice(len(cat), size=(n, k))
        return PolicyLists(recs, hist, genre, pop, {"hr@1": hits, "ndcg@1": hits, "hr@10": hits, "ndcg@10": hits})

    sft = {s: lists(s, [0.0] * n) for s in (0, 1, 2)}
    same = {s: lists(s, [0.0] * n) for s in (0, 1, 2)}
    better = {s: lists(10 + s, [1.0] * 10 + [0.0] * 30) for s in (0, 1, 2)}
    out = compare({"SFT": sft, "same": same, "better": better}, "SFT", metric_keys([1, 10]), n_boot=300)
    # the point values are the library's metrics of the whole lists
    one = sft[0]
    every = np.arange(n)[None, :]
    mgu, dgu = m.mgu_dgu(one.recs, np.concatenate(hist), genre, 10)
    assert one.statistic("mgu@10", every)[0] == pytest.approx(mgu)
    assert one.statistic("dgu@10", every)[0] == pytest.approx(dgu)
    assert one.statistic("div_ratio@10", every)[0] == pytest.approx(m.div_ratio(one.recs, 10))
    assert one.statistic("or_ratio@1", every)[0] == pytest.approx(m.or_ratio(one.recs, 1))
    assert one.statistic("mean_popularity@10", every)[0] == pytest.approx(m.mean_popularity(one.recs, pop, 10))
    assert out["SFT"]["metrics"]["hr@10"]["sd"] == 0.0 and "vs_sft" not in out["SFT"]["metrics"]["hr@10"]
    for key in metric_keys([1, 10]):  # a policy identical to SFT: difference 0, CI [0, 0]
        same = out["same"]["metrics"][key]["vs_sft"]
        assert (same["mean"], same["ci95"]) == (0.0, [0.0, 0.0])
    d = out["better"]["metrics"]["hr@10"]["vs_sft"]
    assert d["mean"] == pytest.approx(0.25) and 0 < d["ci95"][0] < 0.25 < d["ci95"][1]
    assert out["better"]["seeds"] == [0, 1, 2] and len(out["better"]["metrics"]["div_ratio@10"]["per_seed"]) == 3


@pytest.fixture
def tiny_sprec_config(tiny_config):
    return tiny_config(
        data={"max_users": 60, "lists": {"max_history": 5}},
        generate={"max_new_tokens": 8, "batch_size": 32, "profile": False},
        encoder={"model": "hashing:32"},
        align={"trainer_args": {"per_device_train_batch_size": 2, "max_length": 256, "learning_rate": 1e-3}},
        sft={"users": 8, "trainer_args": {"per_device_train_batch_size": 4, "max_length": 256}},
        loop={"iterations": 1, "eval_users": 5},
        sprec={"users_per_iteration": 6, "samples": 2, "min_similarity": -1.0, "ks": [1, 5, 10], "sft_windows": 2,
               "bootstrap": 200},
    )


def test_sprec_end_to_end_on_a_tiny_policy_with_two_seeds(tiny_sprec_config):
    from rlrf.data.dataset import load_dataset
    from rlrf.report import write_report

    cfg = tiny_sprec_config.model_copy(update={"sprec": tiny_sprec_config.sprec.model_copy(update={"seeds": [0, 1]})})
    run = cfg.run_dir
    metrics = run_sprec(cfg)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    cat = ds.catalog

    assert metrics["seeds"] == [0, 1] and set(metrics["seed_runs"]) == {"0", "1"}
    for seed in (0, 1):
        assert (run / f"seed_{seed}" / "sft" / "adapter" / "adapter_config.json").exists()
        saved = read_yaml((run / f"seed_{seed}" / "config.yaml").read_text())  # the seed's folder: a run of its own
        assert saved["seed"] == seed and saved["run_dir"] == str(run / f"seed_{seed}")
        assert saved["sprec"] == cfg.sprec.model_dump(mode="json") and saved["data"] == cfg.data.model_dump(mode="json")
        users = iteration_users(ds, cfg.sprec, seed, 0)
        counts = set()
        for name in ("sprec", "dpo_random", "dpo_popularity"):
            method = metrics["seed_runs"][str(seed)][name]
            assert list(method["evaluations"]) == ["policy_0", "policy_1"]
            pairs = read_jsonl(run / f"seed_{seed}" / name / "iter_0" / "pairs.jsonl")
            counts.add(len(pairs))
            assert {p["user"] for p in pairs} == set(users) and set(users) <= set(ds.splits["train"])
            for p in pairs:
                assert p["chosen"] == answer_text(cat, ds.users[p["user"]].items[-1]) and p["chosen"] not in p["rejected_list"]
            log = read_json(run / f"seed_{seed}" / name / "iter_0" / "align_log.json")
            assert log["summary"]["start_adapter"] == str(run / f"seed_{seed}" / name / "iter_0" / "sft_adapter")
        assert counts == {len(users)}  # every arm one pair per iteration user
        # self-play's rejected texts are what the policy wrote (greedy k=0, or a sampled fallback)
        arm = RunLayout(run / f"seed_{seed}" / "sprec")
        texts = {(r["user"], r["text"].strip()) for r in read_jsonl(arm.responses(0, "next_item"))
                 + read_jsonl(arm.self_play_fallback.responses(0, "next_item"))}
        for p in read_jsonl(arm.pairs(0)):
            if p["rejected_sources"] != ["catalogue"]:
                assert (p["user"], p["rejected"]) in texts
        assert metrics["sft"]["examples"] >= 8
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["base"]  # the base model, evaluated once
    ev = metrics["seed_runs"]["1"]["sprec"]["evaluations"]["policy_1"]
    assert ev["protocol"] == "sprec" and ev["users"] == 5 and len(ev["per_user"]["hr@10"]) == 5
    recs = read_jsonl(run / "seed_1" / "eval" / "sprec__iter_0__adapter" / "iter_0" / "recommendations.jsonl")
    top = np.array([[cat.index(i) for i in r["items"]] + [-1] * (10 - len(r["items"])) for r in recs])
    for k in (1, 5, 10):
        assert ev[f"div_ratio@{k}"] == pytest.approx(m.div_ratio(top, k))
    comparison = metrics["comparison"]
    assert {"base (no SFT)", "SFT", "SPRec iter 1", "DPO-random iter 1", "DPO-popularity iter 1"} <= set(comparison)
    assert comparison["SPRec iter 1"]["seeds"] == [0, 1]
    assert all("vs_sft" in cell for cell in comparison["SPRec iter 1"]["metrics"].values())

    report = write_report(run, metrics).read_text()
    for label in ("base (no SFT)", "| SFT |", "SPRec iter 1", "DPO-random iter 1", "Difference from SFT", "±"):
        assert label in report
    assert (run / "sprec_popularity.png").stat().st_size > 0 and (run / "sprec_iterations.png").stat().st_size > 0

    before = json.loads((run / "metrics.json").read_text())
    again = run_sprec(cfg)  # a rerun finds everything done and changes nothing
    assert again["seed_runs"] == before["seed_runs"] and again["comparison"] == before["comparison"]

    # the other protocol on the finished run: every policy is rescored from its stored generations
    rlrf = cfg.model_copy(update={"sprec": cfg.sprec.model_copy(update={"eval_protocol": "rlrf"})})
    rescored = run_sprec(rlrf)
    for seed in ("0", "1"):
        for record in rescored["seed_runs"][seed].values():
            assert {ev["protocol"] for ev in record["evaluations"].values()} == {"rlrf"}
    for r in read_jsonl(run / "seed_1" / "eval" / "sprec__iter_0__adapter" / "iter_0" / "recommendations.jsonl"):
        assert not set(r["items"]) & {cat.ids[i] for i in ds.users[r["user"]].items[:-1]}  # rlrf masks the history


def run_sprec(cfg) -> dict:
    """What `rlrf sprec` does: every arm on the one loop, then their records gathered."""
    arm_metrics = {method.name: run_loop(cfg, method, cfg.loop.iterations, layout=layout, seed=seed, log=lambda _: None)
                   for method, layout, seed in arms(cfg, show_progress=False)}
    return collect(cfg, arm_metrics)


def test_every_arm_draws_its_negatives_from_a_registered_sampler():
    assert set(SAMPLERS) == {"sprec", "dpo_random", "dpo_popularity"}
    assert [name for name, s in SAMPLERS.items() if s.from_policy] == ["sprec"]
    assert [name for name, s in SAMPLERS.items() if s.by_popularity] == ["dpo_popularity"]


def test_the_fallback_generation_keeps_its_own_meta_and_leaves_the_greedy_ones_intact(tiny_sprec_config):
    """Two negatives per pair: the greedy answer alone never suffices, so every user gets the sampled
    fallback; the greedy generation's next_item.meta.json still describes the greedy generation."""
    cfg = tiny_sprec_config.model_copy(update={"score": tiny_sprec_config.score.model_copy(update={"negatives": 2})})
    method, layout, seed = next(arm for arm in arms(cfg, show_progress=False) if arm[0].name == "sprec")
    assert layout == RunLayout(cfg.run_dir).arm("sprec")
    users = iteration_users(method.ds, cfg.sprec, seed, 0)
    method.generate(cfg, layout, seed, 0, None)  # from the base policy
    greedy = read_json(layout.responses_meta(0, "next_item"))
    assert greedy["n"] == 1 and greedy["params"]["temperature"] == 0.0 and greedy["prompts"] == len(users)
    assert greedy["records"] == len(users) and {r["k"] for r in read_jsonl(layout.responses(0, "next_item"))} == {0}
    fallback = layout.self_play_fallback
    sampled = read_json(fallback.responses_meta(0, "next_item"))
    assert sampled["n"] == cfg.sprec.samples and sampled["params"]["temperature"] == cfg.sprec.fallback_temperature
    assert sampled["prompts"] == len(users) and sampled["records"] == len(users) * cfg.sprec.samples
    stats = method.score(cfg, layout, seed, 0)
    assert stats["pairs"] == len(users) and stats["predictions"] == len(users) * (1 + cfg.sprec.samples)
    assert read_json(layout.responses_meta(0, "next_item")) == greedy  # scoring reads, never rewrites


JUNK = "A Film Nobody Made (2031)"


def fake_validation_generate(ds, good_epochs: set[int], calls: list):
    """Stands in for generate_texts under the SFT stopping rule: the base policy and the epochs not in
    `good_epochs` answer the same junk title for every user, the good epochs the real next item (HR 1)."""

    def fake(g, prompts, policy, layout, *, mode, iteration, **_):
        adapter = None if policy.adapter is None else Path(policy.adapter)
        epoch = None if adapter is None else int(adapter.parent.name.removeprefix("epoch_"))
        users = [p.key for p in prompts]
        calls.append((epoch, users, layout.root))
        have = {r["user"] for r in read_jsonl(layout.responses(iteration, mode))}
        cat = ds.catalog
        append_jsonl(layout.responses(iteration, mode), [
            {"user": u, "iter": iteration, "k": 0,
             "text": answer_text(cat, ds.users[u].items[-1]) if epoch in good_epochs else JUNK}
            for u in users if u not in have])

    return fake


def until_better(cfg, **sprec):
    return cfg.model_copy(update={"sprec": cfg.sprec.model_copy(update={
        "sft_until_better": True, "evaluate_base": False, "sft_valid_users": 4, "sft_valid_k": 1, **sprec})})


def test_sft_stops_at_the_first_epoch_whose_valid_hr_beats_the_base_and_says_why(tiny_sprec_config, monkeypatch):
    import rlrf.generation.generate as gen

    cfg = until_better(tiny_sprec_config, sft_max_epochs=4, sft_valid_users=None)
    arm_list = arms(cfg, show_progress=False)
    ds = arm_list[0][0].ds
    calls = []
    monkeypatch.setattr(gen, "generate_texts", fake_validation_generate(ds, {2}, calls))
    for method, layout, seed in arm_list:  # the first arm trains, the others find the SFT done
        assert method.prepare(cfg, layout, seed) == RunLayout(cfg.run_dir).sft
    root = RunLayout(cfg.run_dir)
    # judged on valid users only (here all of them: sft_valid_users None), never a test user
    valid = [u for u in ds.splits["valid"] if len(ds.users[u].items) >= 2]
    assert len(valid) >= 3 and [c[0] for c in calls] == [None, 1, 2]  # the base once, then epoch by epoch
    assert all(c[1] == valid for c in calls) and not set(valid) & set(ds.splits["test"])
    # epoch 1 ties the base (same answers): not strictly better, so a second epoch; epoch 2 beats it
    assert not (root.root / "sft" / "epoch_3").exists()
    summary = read_json(root.sft_log)["summary"]
    assert summary["stopped"] == "beats_base" and summary["epochs"] == 2 and "epoch 2" in summary["reason"]
    v = summary["validation"]
    assert v["metric"] == "hr@1" and v["split"] == "valid" and v["users"] == len(valid)
    assert v["per_epoch"][0] == v["base"] < v["per_epoch"][1] == 1.0
    assert [e["epoch"] for e in summary["per_epoch"]] == [1, 2] and all(e["steps"] > 0 for e in summary["per_epoch"])
    assert summary["chosen"] == str(root.sft_epoch(2))
    assert (root.sft / "adapter_model.safetensors").read_bytes() == (root.sft_epoch(2) / "adapter_model.safetensors").read_bytes()
    epoch2 = read_json(root.sft_epoch_log(2))["summary"]
    assert epoch2["start_adapter"] == str(root.sft_epoch(1))  # epoch 2 continues epoch 1's adapter
    assert read_json(root.validation("sft__epoch_2__adapter").eval_result)["splits"] == ["valid"]

    # a run killed during epoch 2 resumes there: epoch 1 is neither retrained nor re-evaluated
    first = (root.sft_epoch(1) / "adapter_model.safetensors").stat().st_mtime_ns
    for folder in (root.sft, root.sft_epoch(2).parent, root.validation("sft__epoch_2__adapter").root):
        shutil.rmtree(folder)
    calls.clear()
    method, layout, seed = arms(cfg, show_progress=False)[0]
    method.prepare(cfg, layout, seed)
    assert [c[0] for c in calls] == [2]
    assert (root.sft_epoch(1) / "adapter_model.safetensors").stat().st_mtime_ns == first
    assert read_json(root.sft_log)["summary"]["stopped"] == "beats_base"


def test_sft_stops_at_the_epoch_cap_when_valid_hr_never_beats_the_base(tiny_sprec_config, monkeypatch):
    import rlrf.generation.generate as gen

    cfg = until_better(tiny_sprec_config, sft_max_epochs=2)
    method, layout, seed = arms(cfg, show_progress=False)[0]
    calls = []
    monkeypatch.setattr(gen, "generate_texts", fake_validation_generate(method.ds, set(), calls))
    method.prepare(cfg, layout, seed)
    root = RunLayout(cfg.run_dir)
    summary = read_json(root.sft_log)["summary"]
    assert summary["stopped"] == "max_epochs" and summary["epochs"] == 2 and "sft_max_epochs = 2" in summary["reason"]
    assert summary["validation"]["per_epoch"] == [summary["validation"]["base"]] * 2
    from rlrf.report.sprec import markdown

    report = markdown({"sft": summary, "evaluations": {}})
    assert "SFT stopped after 2 epoch(s) (max_epochs)" in report and "sft_max_epochs = 2" in report
    assert [c[0] for c in calls] == [None, 1, 2] and not (root.root / "sft" / "epoch_3").exists()
    first_valid = [u for u in method.ds.splits["valid"] if len(method.ds.users[u].items) >= 2][:4]
    assert all(c[1] == first_valid for c in calls)  # a bounded subset: the first sft_valid_users
    assert summary["chosen"] == str(root.sft_epoch(2))
    assert (root.sft / "adapter_model.safetensors").read_bytes() == (root.sft_epoch(2) / "adapter_model.safetensors").read_bytes()
