"""Evaluation metrics, vectorised over lists (numpy; torch tensors are accepted and converted).

Three families, each with the conventions of docs/architecture.md "Metric conventions":

- ranking metrics over reranking lists (`ndcg_at_k`, `map_at_k`, `hr_at_k`, `mrr_at_k`,
  `ranking_metrics`): one value per list, higher score = ranked first;
- one-target metrics for next-item generation (`target_ranks`, `hit_ndcg_at_k`);
- bias metrics over top-K recommendation lists (`div_ratio`, `or_ratio`, `mgu_dgu`,
  `mean_popularity`, `popularity_histogram`); item index -1 marks an empty slot.

Shared ranking conventions:

- Ties in scores are broken by original position: the earlier item ranks first (stable sort), so
  results never depend on the sort algorithm.
- Padded positions (`mask` False) are never ranked and never relevant: they go after every real
  item whatever their score, and their labels are treated as 0.
- K larger than the list length uses the whole list.
- A list with no relevant item scores 0 on every metric, and means include those zeros.
- NDCG uses graded labels; MAP, HR and MRR count an item as relevant when its label is > 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Union

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

Array = Union[npt.ArrayLike, "torch.Tensor"]
MapDenominator = Literal["min", "hits"]


def _to_numpy(x: Array) -> np.ndarray:
    """Numpy view of an array-like; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


# ----------------------------------------------------------------------------- ranking metrics


