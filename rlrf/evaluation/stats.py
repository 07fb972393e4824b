"""Summaries over seeds and paired confidence intervals, written once for every table rlrf prints.

A claim that one policy or model beats another is made on the same held-out users: the difference
is taken per user (or per list), and its mean gets a percentile-bootstrap 95% CI over users.
Statistics of a SET of lists that count distinct or most frequent items (DivRatio, ORRatio) are not
means over users, and a resample with repeats is biased for them (a repeated list adds slots but no
new item): their intervals come from half-samples without repeats (`half_samples`), centred on the
observed difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample sd (ddof=1; 0.0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def bootstrap_ci(per_unit: Sequence[float], seed: int = 0, n_boot: int = 2000) -> tuple[float, list[float]]:
    """(mean, [2.5 %, 97.5 %]) of the mean of `per_unit` (paired differences, one per user or list),
    by the percentile bootstrap over units."""
    values = np.asarray(per_unit, dtype=float)
    rng = np.random.default_rng(seed)
    boots = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    return float(values.mean()), [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]


def half_samples(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, n // 2] row indices, each row a subset without repeats. For a mean over units the
    spread of a half-sample's mean equals the full sample's (variance s²/(n-1) against the
    bootstrap's s²/n), so these rows carry the sampling spread of the full sample to statistics a
    repeat would bias; the interval is then centred on the observed value (`centred_interval`),
    since such statistics also shift with the number of lists."""
    return np.argsort(rng.random((draws, n)), axis=1)[:, : n // 2]


def centred_interval(point: float, draws: np.ndarray) -> list[float]:
    """[2.5 %, 97.5 %] of `draws` moved so that their mean sits on `point`."""
    spread = np.asarray(draws, dtype=float) - np.mean(draws)
    return [float(point + np.quantile(spread, 0.025)), float(point + np.quantile(spread, 0.975))]


def user_differences(base: dict, other: dict, key: str) -> np.ndarray | None:
    """`other` − `base` per user both per-user tables ({"users": [...], key: [...]}) hold, in user
    order; None if either lacks `key` or they share no user."""
    if key not in base or key not in other:
        return None
    a, b = dict(zip(base["users"], base[key])), dict(zip(other["users"], other[key]))
    users = sorted(set(a) & set(b))
    return np.array([b[u] - a[u] for u in users], dtype=float) if users else None


def paired_difference(base: dict, other: dict, key: str, seed: int = 0, n_boot: int = 2000) -> dict | None:
    """`other` − `base` on the users both evaluated, from two per-user tables ({"users": [...], key:
    [...]}): mean difference, its 95% bootstrap CI over users, and how many users got better / worse."""
    diff = user_differences(base, other, key)
    if diff is None:
        return None
    mean, ci = bootstrap_ci(diff, seed=seed, n_boot=n_boot)
    return {"mean": mean, "ci95": ci, "users": len(diff),
            "better": int((diff > 1e-12).sum()), "worse": int((diff < -1e-12).sum())}


def pooled_difference(pairs: Sequence[tuple[dict, dict]], key: str, seed: int = 0, n_boot: int = 2000) -> dict | None:
    """`other` − `base` pooled over several runs (seeds), from one (base, other) pair of per-user tables
    per run: the mean over every (run, user) unit, and its 95% CI by a bootstrap that resamples users
    within each run (stratified), so every run keeps its own size and a run is never dropped."""
    diffs = [user_differences(base, other, key) for base, other in pairs]
    if not diffs or any(d is None for d in diffs):
        return None
    rng = np.random.default_rng(seed)
    total = sum(len(d) for d in diffs)
    boots = sum(d[rng.integers(0, len(d), size=(n_boot, len(d)))].sum(1) for d in diffs) / total
    return {"mean": float(np.concatenate(diffs).mean()), "ci95": [float(np.quantile(boots, 0.025)),
            float(np.quantile(boots, 0.975))], "runs": len(diffs), "users": total}
