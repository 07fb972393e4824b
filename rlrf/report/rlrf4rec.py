"""The RLRF4Rec report: did the policy improve on held-out users, by how much, and is it real?

Every policy is evaluated on the same test users, so each number after policy_0 is shown as a
paired difference with its 95% bootstrap CI over users. The reward model's numbers sit beside the
independent evaluator's (a reranker the loop never optimised), and the summary's length and the
share of it copied from its prompt beside both, so a policy that games the reward shows.
"""

from __future__ import annotations

from rlrf.core.io import read_json
from rlrf.evaluation.stats import paired_difference, pooled_difference
from rlrf.report import save_figure

# (per-user key, column title); the first four are what the loop optimises or reads
MEASURES = [
    ("reward_mean", "mean reward (N samples)"),
    ("reward_best", "best-of-N reward"),
    ("ndcg@5", "NDCG@5 (greedy summary)"),
    ("map@5", "MAP@5 (greedy summary)"),
    ("independent_ndcg@5", "NDCG@5, independent evaluator"),
    ("independent_map@5", "MAP@5, independent evaluator"),
    ("tokens", "summary tokens"),
    ("copied", "copied from prompt"),
]


def _ordered(evaluations: dict) -> list[tuple[str, dict]]:
    return sorted(evaluations.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[-1]))


def differences(metrics: dict) -> dict[str, dict[str, dict]]:
    """{policy: {measure: paired difference vs policy_0}} for every policy after the first."""
    rows = _ordered(metrics["evaluations"])
    if not rows or "per_user" not in rows[0][1]:
        return {}
    base = rows[0][1]["per_user"]
    return {label: {key: paired_difference(base, ev["per_user"], key) for key, _ in MEASURES}
            for label, ev in rows[1:] if "per_user" in ev}


def _value(ev: dict, key: str) -> str:
    value = ev.get(key)
    return "" if value is None else f"{value:.1f}" if key == "tokens" else f"{value:.4f}"


def _delta(d: dict | None, key: str) -> str:
    if d is None:
        return ""
    digits = 1 if key == "tokens" else 4
    return f"{d['mean']:+.{digits}f} [{d['ci95'][0]:+.{digits}f}, {d['ci95'][1]:+.{digits}f}]"


def markdown(metrics: dict) -> str:
    rows = _ordered(metrics["evaluations"])
    shown = [(key, title) for key, title in MEASURES if any(key in ev for _, ev in rows)]
    metric = rows[0][1].get("metric", "the reward") if rows else "the reward"
    users = rows[0][1].get("users", "") if rows else ""
    lines = [
        f"# {metrics['method']} report",
        "",
        f"policy_t = the policy after t alignment iterations (policy_0 = the starting policy), evaluated on {users}",
        f"held-out test users that never appear in preference pairs. Reward = `{metric}` of the user's list reranked",
        "with the summary as the user's knowledge. The independent evaluator is a reranker of the other kind,",
        "another seed, never used as the reward.",
        "",
        "| policy | " + " | ".join(title for _, title in shown) + " | degenerate |",
        "|---|" + "---:|" * (len(shown) + 1),
    ]
    for label, ev in rows:
        lines.append(f"| {label} | " + " | ".join(_value(ev, key) for key, _ in shown) + f" | {ev.get('flagged', '')} |")
    diffs = differences(metrics)
    if diffs:
        lines += ["", "Change against policy_0 on the same users: mean [95% bootstrap CI over users].", "",
                  "| policy | " + " | ".join(title for _, title in shown) + " |", "|---|" + "---:|" * len(shown)]
        for label, d in diffs.items():
            lines.append(f"| {label} | " + " | ".join(_delta(d.get(key), key) for key, _ in shown) + " |")
    if metrics.get("iterations"):
        lines += ["", "| iteration | pairs (DPO) or prompts (online) | tied (skipped) | seconds |", "|---|---:|---:|---:|"]
        for t, it in sorted(metrics["iterations"].items(), key=lambda kv: int(kv[0])):
            pairs = it.get("pairs", {})
            count = pairs.get("pairs", pairs.get("prompts", ""))
            lines.append(f"| {t} | {count} | {pairs.get('skipped_tie', '')} | {it.get('seconds', '')} |")
    lines += ["", "![change against policy_0](improvement.png)", "", "![reward distribution](reward_distribution.png)",
              "", "![training loss](training_loss.png)", ""]
    return "\n".join(lines)