def _ranked_labels(
    scores: Array, labels: Array, mask: Array | None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels in ranked order and in ideal (descending) order, both [n_lists, L].

    Padded positions carry label 0 and sort after every real item, so they take no rank that a real
    item could have had. lexsort is stable: equal scores keep their original order.
    """
    s = _to_numpy(scores).astype(np.float64)
    y = _to_numpy(labels).astype(np.float64)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(
            f"scores and labels must both be [n_lists, L]; got {s.shape} and {y.shape}"
        )
    if mask is None:
        m = np.ones(s.shape, dtype=bool)
    else:
        m = _to_numpy(mask).astype(bool)
        if m.shape != s.shape:
            raise ValueError(f"mask must have the shape of scores {s.shape}; got {m.shape}")
    if np.any(y[m] < 0):
        raise ValueError("labels must be >= 0 (0 = not relevant, graded relevance above)")
    y = np.where(m, y, 0.0)
    order = np.lexsort((-s, ~m), axis=-1)  # primary: real before padded; then score descending
    ranked = np.take_along_axis(y, order, axis=1)
    ideal = -np.sort(-y, axis=1)
    return ranked, ideal


def _ndcg(ranked: np.ndarray, ideal: np.ndarray, k: int) -> np.ndarray:
    k = min(k, ranked.shape[1])
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # rank i (1-based) -> 1 / log2(i + 1)
    dcg = ((2.0 ** ranked[:, :k] - 1.0) * discount).sum(axis=1)
    idcg = ((2.0 ** ideal[:, :k] - 1.0) * discount).sum(axis=1)
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def _map(ranked: np.ndarray, k: int, denominator: MapDenominator) -> np.ndarray:
    relevant = ranked > 0
    top = relevant[:, : min(k, ranked.shape[1])]
    precision = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
    summed = (precision * top).sum(axis=1)
    if denominator == "min":
        denom = np.minimum(k, relevant.sum(axis=1)).astype(np.float64)
    elif denominator == "hits":
        denom = top.sum(axis=1).astype(np.float64)
    else:
        raise ValueError(f"denominator must be 'min' or 'hits', got {denominator!r}")
    return np.divide(summed, denom, out=np.zeros_like(summed), where=denom > 0)


def _hr(ranked: np.ndarray, k: int) -> np.ndarray:
    return (ranked[:, :k] > 0).any(axis=1).astype(np.float64)


def _mrr(ranked: np.ndarray, k: int) -> np.ndarray:
    top = ranked[:, :k] > 0
    first = top.argmax(axis=1)  # 0-based position of the first relevant item (0 if none)
    return np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)


def ndcg_at_k(scores: Array, labels: Array, k: int, mask: Array | None = None) -> np.ndarray:
    """NDCG@K per list [n_lists] = DCG@K / IDCG@K, gain 2^rel - 1, discount log2(i + 1).

    i is the 1-based rank; labels may be graded. IDCG sorts the list's own (unpadded) labels, so a
    list with no relevant item has IDCG 0 and scores 0. Ties, padding and K > L: see module doc.
    """
    ranked, ideal = _ranked_labels(scores, labels, mask)
    return _ndcg(ranked, ideal, _check_k(k))


def map_at_k(
    scores: Array,
    labels: Array,
    k: int,
    mask: Array | None = None,
    denominator: MapDenominator = "min",
) -> np.ndarray:
    """MAP@K per list [n_lists]: sum over relevant items in the top K of precision@i, divided by

    - "min" (default): min(K, number of relevant items in the whole list) — a list that puts its
      relevant items below K is penalised;
    - "hits": the number of relevant items inside the top K (KAR's variant) — only the order of
      the hits matters, not how many were found.

    A list with no relevant item (or, for "hits", none in the top K) scores 0.
    """
    ranked, _ = _ranked_labels(scores, labels, mask)
    return _map(ranked, _check_k(k), denominator)


def hr_at_k(scores: Array, labels: Array, k: int, mask: Array | None = None) -> np.ndarray:
    """HR@K per list [n_lists]: 1 if any relevant item is in the top K, else 0."""
    ranked, _ = _ranked_labels(scores, labels, mask)
    return _hr(ranked, _check_k(k))


def mrr_at_k(scores: Array, labels: Array, k: int, mask: Array | None = None) -> np.ndarray:
    """MRR@K per list [n_lists]: 1 / (1-based rank of the first relevant item) if it is in the top
    K, else 0."""
    ranked, _ = _ranked_labels(scores, labels, mask)
    return _mrr(ranked, _check_k(k))


def ranking_metrics(
    scores: Array,
    labels: Array,
    ks: Sequence[int] = (1, 3, 5, 7),
    mask: Array | None = None,
    map_denominator: MapDenominator = "min",
) -> dict[str, float]:
    """Means over lists of NDCG, MAP, HR and MRR at each K, keyed "ndcg@5", "map@5", "hr@5",
    "mrr@5", ... (the names used in scores records). Lists are ranked once for all K.

    Lists with no relevant item count as 0 in every mean.
    """
    ranked, ideal = _ranked_labels(scores, labels, mask)
    if ranked.shape[0] == 0:
        raise ValueError("ranking_metrics needs at least one list")
    out: dict[str, float] = {}
    for k in map(_check_k, ks):
        out[f"ndcg@{k}"] = float(_ndcg(ranked, ideal, k).mean())
        out[f"map@{k}"] = float(_map(ranked, k, map_denominator).mean())
        out[f"hr@{k}"] = float(_hr(ranked, k).mean())
        out[f"mrr@{k}"] = float(_mrr(ranked, k).mean())
    return out


# ------------------------------------------------------------------------- one-target metrics


def target_ranks(recommended: Array, targets: Array) -> np.ndarray:
    """0-based position [n] of each target in its row of `recommended` [n, K], -1 when absent.

    The first occurrence counts if an item is recommended twice. Negative indices (empty slots, an
    ungrounded target) never match.
    """
    rec = _to_numpy(recommended)
    tgt = _to_numpy(targets).reshape(-1)
    if rec.ndim != 2 or rec.shape[0] != tgt.shape[0]:
        raise ValueError(
            f"recommended must be [n, K] and targets [n]; got {rec.shape} and {tgt.shape}"
        )
    match = (rec == tgt[:, None]) & (rec >= 0)
    return np.where(match.any(axis=1), match.argmax(axis=1), -1).astype(np.int64)


def hit_ndcg_at_k(ranks: Array | Sequence[int | None], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (HR@K, NDCG@K) for one target each, as two float arrays [n].

    rank r is the target's 0-based position in the recommended list; -1 or None = absent.
    HR@K = 1 if 0 <= r < K; NDCG@K = 1 / log2(r + 2) if 0 <= r < K (the single-target case of
    the list NDCG: IDCG = 1), else 0.
    """
    k = _check_k(k)
    r = _to_numpy(ranks).astype(np.float64).reshape(-1)  # None -> nan
    hit = np.isfinite(r) & (r >= 0) & (r < k)
    safe = np.where(hit, r, 0.0)
    return hit.astype(np.float64), np.where(hit, 1.0 / np.log2(safe + 2.0), 0.0)


# ------------------------------------------------------------------------------- bias metrics


def _top_k_items(recs: Array, k: int) -> tuple[np.ndarray, int]:
    """Flat item indices of the filled slots of the top K of each list, and the number of lists.

    recs must have at least K columns: metrics divide by K · n_lists, so a list shorter than K is
    padded by the caller with -1 (an empty slot still counts in the denominator).
    """
    k = _check_k(k)
    r = _to_numpy(recs)
    if r.ndim != 2 or not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"recs must be an integer array [n_lists, K]; got {r.dtype} {r.shape}")
    if r.shape[0] == 0:
        raise ValueError("recs holds no lists")
    if r.shape[1] < k:
        raise ValueError(f"recs has {r.shape[1]} columns, fewer than k={k}: pad lists with -1")
    top = r[:, :k]
    return top[top >= 0], r.shape[0]


def _item_indices(items: Array) -> np.ndarray:
    """Flat integer item indices with negatives (empty slots) dropped."""
    x = _to_numpy(items).reshape(-1)
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"item indices must be integers; got {x.dtype}")
    return x[x >= 0].astype(np.int64)


