"""SPRec's evaluation protocol: a policy's greedy title for each held-out user, grounded to a top-K
list, scored on the user's last item (HR/NDCG, twin titles count) and for bias (DivRatio, ORRatio,
MGU, DGU, mean popularity; rlrf.evaluation.metrics).

Two protocols (`sprec.eval_protocol`): ``sprec`` is SPRec's own (nothing masked from the top-K,
the grounded item not forced first, MGU against the history the prompt shows); ``rlrf`` masks the
user's history (`sprec.exclude_history`), puts the grounded item first and takes MGU against every
item before the target. An `EvalSpec` says which users and which protocol, so the held-out
evaluation and the SFT stopping rule's validation are the same code on different users.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlrf.core.io import atomic_write_json, atomic_write_jsonl, read_json
from rlrf.core.layout import RunLayout
from rlrf.data.dataset import train_popularity
from rlrf.methods.sprec.stages import generate_next_items


@dataclass(frozen=True)
class EvalSpec:
    """Who a policy is judged on and how: the users of `splits` (two or more items each, evaluated on
    their last), the cut-offs `ks`, and the protocol's choices."""

    users: tuple[str, ...]
    splits: tuple[str, ...]
    ks: tuple[int, ...]
    protocol: str          # sprec | rlrf
    topk: str              # nearest: the items nearest the greedy title; samples: the most sampled items
    samples: int           # topk=samples: answers sampled per user ...
    temperature: float     # ... at this temperature
    exclude_history: bool  # protocol rlrf: the user's items never enter the top-K
    max_history: int       # protocol sprec: MGU's history = the last max_history items the prompt shows


def evaluation_users(ds, splits, limit: int | None) -> list[str]:
    """Users of `splits` (never trained on) with two or more items, evaluated on their last item;
    the first `limit` of them when set."""
    users = [u for split in splits for u in ds.splits[split] if len(ds.users[u].items) >= 2]
    return users[:limit] if limit else users


def _spec(ds, cfg, splits, ks, limit) -> EvalSpec:
    s = cfg.sprec
    return EvalSpec(users=tuple(evaluation_users(ds, splits, limit)), splits=tuple(splits), ks=tuple(ks),
                    protocol=s.eval_protocol, topk=s.topk, samples=s.eval_samples,
                    temperature=cfg.generate.temperature, exclude_history=s.exclude_history,
                    max_history=cfg.data.lists.max_history)


def held_out_spec(ds, cfg) -> EvalSpec:
    """Every user of `sprec.eval_splits` (the first `loop.eval_users` when set), at `sprec.ks`."""
    return _spec(ds, cfg, cfg.sprec.eval_splits, cfg.sprec.ks, cfg.loop.eval_users)


def validation_spec(ds, cfg) -> EvalSpec:
    """What the SFT stopping rule judges on: VALID users only (the first `sprec.sft_valid_users` with
    two or more items, never a test user), under the run's protocol, HR at the one K
    `sprec.sft_valid_k` (default max(ks))."""
    s = cfg.sprec
    return _spec(ds, cfg, ["valid"], [s.sft_valid_k or max(s.ks)], s.sft_valid_users)


def policy_slug(root: Path, adapter: Path | None) -> str:
    """A folder name for a policy: ``base`` or its adapter's path under the run (``sft__adapter``)."""
    if adapter is None:
        return "base"
    adapter = Path(adapter)
    try:
        rel = adapter.resolve().relative_to(Path(root).resolve())
    except ValueError:
        return "adapter_" + hashlib.sha256(str(adapter.resolve()).encode()).hexdigest()[:12]
    return "__".join(rel.parts)


def evaluation_histories(ds, spec: EvalSpec, users) -> tuple[dict, dict]:
    """(items masked from the top-K, items of MGU's history baseline) per user, by the protocol:
    sprec masks nothing and takes the shown history; rlrf masks (exclude_history) and takes every
    item before the target."""
    if spec.protocol == "sprec":
        shown = {u: ds.users[u].items[:-1][-spec.max_history:] for u in users}
        return {u: [] for u in users}, shown
    full = {u: ds.users[u].items[:-1] for u in users}
    return (full if spec.exclude_history else {u: [] for u in users}), full


