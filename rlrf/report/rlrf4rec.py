"""`rlrf report`: report.md with one row per evaluated policy, and its plots, from metrics.json."""

from __future__ import annotations

from pathlib import Path

from rlrf.core.io import atomic_write_text
from rlrf.core.layout import RunLayout

COLUMNS = [
    ("users", "test users", "{:d}"),
    ("mean_reward", "mean reward", "{:.4f}"),
    ("mean_best_reward", "mean best-of-N reward", "{:.4f}"),
    ("first_ndcg@5", "NDCG@5 (1st summary)", "{:.4f}"),
    ("first_map@5", "MAP@5 (1st summary)", "{:.4f}"),
    ("empty", "empty", "{:d}"),
    ("flagged", "degenerate", "{:d}"),
]


def _ordered(evaluations: dict) -> list[tuple[str, dict]]:
    return sorted(evaluations.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[-1]))


def markdown(metrics: dict) -> str:
    rows = _ordered(metrics["evaluations"])
    lines = [
        f"# {metrics['method']} report",
        "",
        "policy_t = the policy after t alignment iterations (policy_0 = the base model), evaluated on",
        "held-out test users that never appear in preference pairs. Reward = the reranker's metric",
        "for the user's list when the summary is the user's knowledge.",
        "",
        "| policy | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for label, ev in rows:
        cells = [fmt.format(ev[key]) if key in ev else "" for key, _, fmt in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if metrics.get("iterations"):
        lines += ["", "| iteration | pairs | tied (skipped) | seconds |", "|---|---|---|---|"]
        for t, it in sorted(metrics["iterations"].items(), key=lambda kv: int(kv[0])):
            pairs = it.get("pairs", {})
            lines.append(f"| {t} | {pairs.get('pairs', '')} | {pairs.get('skipped_tie', '')} | {it.get('seconds', '')} |")
    lines += ["", "![reward distribution](reward_distribution.png)", "", "![NDCG@5](ndcg_per_iteration.png)", ""]
    return "\n".join(lines)


def plot(metrics: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _ordered(metrics["evaluations"])
    labels = [label for label, _ in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.boxplot([ev.get("rewards", []) for _, ev in rows], showmeans=True)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set_ylabel("reward of each summary")
    ax.set_title("Reward distribution per policy (test users)")
    fig.tight_layout()
    fig.savefig(RunLayout(out_dir).figure("reward_distribution"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(rows)), [ev["first_ndcg@5"] for _, ev in rows], marker="o", label="NDCG@5 (1st summary)")
    ax.plot(range(len(rows)), [ev["mean_reward"] for _, ev in rows], marker="s", label="mean reward")
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("test users")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RunLayout(out_dir).figure("ndcg_per_iteration"), dpi=120)
    plt.close(fig)


def write_rlrf4rec_report(run_dir: Path | str, metrics: dict) -> Path:
    run_dir = Path(run_dir)
    plot(metrics, run_dir)
    path = RunLayout(run_dir).report
    atomic_write_text(path, markdown(metrics))
    return path