def div_ratio(recs: Array, k: int) -> float:
    """DivRatio@K = |distinct items over all top-K lists| / (K · n_lists); empty slots (-1) are no
    item but count in the denominator."""
    items, n_lists = _top_k_items(recs, k)
    return np.unique(items).size / (k * n_lists)


def or_ratio(recs: Array, k: int) -> float:
    """ORRatio@K = (sum of the counts of the 3 most recommended items) / (K · n_lists); with fewer
    than 3 distinct items, all of them. Empty slots count in the denominator only."""
    items, n_lists = _top_k_items(recs, k)
    counts = np.unique(items, return_counts=True)[1]
    return float(np.sort(counts)[::-1][:3].sum()) / (k * n_lists)


def _genre_distribution(items: np.ndarray, genre_matrix: np.ndarray, what: str) -> np.ndarray:
    mass = genre_matrix[items].sum(axis=0)
    total = mass.sum()
    if total <= 0:
        raise ValueError(f"no {what} item has a genre: the genre distribution is undefined")
    return mass / total


def mgu_dgu(
    recs: Array, history_items: Array, genre_matrix: Array, k: int
) -> tuple[float, float]:
    """(MGU@K, DGU@K): how far the genres of the recommendations drift from those of the histories.

    genre_matrix [n_items, n_genres]: an item with m genres has 1/m in each of them (so every item
    weighs 1), an item with none has a zero row and is left out of both distributions.
    GH = summed rows over `history_items` (flat, all history interactions, repeats count),
    normalised to sum 1; GP = the same over the filled top-K slots of `recs`.
    MGU@K = mean_g |GP_g - GH_g|; DGU@K = max_g (GP - GH) - min_g (GP - GH).
    """
    g = _to_numpy(genre_matrix).astype(np.float64)
    if g.ndim != 2:
        raise ValueError(f"genre_matrix must be [n_items, n_genres]; got {g.shape}")
    row_sums = g.sum(axis=1)
    if not np.all(np.isclose(row_sums, 0.0) | np.isclose(row_sums, 1.0)):
        raise ValueError(
            "genre_matrix rows must be 1/m for each of an item's m genres (sum 1 or 0)"
        )
    rec_items, _ = _top_k_items(recs, k)
    gh = _genre_distribution(_item_indices(history_items), g, "history")
    gp = _genre_distribution(rec_items, g, "recommended")
    diff = gp - gh
    return float(np.abs(diff).mean()), float(diff.max() - diff.min())