def recommendations(grounder, ds, records: list[dict], histories: dict[str, list[int]], k: int, topk: str,
                    exclude_history: bool, grounded_first: bool = True) -> tuple[list[str], np.ndarray, list]:
    """(users, top-K item indices [n, k] padded with -1, groundings of each user's first text).

    nearest: the items nearest the generated title's embedding (SPRec/BIGRec), with the grounded item
    first when `grounded_first`. samples: the grounded items of the sampled titles, most frequent first.
    """
    by_user: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: (r["user"], r["k"])):
        by_user.setdefault(r["user"], []).append(r)
    users = sorted(by_user)
    first = grounder.ground([by_user[u][0]["text"] for u in users])
    if topk == "nearest":
        exclude = [histories[u] if exclude_history else [] for u in users]
        recs = grounder.nearest([by_user[u][0]["text"] for u in users], k, exclude=exclude, grounded_first=grounded_first)
    else:
        recs = np.full((len(users), k), -1, dtype=np.int64)
        texts = [r["text"] for u in users for r in by_user[u]]
        grounded = iter(grounder.ground(texts))
        for row, u in enumerate(users):
            seen = set(histories[u]) if exclude_history else set()
            counts = Counter()
            for _ in by_user[u]:
                g = next(grounded)
                if g.item is not None and g.item not in seen:
                    counts[g.item] += 1
            items = [i for i, _ in counts.most_common(k)]
            recs[row, : len(items)] = items
    return users, recs, first


