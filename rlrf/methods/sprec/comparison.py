"""Training seeds and the comparison of every evaluated policy with SFT, pooled over seeds.

With `sprec.seeds` each training seed gets its own SFT and arms under ``seed_<s>/`` (the data split
stays the run's `seed`); `collect` gathers the arms' records into the run's metrics.json, and
`compare` gives each policy's difference from SFT with a paired bootstrap CI over users.
"""

from __future__ import annotations

import numpy as np

from rlrf.core.io import atomic_write_json, read_json, read_jsonl
from rlrf.core.layout import RunLayout
from rlrf.data.dataset import train_popularity
from rlrf.evaluation import metrics as m
from rlrf.methods.sprec.evaluation import evaluation_histories, held_out_spec
from rlrf.methods.sprec.negatives import SAMPLERS

REFERENCES = {"popularity": "popularity (reference)", "sasrec": "SASRec (reference)"}

PER_USER = ("hr", "ndcg")
AGGREGATE = ("div_ratio", "or_ratio", "mgu", "dgu", "mean_popularity")
COUNTED = ("div_ratio", "or_ratio")  # counts over the set of lists: half-sample intervals (rlrf.evaluation.stats)


def training_seeds(cfg) -> list[int]:
    return list(cfg.sprec.seeds) if cfg.sprec.seeds else [cfg.seed]


def seed_root(cfg, seed: int) -> RunLayout:
    """The comparison folder of one training seed: the run itself, or ``seed_<s>/`` with `sprec.seeds`."""
    root = RunLayout(cfg.run_dir)
    return root if cfg.sprec.seeds is None else root.arm(f"seed_{seed}")


def save_seed_config(cfg, root: RunLayout, seed: int) -> None:
    """`root`'s config.yaml: the run's config with `root` as its run_dir and `seed` as its seed, so a
    training seed's comparison folder reads as a run of its own (without `sprec.seeds`, `root` is the
    run and this is the run's own config)."""
    from rlrf.core.config import write_yaml
    from rlrf.core.io import atomic_write_text

    values = cfg.model_dump(mode="json")
    values.update(run_dir=str(root.root), seed=seed)
    atomic_write_text(root.config, write_yaml(values))


def arm_label(cfg, name: str, seed: int) -> str:
    return name if cfg.sprec.seeds is None else f"{name}@seed_{seed}"


class PolicyLists:
    """One evaluated policy's top-K lists [users, K] (-1 = empty slot), its users' histories (MGU's
    baseline) and per-user hits: what a resample of users needs to recompute every metric."""

    def __init__(self, recs: np.ndarray, hist: list[list[int]], genre: np.ndarray, popularity: np.ndarray,
                 per_user: dict):
        self.recs, self.per_user = recs, per_user
        self.hist_mass = m.genre_mass(hist, genre)
        self.genre, self.popularity = genre, popularity

    def statistic(self, key: str, idx: np.ndarray) -> np.ndarray:
        """The metric `key` ("hr@10", "mgu@5", ...) over each row of user indices `idx` [B, U] (a resample), as [B]."""
        name, k = key.rsplit("@", 1)
        k = int(k)
        if name in PER_USER:
            return np.asarray(self.per_user[key], dtype=float)[idx].mean(1)
        if name == "div_ratio":
            return m.div_ratio_resampled(self.recs, k, idx)
        if name == "or_ratio":
            return m.or_ratio_resampled(self.recs, k, idx)
        if name == "mean_popularity":
            return m.mean_popularity_resampled(self.recs, self.popularity, k, idx)
        mgu, dgu = m.mgu_dgu_resampled(self.recs, self.hist_mass, self.genre, k, idx)
        return mgu if name == "mgu" else dgu


def metric_keys(ks) -> list[str]:
    return [f"{name}@{k}" for k in ks for name in PER_USER + AGGREGATE]


def compare(rows: dict[str, dict[int, PolicyLists]], reference: str, keys: list[str], n_boot: int, seed: int = 0) -> dict:
    """Per row (label -> {seed: lists}): each metric's mean and sd over seeds, and its difference from
    `reference` (SFT) with a paired 95% CI: the same draws of users for every seed and policy, the
    difference averaged over the seeds both share. Means over users and smooth functions of sums
    (HR, NDCG, mean popularity, MGU, DGU) take the percentile bootstrap; DivRatio and ORRatio, which
    a repeated user biases, take half-samples without repeats centred on the observed difference."""
    from rlrf.evaluation.stats import centred_interval, half_samples, mean_sd

    ref = rows[reference]
    n_users = len(next(iter(ref.values())).recs)
    every = np.arange(n_users)[None, :]
    rng = np.random.default_rng(seed)
    draws = {"bootstrap": rng.integers(0, n_users, size=(n_boot, n_users)), "half-sample": half_samples(n_users, n_boot, rng)}
    kind = {key: "half-sample" if key.rsplit("@", 1)[0] in COUNTED else "bootstrap" for key in keys}
    ref_point = {(s, key): ref[s].statistic(key, every)[0] for s in ref for key in keys}
    ref_draw = {(s, key): ref[s].statistic(key, draws[kind[key]]) for s in ref for key in keys}
    out = {}
    for label, by_seed in rows.items():
        seeds = [s for s in by_seed if s in ref]
        entry = {"seeds": sorted(by_seed), "users": n_users, "metrics": {}}
        for key in keys:
            values = [float(by_seed[s].statistic(key, every)[0]) for s in sorted(by_seed)]
            mean, sd = mean_sd(values)
            cell = {"mean": mean, "sd": sd, "per_seed": values}
            if label != reference and seeds:
                point = float(np.mean([values[sorted(by_seed).index(s)] - ref_point[s, key] for s in seeds]))
                dist = np.mean([by_seed[s].statistic(key, draws[kind[key]]) - ref_draw[s, key] for s in seeds], axis=0)
                ci = (centred_interval(point, dist) if kind[key] == "half-sample"
                      else [float(np.quantile(dist, 0.025)), float(np.quantile(dist, 0.975))])
                cell["vs_sft"] = {"mean": point, "ci95": ci, "interval": kind[key]}
            entry["metrics"][key] = cell
        out[label] = entry
    return out