def mean_popularity(recs: Array, popularity: Array, k: int) -> float:
    """Mean popularity (interaction count) over the filled top-K slots; repeats count each time."""
    items, _ = _top_k_items(recs, k)
    if items.size == 0:
        raise ValueError("recs has no filled slot in its top K")
    return float(_to_numpy(popularity).astype(np.float64)[items].mean())


# Bias metrics of resampled sets of lists: the statistic of a paired bootstrap over users. Row b of
# `samples` [B, n] holds row indices of `recs` (repeats allowed); the metric of the lists
# recs[samples[b]] is entry b of the result [B]. Each metric is first reduced to per-list parts
# (counts, summed popularity, genre mass) that a resample only adds up, so B resamples cost one
# vectorised pass. Sums run per list first and then over the resample, an order other than the
# single-list functions' above, so the two agree to floating-point rounding (exactly for DivRatio and
# ORRatio, whose counts are integers). Unlike the functions above they never raise on an empty
# resample: no filled slot gives mean popularity 0, no genre gives a zero distribution.


def _samples(recs: Array, k: int, samples: Array) -> tuple[np.ndarray, np.ndarray]:
    """(top-K columns of recs [n, K], samples [B, m] as int64), checked."""
    k = _check_k(k)
    r = _to_numpy(recs)
    if r.ndim != 2 or not np.issubdtype(r.dtype, np.integer) or r.shape[1] < k:
        raise ValueError(f"recs must be an integer array [n_lists, >= k={k}]; got {r.dtype} {r.shape}")
    idx = _to_numpy(samples)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"samples must be integer row indices [B, m]; got {idx.dtype} {idx.shape}")
    return r[:, :k], idx.astype(np.int64, copy=False)


