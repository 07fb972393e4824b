"""The SPRec table's intervals against SFT: DivRatio and ORRatio count items over the whole set of
lists, so a resample that repeats users is biased for them; their intervals must still hold the
observed difference and cover the true one."""

from __future__ import annotations

import numpy as np
import pytest

from rlrf.evaluation import metrics as m
from rlrf.evaluation.stats import centred_interval, half_samples
from rlrf.methods.sprec.comparison import PolicyLists, compare, metric_keys

N, K, ITEMS = 60, 10, 600


def lists(recs: np.ndarray, hits: list[float]) -> PolicyLists:
    genre = np.eye(ITEMS, 4)  # four genres, enough for MGU/DGU to be defined
    hist = [[0, 1]] * len(recs)
    per_user = {f"{name}@{k}": hits for name in ("hr", "ndcg") for k in (1, 10)}
    return PolicyLists(np.asarray(recs, dtype=np.int64), hist, genre, np.arange(ITEMS, dtype=float), per_user)


def test_half_samples_are_subsets_without_repeats():
    rows = half_samples(95, 50, np.random.default_rng(0))
    assert rows.shape == (50, 47)
    assert all(len(set(r)) == 47 for r in rows.tolist()) and rows.min() >= 0 and rows.max() < 95


def test_a_diverse_policy_gets_an_interval_around_its_observed_divratio_gain():
    # SFT names the same ten items for everyone; the other policy never repeats an item
    sft = lists(np.tile(np.arange(K), (N, 1)), [0.0] * N)
    diverse = lists(np.arange(N * K).reshape(N, K), [0.0] * N)
    out = compare({"SFT": {0: sft}, "diverse": {0: diverse}}, "SFT", metric_keys([1, 10]), n_boot=300)
    for key in ("div_ratio@10", "div_ratio@1", "or_ratio@10"):
        cell = out["diverse"]["metrics"][key]["vs_sft"]
        lo, hi = cell["ci95"]
        assert cell["interval"] == "half-sample"
        assert lo <= cell["mean"] <= hi and (lo > 0 or hi < 0)  # a resample with repeats gave ~0.63x the gain here
    assert out["diverse"]["metrics"]["div_ratio@10"]["vs_sft"]["mean"] == pytest.approx(1 - 1 / N)
    assert out["diverse"]["metrics"]["hr@10"]["vs_sft"]["interval"] == "bootstrap"
    assert out["diverse"]["metrics"]["mgu@10"]["vs_sft"]["interval"] == "bootstrap"


@pytest.mark.parametrize(("metric", "resampled"), [(m.div_ratio, m.div_ratio_resampled),
                                                   (m.or_ratio, m.or_ratio_resampled)])
def test_the_counted_metrics_intervals_cover_the_true_difference(metric, resampled):
    # two policies drawing lists from catalogues of 500 and 100 items: the true difference at N lists
    # is the expectation over fresh draws; nominal 95 % intervals must cover it at least ~95 % of the time
    rng = np.random.default_rng(1)
    draw = lambda width: rng.integers(0, width, size=(N, K))  # noqa: E731
    truth = np.mean([metric(draw(500), K) - metric(draw(100), K) for _ in range(2000)])
    every = np.arange(N)[None, :]
    covered = []
    for _ in range(100):
        a, b = draw(500), draw(100)
        point = resampled(a, K, every)[0] - resampled(b, K, every)[0]
        halves = half_samples(N, 200, rng)
        lo, hi = centred_interval(point, resampled(a, K, halves) - resampled(b, K, halves))
        covered.append(lo <= truth <= hi)
    assert np.mean(covered) >= 0.9


def test_centred_interval_moves_the_draws_onto_the_point():
    assert centred_interval(1.0, np.array([0.0, 0.2, 0.4])) == pytest.approx(
        [1.0 + np.quantile([-0.2, 0.0, 0.2], 0.025), 1.0 + np.quantile([-0.2, 0.0, 0.2], 0.975)])
