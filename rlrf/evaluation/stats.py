"""Summaries over seeds and paired confidence intervals, written once for every table rlrf prints.

A claim that one policy or model beats another is made on the same held-out users: the difference
is taken per user (or per list), and its mean gets a percentile-bootstrap 95% CI over users.
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