def _resampled_item_counts(top: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[B, n_items]: how often each item fills a slot of the lists of each resample."""
    filled = top >= 0
    n_items = int(top.max()) + 1 if filled.any() else 1
    items, ok = top[idx].reshape(len(idx), -1), filled[idx].reshape(len(idx), -1)
    rows = np.broadcast_to(np.arange(len(idx))[:, None], items.shape)
    flat = np.bincount((rows * n_items + items)[ok], minlength=len(idx) * n_items)
    return flat.reshape(len(idx), n_items)


def div_ratio_resampled(recs: Array, k: int, samples: Array) -> np.ndarray:
    """DivRatio@K (`div_ratio`) of each resample of lists [B]."""
    top, idx = _samples(recs, k, samples)
    distinct = (_resampled_item_counts(top, idx) > 0).sum(1)
    return np.asarray(distinct, dtype=float) / (k * idx.shape[1])


def or_ratio_resampled(recs: Array, k: int, samples: Array) -> np.ndarray:
    """ORRatio@K (`or_ratio`) of each resample of lists [B]."""
    top, idx = _samples(recs, k, samples)
    counts = _resampled_item_counts(top, idx)
    top3 = np.partition(counts, -3, axis=1)[:, -3:].sum(1) if counts.shape[1] >= 3 else counts.sum(1)
    return np.asarray(top3, dtype=float) / (k * idx.shape[1])


def mean_popularity_resampled(recs: Array, popularity: Array, k: int, samples: Array) -> np.ndarray:
    """Mean popularity over the filled top-K slots (`mean_popularity`) of each resample of lists [B]."""
    top, idx = _samples(recs, k, samples)
    filled = top >= 0
    pop = _to_numpy(popularity).astype(np.float64)
    summed = np.where(filled, pop[np.clip(top, 0, None)], 0.0).sum(1)
    return summed[idx].sum(1) / np.maximum(filled.sum(1)[idx].sum(1), 1)


def genre_mass(item_lists: Sequence[Sequence[int]] | Array, genre_matrix: Array) -> np.ndarray:
    """[n_lists, n_genres]: each list's summed genre rows (see `mgu_dgu`), empty slots (-1) left out;
    the per-list part of a genre distribution that `mgu_dgu_resampled` adds up."""
    g = _to_numpy(genre_matrix).astype(np.float64)
    rows = []
    for items in item_lists:
        x = np.asarray(items, dtype=np.int64).reshape(-1)
        rows.append(g[x[x >= 0]].sum(0))
    return np.stack(rows) if rows else np.zeros((0, g.shape[1]))


def mgu_dgu_resampled(
    recs: Array, history_mass: Array, genre_matrix: Array, k: int, samples: Array
) -> tuple[np.ndarray, np.ndarray]:
    """(MGU@K [B], DGU@K [B]) (`mgu_dgu`) of each resample of lists; `history_mass` [n, n_genres] is
    `genre_mass` of each list's history, so GH of a resample sums the histories of its lists."""
    top, idx = _samples(recs, k, samples)
    rec_mass = genre_mass(top, genre_matrix)
    gh = _to_numpy(history_mass).astype(np.float64)[idx].sum(1)
    gp = rec_mass[idx].sum(1)
    diff = gp / np.maximum(gp.sum(1, keepdims=True), 1e-12) - gh / np.maximum(gh.sum(1, keepdims=True), 1e-12)
    return np.abs(diff).mean(1), diff.max(1) - diff.min(1)


def popularity_histogram(
    item_indices: Array, popularity: Array, bins: int | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(fractions [n_bins], edges [n_bins + 1]): share of `item_indices` whose popularity falls in
    each bin, like np.histogram.

    An int `bins` spans the catalogue's popularity range (min to max of `popularity`), not the
    items', so a recommended and a history histogram get the same edges and can be overlaid. Pass
    edges (e.g. np.geomspace) for the long tail. Bins are [lo, hi) except the last, [lo, hi].
    item_indices may have any shape; negatives (empty slots) are ignored. Fractions are over all
    given items, so items outside explicit edges make them sum to less than 1.
    """
    pop = _to_numpy(popularity).astype(np.float64)
    items = _item_indices(item_indices)
    if items.size == 0:
        raise ValueError("popularity_histogram needs at least one item")
    edges = (
        np.linspace(pop.min(), pop.max(), int(bins) + 1)
        if isinstance(bins, (int, np.integer))
        else np.asarray(bins, dtype=np.float64)
    )
    counts, edges = np.histogram(pop[items], bins=edges)
    return counts / items.size, edges


# ------------------------------------------------------------- candidate ranking (one answer)
# The answer of a candidate-ranking question is the index of the candidate it names, -1 when it names
# none (LLaRA / S-DPO: HitRatio@1 and ValidRatio).


def hit_at_1(answers: Array, targets: Array) -> np.ndarray:
    """Per-example HR@1 [n]: 1.0 when the answer names the target, else 0 (an invalid answer misses)."""
    a = _to_numpy(answers).reshape(-1)
    t = _to_numpy(targets).reshape(-1)
    if a.shape != t.shape:
        raise ValueError(f"answers and targets differ in shape: {a.shape} vs {t.shape}")
    return ((a == t) & (a >= 0)).astype(np.float64)


def valid_ratio(answers: Array) -> float:
    """Share of answers that name one of the candidates (index >= 0); 0.0 for no answer."""
    a = _to_numpy(answers).reshape(-1)
    return float((a >= 0).mean()) if a.size else 0.0


def out_of_list_share(outside: Array) -> float:
    """Share of answers that name a catalogue item NOT in the candidate list (`outside` True)."""
    o = _to_numpy(outside).reshape(-1).astype(bool)
    return float(o.mean()) if o.size else 0.0
