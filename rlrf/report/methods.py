"""`rlrf experiment methods`' table (table.md): every method's change against policy_0 on the same test
users, pooled over training seeds, beside what it cost and RosePO's ε."""

from __future__ import annotations

from rlrf.report.rlrf4rec import MEASURES

# the columns of the main table: what a method is judged by (the reward, the reward's reranker reading the
# greedy summary, i.e. `rlrf experiment rerank`'s swap row, the independent evaluator, length, finished and
# repeated shares); the other measures are in results.json
SHOWN = ["reward_mean", "ndcg@5", "independent_ndcg@5", "independent_map@5", "tokens", "ended", "repeated"]
TITLES = dict(MEASURES)


def _delta(d: dict | None, key: str) -> str:
    if not d:
        return ""
    digits = 1 if key == "tokens" else 4
    return f"{d['mean']:+.{digits}f} [{d['ci95'][0]:+.{digits}f}, {d['ci95'][1]:+.{digits}f}]"


def _value(mean_sd: list | None, key: str, seeds: int) -> str:
    if not mean_sd:
        return ""
    mean, sd = mean_sd
    digits = 1 if key == "tokens" else 4
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if seeds > 1 else "")


def _seconds(values: list) -> str:
    """The mean of the seeds whose time is known (None: found done by another command, e.g. `rlrf run`'s samples)."""
    known = [v for v in values if v is not None]
    if not known:
        return "?"
    return f"{sum(known) / len(known):.0f}" + (f" ({len(known)} of {len(values)} seeds)" if len(known) < len(values) else "")


def markdown(results: dict) -> str:
    seeds, rows = results["seeds"], results["methods"]
    shown = [k for k in SHOWN if k in results["measures"]]
    p0 = results["policy_0"]
    lines = [
        f"# Every method from the same policy_0: {len(seeds)} training seed(s) {seeds}", "",
        f"One iteration of each method from policy_0 on {results['training_users']} training users; N = "
        f"{results['n']} summaries per user. DPO, S-DPO ({results['negatives']} negatives: the other samples), DMPO "
        f"and RosePO train on one set of samples per seed; GRPO and RLOO sample their own, as many as those. "
        f"Evaluated on {results['test_users']} held-out test users (reward = `{results['metric']}` of the "
        "reranked list; NDCG@5 (greedy summary) is the reward's reranker reading the policy's greedy summary, "
        "the change `rlrf experiment rerank`'s swap protocol reports as aligned − base-policy knowledge; the "
        "independent evaluator is a reranker of the other kind and seed, never the reward).", "",
        "Change against policy_0 on the same users, pooled over the seeds each method ran: mean [95% bootstrap "
        "CI, users resampled within each seed].", "",
        "| method | seeds | " + " | ".join(TITLES[k] for k in shown) + " |",
        "|---|---|" + "---:|" * len(shown),
        "| policy_0 (value) | | " + " | ".join(_value([p0[k], 0.0], k, 1) if p0.get(k) is not None else ""
                                           for k in shown) + " |",
    ]
    for arm, r in rows.items():
        lines.append(f"| {r['title']} | {', '.join(map(str, r['seeds']))} | "
                     + " | ".join(_delta(r["vs_policy_0"].get(k), k) for k in shown) + " |")
    lines += ["", "Each method's own values (mean ± sd over its seeds):", "",
              "| method | " + " | ".join(TITLES[k] for k in shown) + " |", "|---|" + "---:|" * len(shown)]
    for r in rows.values():
        lines.append(f"| {r['title']} | " + " | ".join(_value(r["means"].get(k), k, len(r['seeds'])) for k in shown)
                     + " |")
    against = [(r["title"], r["vs_dpo"]) for r in rows.values() if "vs_dpo" in r]
    if against:
        lines += ["", "Against DPO on the same users and the seeds both ran (pooled):", "",
                  "| method | " + " | ".join(TITLES[k] for k in shown) + " |", "|---|" + "---:|" * len(shown)]
        lines += [f"| {title} | " + " | ".join(_delta(d.get(k), k) for k in shown) + " |" for title, d in against]
    lines += ["", "What each method cost, per seed (mean): summaries generated for training, optimizer steps, "
              "and wall seconds of its own training (online: sampling included) and of the shared samples "
              "(offline methods: generating and scoring iteration 0, once per seed for all four).", "",
              "| method | summaries | steps | training s | shared samples s |", "|---|---:|---:|---:|---:|"]
    shared_seconds = _seconds([s["seconds"] for s in results["samples"].values()])
    for r in rows.values():
        per_seed = list(r["per_seed"].values())
        summaries = sorted({p["summaries"] for p in per_seed})
        steps = sorted({p["steps"] for p in per_seed if p["steps"] is not None})
        lines.append(f"| {r['title']} | {', '.join(map(str, summaries))} | {', '.join(map(str, steps))} | "
                     f"{_seconds([p['train_seconds'] for p in per_seed])} | "
                     f"{'' if r['method'] != 'dpo' else shared_seconds} |")
    if results.get("rosepo"):
        lines += ["", "RosePO's ε = eps_max · exp(−margin / τ) over the seed's pairs, with the calibrated τ and, "
                  "for comparison, the config's (`align.rosepo_tau`); near 0 = below 1% of eps_max:", "",
                  "| seed | τ | rule | mean | 10% | median | 90% | near 0 | trained (logged mean) | config τ: mean | near 0 |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for seed, e in results["rosepo"].items():
            cal, cfg_tau = e["epsilon"], e["at_config_tau"]
            trained = rows.get("rosepo", {}).get("per_seed", {}).get(seed, {}).get("trained_epsilon_mean")
            lines.append(f"| {seed} | {cal['tau']:.4g} | {e['rule']} | {cal['mean']:.4f} | {cal['quantiles']['0.1']:.4f} | "
                         f"{cal['quantiles']['0.5']:.4f} | {cal['quantiles']['0.9']:.4f} | {cal['near_zero']:.2f} | "
                         f"{'' if trained is None else f'{trained:.4f}'} | {cfg_tau['mean']:.4f} (τ {cfg_tau['tau']:g}) | "
                         f"{cfg_tau['near_zero']:.2f} |")
    return "\n".join(lines) + "\n"