def title_ranks(recs: np.ndarray, targets: np.ndarray, twin: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each target in its list, -1 when absent; with `twin` (item -> first item of its
    title, `TitleGrounder.twin`) an item sharing the target's normalised title and year is a hit too."""
    from rlrf.evaluation import metrics as m

    recs, targets = np.asarray(recs, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    if twin is None:
        return m.target_ranks(recs, targets)
    twin = np.asarray(twin, dtype=np.int64)
    return m.target_ranks(np.where(recs >= 0, twin[np.clip(recs, 0, None)], -1),
                          np.where(targets >= 0, twin[np.clip(targets, 0, None)], -1))


def bias_and_ranking_metrics(recs: np.ndarray, targets: np.ndarray, history_items: np.ndarray, catalog,
                             ks: list[int], popularity=None, twin=None) -> dict:
    """Means over users of HR/NDCG@K (twin titles count as hits) and the list-level bias metrics;
    `popularity` defaults to the catalogue's counts (pass `train_popularity`)."""
    from rlrf.evaluation import metrics as m

    popularity = catalog.popularity if popularity is None else popularity
    ranks = title_ranks(recs, targets, twin)
    genre = catalog.genre_matrix()
    out: dict = {}
    for k in ks:
        hr, ndcg = m.hit_ndcg_at_k(ranks, k)
        mgu, dgu = m.mgu_dgu(recs, history_items, genre, k)
        filled = recs[:, :k][recs[:, :k] >= 0]
        out.update({
            f"hr@{k}": float(hr.mean()), f"ndcg@{k}": float(ndcg.mean()),
            f"div_ratio@{k}": m.div_ratio(recs, k), f"or_ratio@{k}": m.or_ratio(recs, k),
            f"mgu@{k}": mgu, f"dgu@{k}": dgu,
            f"mean_popularity@{k}": m.mean_popularity(recs, popularity, k) if filled.size else None,
        })
    return out


def per_user_hits(recs, targets, ks, twin=None) -> dict:
    """{"hr@K": [...], "ndcg@K": [...]} per user (the paired bootstrap's units)."""
    from rlrf.evaluation import metrics as m

    ranks = title_ranks(recs, targets, twin)
    out = {}
    for k in ks:
        hr, ndcg = m.hit_ndcg_at_k(ranks, k)
        out[f"hr@{k}"], out[f"ndcg@{k}"] = hr.tolist(), ndcg.round(6).tolist()
    return out


def popularity_bins(popularity) -> np.ndarray:
    """0, then log-spaced popularity bins (1 .. max count): items never seen in training and the long tail get their own bins."""
    top = max(float(np.max(popularity)), 2.0)
    return np.unique(np.concatenate([[0.0], np.round(np.geomspace(1, top + 1, 11))]))


def evaluate_policy(cfg, spec: EvalSpec, adapter: Path | None, root: Path, ds, grounder, show_progress: bool = True,
                    popularity=None, out: RunLayout | None = None, *, seed: int) -> dict:
    """HR/NDCG (per user too), bias metrics and popularity histograms of the policy with `adapter`
    (None: the base model) on `spec`'s users under its protocol; `cfg` and `seed` (the training
    seed) only run the generation.

    Cached in ``<root>/eval/<policy>/eval.json`` (or the sub-run `out`, e.g. a validation): methods that
    share a policy (SFT) evaluate it once; a cache of another protocol or user set is recomputed from
    the stored generations.
    """
    from rlrf.generation.generate import load_responses

    popularity = train_popularity(ds) if popularity is None else np.asarray(popularity)
    slug = policy_slug(root, adapter)
    out = RunLayout(root).evaluation(slug) if out is None else out
    out_dir = out.root
    users = list(spec.users)
    cached = read_json(out.eval_result)
    if (cached is not None and cached.get("protocol") == spec.protocol and cached.get("ks") == list(spec.ks)
            and sorted(cached.get("per_user", {}).get("users", [])) == sorted(users)):
        return cached
    sampled = spec.topk == "samples"
    generate_next_items(cfg, layout=out, seed=seed, iteration=0, dataset=ds, users=users,
                        n=spec.samples if sampled else 1, temperature=spec.temperature if sampled else 0.0,
                        adapter=adapter, show_progress=show_progress)
    wanted = set(users)
    records = [r for r in load_responses(out_dir, 0, "next_item") if r["user"] in wanted]
    masked, _ = evaluation_histories(ds, spec, users)
    rec_users, recs, first = recommendations(grounder, ds, records, masked, max(spec.ks), spec.topk,
                                             exclude_history=True, grounded_first=spec.protocol == "rlrf")
    return score_lists(ds, spec, rec_users, recs, popularity, grounder.twin, out,
                       {"policy": str(adapter) if adapter else "base", "slug": slug, "topk": spec.topk},
                       first_groundings=first)


def score_lists(ds, spec: EvalSpec, users: list[str], recs: np.ndarray, popularity, twin, out: RunLayout,
                header: dict, first_groundings=None) -> dict:
    """The eval.json of top-K lists `recs` [users, K] on `spec`'s protocol (HR/NDCG per user, bias
    metrics, popularity histograms), written with the lists themselves to `out`: the one scorer of
    every row of the SPRec table, policies and reference recommenders alike."""
    from rlrf.evaluation import metrics as m

    cat = ds.catalog
    _, baseline = evaluation_histories(ds, spec, users)
    targets = np.array([ds.users[u].items[-1] for u in users], dtype=np.int64)
    history_items = np.array([i for u in users for i in baseline[u]], dtype=np.int64)
    result = {
        **header, "users": len(users), "protocol": spec.protocol, "splits": list(spec.splits), "ks": list(spec.ks),
        **bias_and_ranking_metrics(recs, targets, history_items, cat, list(spec.ks), popularity, twin),
    }
    if first_groundings is not None:
        result["grounding"] = _shares(first_groundings)
    result["top1_is_target"] = float(np.mean(title_ranks(recs[:, :1], targets, twin) == 0)) if len(targets) else 0.0
    result["per_user"] = {"users": users, **per_user_hits(recs, targets, spec.ks, twin)}
    edges = popularity_bins(popularity)
    rec_hist, _ = m.popularity_histogram(recs[:, :max(spec.ks)], popularity, edges)
    his_hist, _ = m.popularity_histogram(history_items, popularity, edges)
    result["popularity_histogram"] = {"edges": edges.tolist(), "recommended": rec_hist.round(5).tolist(),
                                      "history": his_hist.round(5).tolist()}
    atomic_write_jsonl(out.recommendations(0), (
        {"user": u, "target": cat.ids[t], "items": [cat.ids[i] for i in row if i >= 0]}
        for u, t, row in zip(users, targets.tolist(), recs.tolist())))
    atomic_write_json(out.eval_result, result)
    return result


def _shares(groundings) -> dict:
    from rlrf.generation.grounding import grounding_shares

    return {k: round(v, 5) for k, v in grounding_shares(groundings).items()}