def _load_lists(cfg, ds, root: RunLayout, ev: dict, users: list[str], genre, popularity) -> PolicyLists:
    cat = ds.catalog
    k_max = max(cfg.sprec.ks)
    by_user = {r["user"]: r for r in read_jsonl(root.evaluation(ev["slug"]).recommendations(0))}
    recs = np.full((len(users), k_max), -1, dtype=np.int64)
    for row, u in enumerate(users):
        items = [cat.index(i) for i in by_user[u]["items"]][:k_max]
        recs[row, : len(items)] = items
    _, baseline = evaluation_histories(ds, held_out_spec(ds, cfg), users)
    per = ev["per_user"]
    pos = {u: j for j, u in enumerate(per["users"])}
    per_user = {key: [per[key][pos[u]] for u in users] for key in per if key != "users"}
    return PolicyLists(recs, [baseline[u] for u in users], genre, popularity, per_user)


def collect(cfg, arm_metrics: dict[str, dict]) -> dict:
    """The comparison's metrics.json: the base and SFT evaluations, the SFT log, every arm's record
    (seed by seed) and `comparison`: each policy pooled over seeds with paired CIs against SFT."""
    from rlrf.data.dataset import load_dataset

    root = RunLayout(cfg.run_dir)
    seeds = training_seeds(cfg)
    by_seed = {s: {name: arm_metrics[arm_label(cfg, name, s)] for name in cfg.sprec.methods
                   if arm_label(cfg, name, s) in arm_metrics} for s in seeds}
    by_seed = {s: arms_ for s, arms_ in by_seed.items() if arms_}
    first_seed = next(iter(by_seed))
    metrics: dict = {"method": "sprec", "seeds": list(by_seed), "protocol": cfg.sprec.eval_protocol,
                     "evaluations": {}, "methods": by_seed[first_seed]}
    if len(by_seed) > 1 or cfg.sprec.seeds is not None:
        metrics["seed_runs"] = {str(s): arms_ for s, arms_ in by_seed.items()}
    base = read_json(root.evaluation("base").eval_result)
    if cfg.sprec.evaluate_base and base is not None:
        metrics["evaluations"]["base"] = base
    metrics["sft"] = (read_json(seed_root(cfg, first_seed).sft_log) or {}).get("summary", {})
    metrics["evaluations"]["sft"] = next(iter(by_seed[first_seed].values()))["evaluations"]["policy_0"]

    ds = load_dataset(cfg.data, seed=cfg.seed)
    popularity = train_popularity(ds).astype(float)
    genre = ds.catalog.genre_matrix().astype(float)
    users = sorted(metrics["evaluations"]["sft"]["per_user"]["users"])
    rows: dict[str, dict[int, PolicyLists]] = {}

    def add(label: str, seeds, lroot: RunLayout, ev: dict | None) -> None:
        """One evaluation's lists, shared by every seed of `seeds` (several: a seed-free row)."""
        if ev is not None and "per_user" in ev and sorted(ev["per_user"]["users"]) == users:
            lists = _load_lists(cfg, ds, lroot, ev, users, genre, popularity)
            rows.setdefault(label, {}).update(dict.fromkeys(seeds, lists))

    for name in cfg.sprec.references:  # seed-free: one evaluation pairs with every seed's SFT
        add(REFERENCES[name], by_seed, root, read_json(root.evaluation(name).eval_result))
    if "base" in metrics["evaluations"]:
        add("base (no SFT)", by_seed, root, base)
    for s, arms_ in by_seed.items():
        add("SFT", [s], seed_root(cfg, s), next(iter(arms_.values()))["evaluations"]["policy_0"])
    iterations = max(len(record["evaluations"]) for arms_ in by_seed.values() for record in arms_.values())
    for t in range(1, iterations):
        for s, arms_ in by_seed.items():
            for name, record in arms_.items():
                add(f"{SAMPLERS[name].title} iter {t}", [s], seed_root(cfg, s), record["evaluations"].get(f"policy_{t}"))
    if "SFT" in rows:
        metrics["comparison"] = compare(rows, "SFT", metric_keys(cfg.sprec.ks), cfg.sprec.bootstrap, cfg.seed)
    atomic_write_json(root.metrics, metrics)
    return metrics
