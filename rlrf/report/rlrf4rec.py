"""The RLRF4Rec report: did the policy improve on held-out users, by how much, and is it real?

Every policy is evaluated on the same test users, so each number after policy_0 is shown as a
paired difference with its 95% bootstrap CI over users. The reward model's numbers sit beside the
independent evaluator's (a reranker the loop never optimised), and the summary's length and the
share of it copied from its prompt beside both, so a policy that games the reward shows; so do the
shares of greedy summaries that end on their own and that repeat themselves (rlrf/evaluation/text.py). Beside the
tables: how the run was made (`rlrf.report.details`), three test users' greedy summaries before and
after, every user's values in per_user.csv, and a plot of each user's own change.
"""

from __future__ import annotations

import csv
import io

from rlrf.core.io import atomic_write_text, read_json, read_jsonl
from rlrf.core.records import ResponseRecord
from rlrf.evaluation.stats import paired_difference, pooled_difference, user_differences
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
    ("ended", "ends on its own (greedy)"),
    ("repeated", "repeats itself (greedy)"),
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


def headline(metrics: dict) -> str | None:
    """`rlrf run`'s closing line: the last policy against policy_0 on the same test users, under the
    reward model and under the independent evaluator (None before two policies are evaluated)."""
    diffs = differences(metrics)
    if not diffs:
        return None
    label, d = list(diffs.items())[-1]
    parts = [f"{title} {_delta(d[key], key)}" for key, title in
             (("reward_mean", "mean reward"), ("independent_ndcg@5", "independent NDCG@5"),
              ("independent_map@5", "independent MAP@5")) if d.get(key)]
    users = next((d[key]["users"] for key in d if d[key]), 0)
    return f"result: {label} vs policy_0 on {users} test users: " + ", ".join(parts)


def _value(ev: dict, key: str) -> str:
    value = ev.get(key)
    return "" if value is None else f"{value:.1f}" if key == "tokens" else f"{value:.4f}"


def _delta(d: dict | None, key: str, base: float | None = None) -> str:
    """`+0.0123 [CI]`, with the change relative to policy_0's mean when `base` is given and not 0."""
    if d is None:
        return ""
    digits = 1 if key == "tokens" else 4
    relative = f" ({d['mean'] / base:+.1%})" if base else ""
    return f"{d['mean']:+.{digits}f}{relative} [{d['ci95'][0]:+.{digits}f}, {d['ci95'][1]:+.{digits}f}]"


def _relative_to(base: dict, key: str) -> float | None:
    """policy_0's mean, where a change relative to it means something: a positive mean of a measure
    that is never negative (not the logit margin, which may sit at 0)."""
    value = base.get(key)
    if value is None or value <= 0 or (key.startswith("reward") and base.get("metric") == "margin"):
        return None
    return value


def markdown(metrics: dict, layout=None) -> str:
    """report.md; with the run's `layout`, also the run details and the example summaries."""
    from rlrf.report.details import run_details

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
        base = rows[0][1]
        lines += ["", "Change against policy_0 on the same users: mean (relative to policy_0's mean) "
                  "[95% bootstrap CI over users].", "",
                  "| policy | " + " | ".join(title for _, title in shown) + " |", "|---|" + "---:|" * len(shown)]
        for label, d in diffs.items():
            lines.append(f"| {label} | " + " | ".join(_delta(d.get(key), key, _relative_to(base, key)) for key, _ in shown)
                         + " |")
    if metrics.get("iterations"):
        lines += ["", "| iteration | pairs (DPO) or prompts (online) | tied (skipped) | seconds |", "|---|---:|---:|---:|"]
        for t, it in sorted(metrics["iterations"].items(), key=lambda kv: int(kv[0])):
            pairs = it.get("pairs", {})
            count = pairs.get("pairs", pairs.get("prompts", ""))
            lines.append(f"| {t} | {count} | {pairs.get('skipped_tie', '')} | {it.get('seconds', '')} |")
    if layout is not None:
        lines += ["", *greedy_examples(metrics, layout)][:-1]
        lines += ["", f"Every user's values of every policy: `{layout.per_user_table.name}` (one row per policy and user)."]
    lines += ["", "![change against policy_0](improvement.png)", "",
              "![each user's change against policy_0](per_user_change.png)",
              "", "![training loss](training_loss.png)", ""]
    if layout is not None:
        lines[2:2] = run_details(metrics, layout)
    return "\n".join(lines)