def pooled_markdown(runs: dict[str, dict]) -> str:
    """One table over runs of the same config with different seeds ({run name: metrics}): each run's
    change against its own policy_0, and the change pooled over all runs' test users."""
    policies = sorted(set.intersection(*(set(m["evaluations"]) for m in runs.values())) - {"policy_0"},
                      key=lambda p: int(p.rsplit("_", 1)[-1]))
    shown = [(key, title) for key, title in MEASURES
             if all(key in m["evaluations"][p].get("per_user", {}) for m in runs.values() for p in ["policy_0", *policies])]
    lines = [f"Change against policy_0 over {len(runs)} runs: each run on its own test users, then pooled over",
             "every (run, user): mean [95% bootstrap CI, users resampled within each run].", "",
             "| policy | run | " + " | ".join(title for _, title in shown) + " |", "|---|---|" + "---:|" * len(shown)]
    for policy in policies:
        pairs = [(m["evaluations"]["policy_0"]["per_user"], m["evaluations"][policy]["per_user"]) for m in runs.values()]
        for name, (base, other) in zip(runs, pairs):
            lines.append(f"| {policy} | {name} | " + " | ".join(_delta(paired_difference(base, other, key), key)
                                                               for key, _ in shown) + " |")
        lines.append(f"| {policy} | **pooled** | " + " | ".join(_delta(pooled_difference(pairs, key), key)
                                                                 for key, _ in shown) + " |")
    return "\n".join(lines) + "\n"


def plot(metrics: dict, layout) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _ordered(metrics["evaluations"])
    labels = [label for label, _ in rows]
    metric = rows[0][1].get("metric", "reward") if rows else "reward"

    # 1. did the policy improve? one measure per panel, paired difference with its CI
    diffs = differences(metrics)
    panels = [(k, t) for k, t in MEASURES[:6] if any(d.get(k) for d in diffs.values())]
    if panels:
        cols = min(3, len(panels))
        fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.2 * ((len(panels) + cols - 1) // cols)),
                                 squeeze=False)
        for ax, (key, title) in zip(axes.flat, panels):
            xs = list(diffs)
            means = [diffs[x][key]["mean"] for x in xs]
            err = [[m - diffs[x][key]["ci95"][0] for x, m in zip(xs, means)],
                   [diffs[x][key]["ci95"][1] - m for x, m in zip(xs, means)]]
            ax.errorbar(range(len(xs)), means, yerr=err, fmt="o", capsize=4)
            ax.axhline(0.0, color="grey", lw=0.8, ls="--")
            ax.set_xticks(range(len(xs)), xs)
            ax.set_title(title, fontsize=9)
            unit = metric if key.startswith("reward") else key.removeprefix("independent_").upper()
            ax.set_ylabel(f"Δ {unit} vs policy_0", fontsize=8)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle(f"Change against policy_0 on {rows[0][1].get('users', '')} test users (mean, 95% CI)", fontsize=10)
        save_figure(fig, layout, "improvement")

    # 2. the reward of every sampled summary, per policy
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.boxplot([ev.get("rewards", []) for _, ev in rows], showmeans=True)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set_ylabel(f"reward ({metric}) of each summary")
    ax.set_title("Reward of the sampled summaries per policy (test users)")
    save_figure(fig, layout, "reward_distribution")

    # 3. the DPO loss of each iteration's training steps
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for t in sorted(metrics.get("iterations", {}), key=int):
        log = read_json(layout.align_log(int(t))) or {}
        steps = [e for e in log.get("steps", []) if "loss" in e]
        if steps:
            ax.plot([e["step"] for e in steps], [e["loss"] for e in steps], marker=".", label=f"iteration {t}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (preference loss per pair)")
    ax.set_title("Alignment loss per iteration")
    if ax.lines:
        ax.legend(fontsize=8)
    save_figure(fig, layout, "training_loss")
