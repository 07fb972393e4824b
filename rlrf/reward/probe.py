"""`rlrf reward probe`: does the reward model read the user summary?

On the VALIDATION and TEST users whose reranking list holds both positives and negatives, each
reward model scores four summaries written with one template (`items_summary`):

* ``positives``  — from the genres and titles of the list's POSITIVE items (what the user will like),
* ``negatives``  — the same template from the list's NEGATIVE items,
* ``other user`` — another probe user's positives-summary (users rolled by one),
* ``empty``      — no summary (the model's "missing user" vector),

plus ``history`` — the "self" text from the visible history (what a summary written from the history
alone can carry). A reward model that reads the summary must rank the list better with the
positives-summary than with the negatives-summary. Reported per model seed: P(positives >
negatives) on NDCG@K (ties count half), mean NDCG@K of each summary, and the paired gap
positives − negatives with a percentile-bootstrap 95% CI over users. With `--responses`, the real
policy summaries (a responses.jsonl, latest iteration per user): mean reward and the spread
(max − min over each user's N summaries) of NDCG@K and of the logit margin.

P is also reported on the NDCG of the whole reranked list (`p_pos_gt_neg_list`) and on the logit
margin. Why: on future lists half the list is positive, so for many users both summaries fill the
top K with positives and NDCG@K ties at 1.0 — the ranking cannot improve, which says nothing about
whether the model reads the summary. `ties_at_ceiling` counts those ties.

The probe summaries are built from the list's labels, i.e. from the users' future: they are a
diagnostic only, on held-out users, never a training input (training summaries come from TRAIN
users only, see `rlrf.reward.pool`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlrf.core.config import DataConfig, EncoderConfig, RewardConfig
from rlrf.core.layout import RunLayout
from rlrf.evaluation.stats import bootstrap_ci

VARIANTS = ("positives", "negatives", "other user", "empty", "history")


def items_summary(catalog, items: Sequence[int], n_genres: int = 3, n_titles: int = 5) -> str:
    """The probe's one template: "Likes <top genres> movies. Favourites: <title>; <title>." ("" if no items).

    Genres are counted over the items (an item with m genres adds 1/m to each), ties by name;
    titles in the given order, at most `n_titles`.
    """
    items = list(items)
    if not items:
        return ""
    weights: Counter[str] = Counter()
    for i in items:
        for g in catalog.genres[i]:
            weights[g] += 1.0 / len(catalog.genres[i])
    top = [g for g, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:n_genres]]
    parts = []
    if top:
        parts.append("Likes " + ", ".join(top) + " movies.")
    parts.append("Favourites: " + "; ".join(catalog.titles[i] for i in items[:n_titles]) + ".")
    return " ".join(parts)


def probe_users(ds, lists, splits: Sequence[str] = ("valid", "test")) -> list[str]:
    """Users of `splits` (split order) whose list holds at least one positive and one negative."""
    out = []
    for s in splits:
        for u in ds.splits[s]:
            lst = lists.get(u)
            if lst is not None and 0 < sum(lst.labels) < len(lst.labels):
                out.append(u)
    return out


def probe_texts(ds, lists, users: Sequence[str], positive_rating: float = 4.0) -> dict[str, list[str]]:
    """{variant: [text per user]} for VARIANTS, aligned with `users`."""
    from rlrf.data import texts as kn

    cat = ds.catalog
    pos = [items_summary(cat, [i for i, y in zip(lists[u].items, lists[u].labels) if y > 0]) for u in users]
    neg = [items_summary(cat, [i for i, y in zip(lists[u].items, lists[u].labels) if y <= 0]) for u in users]
    other = pos[1:] + pos[:1] if len(pos) > 1 else [""] * len(pos)
    hist = [kn.user_self_text(cat, lists[u].history, lists[u].history_ratings, positive_rating) for u in users]
    return {"positives": pos, "negatives": neg, "other user": other, "empty": [""] * len(users), "history": hist}


def paired_ci(diff: np.ndarray, seed: int = 0, n_boot: int = 2000) -> list[float]:
    """Percentile-bootstrap 95% CI of the mean of paired differences."""
    return bootstrap_ci(diff, seed, n_boot)[1] if len(diff) else [float("nan"), float("nan")]


def p_greater(a: np.ndarray, b: np.ndarray) -> float:
    """P(a > b) over users, ties counting half."""
    a, b = np.asarray(a), np.asarray(b)
    return float(((a > b) + 0.5 * (a == b)).mean()) if len(a) else float("nan")


def summarize(scores: dict[str, dict[str, np.ndarray]], metric: str, seed: int = 0,
              list_metric: str | None = None) -> dict:
    """scores[variant][metric] arrays over users → the probe's numbers for one model.

    `list_metric`: the NDCG of the whole list (NDCG@L, L ≥ the list length), if scored."""
    pos, neg = scores["positives"][metric], scores["negatives"][metric]
    tie = pos == neg
    out = {"p_pos_gt_neg": p_greater(pos, neg), "ties_pos_neg": float(np.mean(tie)),
           "ties_at_ceiling": float(np.mean(tie & (pos >= 1.0 - 1e-9))),
           "losses_pos_neg": float(np.mean(pos < neg)),
           "p_pos_gt_neg_margin": p_greater(scores["positives"]["margin"], scores["negatives"]["margin"]),
           "p_pos_gt_other": p_greater(pos, scores["other user"][metric]),
           "mean": {v: float(np.mean(s[metric])) for v, s in scores.items()},
           "mean_margin": {v: float(np.mean(s["margin"])) for v, s in scores.items()}}
    if list_metric:
        out["p_pos_gt_neg_list"] = p_greater(scores["positives"][list_metric], scores["negatives"][list_metric])
    diff = pos - neg
    out["gap"] = {"mean": float(diff.mean()), "ci95": paired_ci(diff, seed)}
    d2 = pos - scores["other user"][metric]
    out["gap_vs_other"] = {"mean": float(d2.mean()), "ci95": paired_ci(d2, seed)}
    return out


def response_spread(scorer, responses: dict[str, list[str]], metric: str) -> dict:
    """Real policy summaries: mean reward, and per-user spread (max − min) of `metric` and of the margin."""
    from rlrf.reward.scorer import score_summaries

    users = [u for u in responses if u in scorer.row and responses[u]]
    if not users:
        return {"users": 0}
    out = score_summaries(scorer, {u: responses[u] for u in users})
    m = [np.array([r[metric] for r in out[u]]) for u in users]
    g = [np.array([r["margin"] for r in out[u]]) for u in users]
    spread = np.array([x.max() - x.min() for x in m])
    gspread = np.array([x.max() - x.min() for x in g])
    return {"users": len(users), "summaries": int(sum(len(x) for x in m)),
            f"mean_{metric}": float(np.mean(np.concatenate(m))),
            f"mean_spread_{metric}": float(spread.mean()), "users_with_any_change": float((spread > 1e-9).mean()),
            "mean_spread_margin": float(gspread.mean())}


def split_half(scorer, responses: dict[str, list[str]], seed: int = 0) -> dict:
    """Is the reward's choice among one user's summaries about the user, or about the list's items?

    Scores every summary of the user on two random halves of the list (see `split_half_agreement`).
    Users need two summaries and a list with two positives and two negatives.
    """
    users = [u for u in responses if u in scorer.row and len(responses[u]) >= 2]
    labels = {u: scorer.data.labels[scorer.row[u]].numpy() > 0 for u in users}
    users = [u for u in users if 2 <= labels[u].sum() <= len(labels[u]) - 2]
    if not users:
        return {"users": 0}
    logits = scorer.item_logits([u for u in users for _ in responses[u]], [t for u in users for t in responses[u]])
    bounds = np.cumsum([0] + [len(responses[u]) for u in users])
    per_user = [logits[a:b].numpy() for a, b in zip(bounds[:-1], bounds[1:])]
    return split_half_agreement(per_user, [labels[u] for u in users], seed)


def split_half_agreement(logits: Sequence[np.ndarray], labels: Sequence[np.ndarray], seed: int = 0) -> dict:
    """Per user, `logits` [n summaries, L] and `labels` [L] bool. Each list's positives and negatives
    are split at random into two halves and every summary gets a margin (mean positive − mean
    negative logit) on each. A summary that wins because it describes the user's taste wins on both
    halves (within-user correlation of the halves' margins near 1); one that wins by matching
    particular items does not (near 0). `same_best_chance`: agreement on the best summary by chance."""
    rng = np.random.default_rng(seed)
    corrs, same, chance = [], [], []
    for s, y in zip(logits, labels):
        pos, neg = rng.permutation(np.flatnonzero(y)), rng.permutation(np.flatnonzero(~y))
        halves = np.array([[s[i, p].mean() - s[i, q].mean() for p, q in ((pos[::2], neg[::2]), (pos[1::2], neg[1::2]))]
                           for i in range(len(s))])
        if halves[:, 0].std() > 0 and halves[:, 1].std() > 0:
            corrs.append(float(np.corrcoef(halves[:, 0], halves[:, 1])[0, 1]))
        same.append(bool(halves[:, 0].argmax() == halves[:, 1].argmax()))
        chance.append(1 / len(s))
    return {"users": len(logits), "within_user_corr": float(np.mean(corrs)) if corrs else float("nan"),
            "within_user_corr_ci95": paired_ci(np.array(corrs), seed), "same_best": float(np.mean(same)),
            "same_best_chance": float(np.mean(chance))}


def read_responses(path: Path, known_users) -> dict[str, list[str]]:
    """responses.jsonl → {user: [text, ...]} from each user's latest `iter`, in `k` order."""
    import json

    rows: dict[str, dict[int, list[tuple[int, str]]]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        u = str(r["user"])
        if u in known_users:
            rows.setdefault(u, {}).setdefault(int(r.get("iter", 0)), []).append((int(r.get("k", 0)), r.get("text", "")))
    return {u: [t for _, t in sorted(its[max(its)])] for u, its in rows.items()}


def run_probe(cfg, kinds: Sequence[str] | None = None, n_seeds: int | None = None,
              responses: Path | None = None, out: Path | None = None, console=None) -> dict:
    """`probe_rewards` for a whole run config, with the run's torch threads (the CLI's adapter)."""
    from rlrf.core.threads import use_threads
    from rlrf.reward.training import seeds_for

    use_threads(cfg)
    return probe_rewards(cfg.data, cfg.reward, cfg.encoder, RunLayout(cfg.run_dir), cfg.seed, seeds_for(cfg, n_seeds),
                         kinds=kinds, responses=responses, out=out, console=console)


def probe_rewards(data: DataConfig, reward: RewardConfig, encoder: EncoderConfig, layout: RunLayout, seed: int,
                  seeds: Sequence[int], *, kinds: Sequence[str] | None = None, responses: Path | None = None,
                  out: Path | None = None, console=None) -> dict:
    """Score the probe summaries with each +knowledge model/seed; print a table; write reward/probe.json."""
    from rich.console import Console
    from rich.table import Table

    from recmodels.train import load_reranker
    from rlrf.core.errors import UserError
    from rlrf.core.io import atomic_write_json
    from rlrf.data import texts as kn
    from rlrf.data.dataset import load_dataset
    from rlrf.reward.inputs import run_lists
    from rlrf.reward.scorer import RewardScorer
    from rlrf.reward.training import model_name

    console = console or Console(width=None if Console().is_terminal else 200)
    seeds = list(seeds)
    kinds = list(kinds or [reward.model])
    k = reward.k
    metric = f"ndcg@{k}"
    ds = load_dataset(data, seed=seed)
    lists = run_lists(data, layout, seed, ds)
    users = probe_users(ds, lists)
    if not users:
        raise UserError("no validation/test user has a list with both positives and negatives")
    whole = max(len(lists[u].items) for u in users)  # NDCG@whole = the NDCG of each whole list
    list_metric = f"ndcg@{whole}"
    texts = probe_texts(ds, lists, users, data.positive_rating)
    text_encoder = kn.load_encoder(encoder, progress=False)
    policy = read_responses(responses, set(ds.splits["valid"]) | set(ds.splits["test"])) if responses else None
    result = {"dataset": ds.name, "lists": data.lists.model_dump(mode="json"), "users": len(users),
              "splits": ["valid", "test"], "metric": metric, "list_metric": list_metric, "seeds": seeds,
              "ties": "P(pos > neg) counts a tie as 1/2",
              "ci": "paired percentile bootstrap over users, 2000 resamples, 95%",
              "template": items_summary(ds.catalog, lists[users[0]].items[:2]), "models": {}}
    table = Table(title=f"reward probe: {len(users)} valid+test users with positives and negatives, {metric.upper()}")
    for col in ("model", "seed", "P(pos>neg)", "ties (at 1.0)", f"P {list_metric.upper()}", "P margin", "pos", "neg", "other", "empty", "history", "gap pos−neg [95% CI]"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for kind in kinds:
        name = model_name(kind, True)
        per_seed = []
        for model_seed in seeds:
            file = layout.reward_model_file(name, model_seed)
            model, _ = load_reranker(file.parent, ds.name, text_encoder.key, len(ds.catalog), ds.catalog.genre_matrix(),
                                     name=file.name)
            scorer = RewardScorer(model, lists, text_encoder, data.lists.max_history, data.positive_rating, ks=(k, whole))
            scores = {v: scorer.score(users, t) for v, t in texts.items()}
            row = {"seed": model_seed, **summarize(scores, metric, seed=seed, list_metric=list_metric)}
            if policy is not None:
                row["policy_summaries"] = response_spread(scorer, policy, metric)
                row["policy_split_half"] = split_half(scorer, policy, seed=seed)
            per_seed.append(row)
            mm = row["mean"]
            table.add_row(name.replace("_knowledge", " +knowledge"), str(model_seed), f"{row['p_pos_gt_neg']:.3f}",
                          f"{row['ties_pos_neg']:.3f} ({row['ties_at_ceiling']:.3f})",
                          f"{row['p_pos_gt_neg_list']:.3f}", f"{row['p_pos_gt_neg_margin']:.3f}",
                          *[f"{mm[v]:.4f}" for v in ("positives", "negatives", "other user", "empty", "history")],
                          f"{row['gap']['mean']:+.4f} [{row['gap']['ci95'][0]:+.4f}, {row['gap']['ci95'][1]:+.4f}]")
        result["models"][name] = per_seed
    console.print(table)
    for name, rows in result["models"].items():
        for row in rows:
            ps = row.get("policy_summaries")
            if ps and ps.get("users"):
                console.print(f"{name} seed {row['seed']}: policy summaries of {ps['users']} users "
                              f"({ps['summaries']} texts): mean {metric.upper()} {ps[f'mean_{metric}']:.4f}, "
                              f"mean spread {ps[f'mean_spread_{metric}']:.4f}, users with any change "
                              f"{ps['users_with_any_change']:.3f}, margin spread {ps['mean_spread_margin']:.4f}")
            sh = row.get("policy_split_half")
            if sh and sh.get("users"):
                lo, hi = sh["within_user_corr_ci95"]
                console.print(f"{name} seed {row['seed']}: split-half, {sh['users']} users: within-user correlation of "
                              f"the halves' margins {sh['within_user_corr']:+.3f} [{lo:+.3f}, {hi:+.3f}], same best "
                              f"summary on both halves {sh['same_best']:.3f} (chance {sh['same_best_chance']:.3f})")
    path = Path(out) if out else layout.reward_probe
    atomic_write_json(path, result)
    console.print(f"written {path}")
    return result
