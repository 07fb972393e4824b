"""The reference recommenders of the SPRec table: what a reader needs beside the LLM policies to
tell whether an HR of 0.02 is a little or nothing, and whether a DivRatio is high.

Both are scored by the policies' own scorer (`score_lists`) on the same held-out users, targets and
protocol (its masking, its MGU history), and both know only what the policies' training may know:
``popularity`` ranks items by training users' interactions (`train_popularity`); ``sasrec`` is a
RecBole SASRec trained on train users' full sequences and held-out users' items before their last
(`heldout_sasrec`), ranking the catalogue from each user's history before the target. Neither
depends on a training seed, so one evaluation pairs with every seed's SFT.
"""

from __future__ import annotations

import numpy as np

from rlrf.core.io import read_json
from rlrf.core.layout import RunLayout
from rlrf.methods.sprec.comparison import REFERENCES
from rlrf.methods.sprec.evaluation import EvalSpec, evaluation_histories, score_lists


def top_k(scores: np.ndarray, masked: list[list[int]], k: int) -> np.ndarray:
    """Each row's K best items [users, K], items of `masked` left out; ties go to the lower index (a
    full stable sort: a catalogue of thousands costs nothing, and popularity ties are common)."""
    scores = np.array(scores, dtype=np.float64)
    for row, items in enumerate(masked):
        scores[row, items] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def reference_scores(name: str, cfg, ds, users: list[str], popularity) -> np.ndarray:
    """[users, catalogue] scores of reference `name`: popularity, or SASRec from each user's history
    before the target (-inf for items SASRec never saw)."""
    if name == "popularity":
        return np.tile(np.asarray(popularity, dtype=np.float64), (len(users), 1))
    if name == "sasrec":
        from recmodels.sequential import score_histories
        from rlrf.data.candidates import heldout_sasrec

        model, dataset = heldout_sasrec(ds, cfg.sasrec, RunLayout(cfg.run_dir).sasrec, cfg.seed)
        order, scores = score_histories(model, dataset, len(ds.catalog), {u: ds.users[u].items[:-1] for u in users})
        row = {u: j for j, u in enumerate(order)}
        return scores[[row[u] for u in users]]
    raise ValueError(f"unknown reference recommender {name!r} (known: {', '.join(REFERENCES)})")


def evaluate_references(cfg) -> dict[str, dict]:
    """Every reference of `sprec.references` on the held-out users (`held_out_spec`), by name."""
    from rlrf.data.dataset import load_dataset, train_popularity
    from rlrf.generation.grounding import title_twins
    from rlrf.methods.sprec.evaluation import held_out_spec

    if not cfg.sprec.references:
        return {}
    ds = load_dataset(cfg.data, seed=cfg.seed)
    popularity = train_popularity(ds)
    _, twin = title_twins(ds.catalog)
    spec = held_out_spec(ds, cfg)
    return {name: evaluate_reference(name, cfg, ds, spec, popularity, twin) for name in cfg.sprec.references}


def evaluate_reference(name: str, cfg, ds, spec: EvalSpec, popularity, twin) -> dict:
    """Reference `name` on `spec`'s users, cached in ``<run_dir>/eval/<name>/eval.json`` like a policy."""
    out = RunLayout(cfg.run_dir).evaluation(name)
    users = sorted(spec.users)
    cached = read_json(out.eval_result)
    if (cached is not None and cached.get("protocol") == spec.protocol and cached.get("ks") == list(spec.ks)
            and cached.get("per_user", {}).get("users") == users):
        return cached
    masked, _ = evaluation_histories(ds, spec, users)
    recs = top_k(reference_scores(name, cfg, ds, users, popularity), [masked[u] for u in users], max(spec.ks))
    return score_lists(ds, spec, users, recs, popularity, twin, out, {"policy": name, "slug": name, "reference": True})