def greedy_examples(metrics: dict, layout, n: int = 3) -> list[str]:
    """The greedy summaries of policy_0 and the last policy for the first `n` test users (by id, not
    picked by result), with each one's NDCG@5: what the numbers above are made of."""
    rows = _ordered(metrics["evaluations"])
    if len(rows) < 2:
        return []
    (first, before), (last, after) = rows[0], rows[-1]
    texts = {}
    for label in (first, last):
        path = layout.evaluation(label).greedy.responses(0)
        records = map(ResponseRecord.from_dict, read_jsonl(path)) if path.exists() else []
        texts[label] = {r.user: " ".join(r.text.split()) for r in records}
    ndcg = {label: dict(zip(ev.get("per_user", {}).get("users", []), ev.get("per_user", {}).get("ndcg@5", [])))
            for label, ev in ((first, before), (last, after))}
    users = [u for u in sorted(texts[first]) if u in texts[last]][:n]
    if not users:
        return []
    lines = [f"## Greedy summaries of {first} and {last} (the first {len(users)} test users by id)", ""]
    for user in users:
        lines.append(f"**user {user}**")
        lines.append("")
        for label in (first, last):
            score = ndcg[label].get(user)
            lines.append(f"- {label}" + (f" (NDCG@5 {score:.4f})" if score is not None else "")
                         + f": {texts[label][user] or '(empty)'}")
        lines.append("")
    return lines


def write_per_user_table(metrics: dict, layout) -> None:
    """per_user.csv: one row per (policy, test user) with every per-user value the loop recorded."""
    rows = [(label, ev["per_user"]) for label, ev in _ordered(metrics["evaluations"]) if "per_user" in ev]
    if not rows:
        return
    keys = [key for key, _ in MEASURES if any(key in per_user for _, per_user in rows)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["policy", "user", *keys])
    for label, per_user in rows:
        for i, user in enumerate(per_user["users"]):
            writer.writerow([label, user, *(per_user[key][i] if key in per_user else "" for key in keys)])
    atomic_write_text(layout.per_user_table, out.getvalue())


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
    metric = rows[0][1].get("metric", "reward") if rows else "reward"

    # 1. did the policy improve? one measure per panel, paired difference with its CI
    diffs = differences(metrics)
    panels = [(k, t) for k, t in MEASURES if any(d.get(k) for d in diffs.values())]
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
            unit = metric if key.startswith("reward") else key if key in ("tokens", "copied", "ended", "repeated") else \
                key.removeprefix("independent_").upper()
            ax.set_ylabel(f"Δ {unit} vs policy_0", fontsize=8)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle(f"Change against policy_0 on {rows[0][1].get('users', '')} test users (mean, 95% CI)", fontsize=10)
        save_figure(fig, layout, "improvement")

    # 2. each user's own change: policy_0's value against the later policy's, one point per user
    per_user_change(metrics, layout)

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


def per_user_change(metrics: dict, layout) -> None:
    """per_user_change.png: for the reward and the reranking metrics, every test user as a point
    (policy_0's value, the later policy's value); above the diagonal the user gained. Unpaired box
    plots of the two policies look alike even when most users moved one way; the pairs do not."""
    import matplotlib.pyplot as plt

    rows = _ordered(metrics["evaluations"])
    if len(rows) < 2 or "per_user" not in rows[0][1]:
        return
    base = rows[0][1]["per_user"]
    keys = [(k, t) for k, t in MEASURES if k in ("reward_mean", "ndcg@5", "independent_ndcg@5") and k in base]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], keys):
        values = []
        for i, (label, ev) in enumerate(rows[1:]):
            other = ev.get("per_user", {})
            if key not in other:
                continue
            before = dict(zip(base["users"], base[key]))
            users = sorted(set(before) & set(other["users"]))
            after = dict(zip(other["users"], other[key]))
            diff = user_differences(base, other, key)
            ax.scatter([before[u] for u in users], [after[u] for u in users], s=14, alpha=0.7, color=f"C{i}",
                       label=f"{label}: {int((diff > 1e-12).sum())} up, {int((diff < -1e-12).sum())} down")
            values += [before[u] for u in users] + [after[u] for u in users]
        if values:
            low, high = min(values), max(values)
            ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
            ax.legend(fontsize=7)
        ax.set_xlabel(f"{rows[0][0]}", fontsize=8)
        ax.set_ylabel("later policy", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle("Each test user's value before and after (above the diagonal: better)", fontsize=10)
    save_figure(fig, layout, "per_user_change")
