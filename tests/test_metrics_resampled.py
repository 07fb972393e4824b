"""The bias metrics of resampled sets of lists (the paired bootstrap's statistic) are the single-list
bias metrics of the lists each resample picks: exactly for DivRatio and ORRatio (integer counts), to
rounding for MGU, DGU and mean popularity (per-list sums first)."""

from __future__ import annotations

import numpy as np
import pytest

from rlrf.evaluation import metrics as m

N_ITEMS, N_GENRES, N_LISTS, K = 30, 4, 12, 5


@pytest.fixture
def lists():
    rng = np.random.default_rng(7)
    recs = rng.integers(0, N_ITEMS, size=(N_LISTS, K + 2))
    recs[2, 3:] = -1            # a short list
    recs[4, :] = -1             # an empty one
    multi_hot = rng.random((N_ITEMS, N_GENRES)) < 0.4
    multi_hot[0] = False        # an item without a genre
    counts = multi_hot.sum(1, keepdims=True)
    genre = np.divide(multi_hot, counts, out=np.zeros(multi_hot.shape), where=counts > 0)
    histories = [rng.integers(0, N_ITEMS, size=rng.integers(0, 6)).tolist() for _ in range(N_LISTS)]
    histories[1] = []           # a user with no history
    popularity = rng.integers(0, 50, size=N_ITEMS)
    samples = np.vstack([np.arange(N_LISTS), rng.integers(0, N_LISTS, size=(6, N_LISTS))])  # identity, then repeats
    return recs, genre, histories, popularity, samples


def test_each_resample_scores_like_the_lists_it_picks(lists):
    recs, genre, histories, popularity, samples = lists
    history_mass = m.genre_mass(histories, genre)
    div = m.div_ratio_resampled(recs, K, samples)
    orr = m.or_ratio_resampled(recs, K, samples)
    pop = m.mean_popularity_resampled(recs, popularity, K, samples)
    mgu, dgu = m.mgu_dgu_resampled(recs, history_mass, genre, K, samples)
    assert div.shape == orr.shape == pop.shape == mgu.shape == dgu.shape == (len(samples),)
    for b, rows in enumerate(samples):
        picked = recs[rows]
        assert div[b] == m.div_ratio(picked, K) and orr[b] == m.or_ratio(picked, K)
        assert pop[b] == pytest.approx(m.mean_popularity(picked, popularity, K), rel=1e-12)
        expected = m.mgu_dgu(picked, np.concatenate([np.asarray(histories[r], dtype=np.int64) for r in rows]), genre, K)
        assert (mgu[b], dgu[b]) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert len(set(div.tolist())) > 1  # the resamples differ, so the equalities above say something


def test_genre_mass_sums_each_lists_genre_rows_and_skips_empty_slots(lists):
    recs, genre, histories, _, _ = lists
    mass = m.genre_mass(recs[:, :K], genre)
    assert mass.shape == (N_LISTS, N_GENRES)
    assert np.array_equal(mass[4], np.zeros(N_GENRES))  # every slot empty
    assert np.allclose(mass[2], genre[recs[2, :3]].sum(0))
    assert np.array_equal(m.genre_mass(histories, genre)[1], np.zeros(N_GENRES))


def test_a_resample_without_filled_slots_has_mean_popularity_zero_rather_than_an_error(lists):
    recs, _, _, popularity, _ = lists
    assert m.mean_popularity_resampled(recs, popularity, K, np.array([[4, 4, 4]])).tolist() == [0.0]


def test_resampled_metrics_check_their_inputs(lists):
    recs, _, _, _, samples = lists
    with pytest.raises(ValueError, match="columns|>= k"):
        m.div_ratio_resampled(recs, K + 3, samples)
    with pytest.raises(ValueError, match="samples"):
        m.or_ratio_resampled(recs, K, samples.astype(float))
