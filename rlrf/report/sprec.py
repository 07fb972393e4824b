"""The `rlrf sprec` report: SFT vs the DPO baselines vs SPRec, iteration by iteration, on test users.

SPRec's claim is about the trade-off, so accuracy (HR, NDCG) and bias (DivRatio, ORRatio, MGU, DGU,
mean popularity) sit in one table, and the popularity histogram of each final policy's
recommendations is drawn against that of the users' histories.
"""

from __future__ import annotations

from pathlib import Path

from rlrf.core.io import atomic_write_text
from rlrf.core.layout import RunLayout
from rlrf.methods.sprec import SAMPLERS

ACCURACY = [("hr@1", "HR@1"), ("hr@5", "HR@5"), ("ndcg@5", "NDCG@5"), ("hr@10", "HR@10"), ("ndcg@10", "NDCG@10")]
BIAS = [("div_ratio@1", "DivRatio@1 ↑"), ("or_ratio@1", "ORRatio@1 ↓"), ("div_ratio@10", "DivRatio@10 ↑"), ("or_ratio@10", "ORRatio@10 ↓"), ("mgu@10", "MGU@10 ↓"),
        ("dgu@10", "DGU@10 ↓"), ("mean_popularity@10", "mean pop@10")]


def _title(name: str) -> str:
    return SAMPLERS[name].title if name in SAMPLERS else name


def rows(metrics: dict) -> list[tuple[str, dict]]:
    """(label, evaluation) in reading order: base, SFT, then each iteration's methods side by side."""
    out = []
    if "base" in metrics["evaluations"]:
        out.append(("base (no SFT)", metrics["evaluations"]["base"]))
    methods = metrics.get("methods", {})
    if methods:
        first = next(iter(methods.values()))
        if "policy_0" in first["evaluations"]:
            out.append(("SFT", first["evaluations"]["policy_0"]))
        iterations = max(len(m["evaluations"]) for m in methods.values())
        for t in range(1, iterations):
            for name, m in methods.items():
                if f"policy_{t}" in m["evaluations"]:
                    out.append((f"{_title(name)} iter {t}", m["evaluations"][f"policy_{t}"]))
    return out


def _cell(ev: dict, key: str) -> str:
    value = ev.get(key)
    return "" if value is None else f"{value:.4f}" if key != "mean_popularity@10" else f"{value:.1f}"


def markdown(metrics: dict) -> str:
    table = rows(metrics)
    columns = ACCURACY + BIAS
    users = table[0][1].get("users", "") if table else ""
    lines = [
        "# SPRec report",
        "",
        f"Next-item generation on {users} held-out test users: the policy writes one title (greedy), the",
        "top-K list is that title's catalogue item followed by the items nearest its embedding",
        "(`sprec.topk`). DivRatio = distinct items / slots; ORRatio = share of the 3 most",
        "recommended items; MGU/DGU = genre drift from the histories. @1 is the generated title itself.",
        "",
        "| policy | " + " | ".join(title for _, title in columns) + " | grounded top-1 |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for label, ev in table:
        grounding = ev.get("grounding", {})
        grounded = 1.0 - grounding.get("none", 0.0) if grounding else None
        lines.append(f"| {label} | " + " | ".join(_cell(ev, key) for key, _ in columns)
                     + f" | {'' if grounded is None else f'{grounded:.2f}'} |")
    methods = metrics.get("methods", {})
    if methods:
        lines += ["", "| method | iteration | pairs | without negative | mean pop. target | mean pop. negative | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for name, m in methods.items():
            for t, it in sorted(m.get("iterations", {}).items(), key=lambda kv: int(kv[0])):
                p = it.get("pairs", {})
                pop = [p.get("mean_target_popularity"), p.get("mean_negative_popularity")]
                lines.append(f"| {_title(name)} | {t} | {p.get('pairs', '')} | {p.get('without_negative', '')} | "
                             + " | ".join("" if x is None else f"{x:.1f}" for x in pop) + f" | {it.get('seconds', '')} |")
    sft = metrics.get("sft")
    if sft:
        losses = " → ".join(f"{x:.3f}" for x in (sft.get("first_loss"), sft.get("last_loss")) if x is not None)
        lines += ["", f"SFT: {sft.get('examples')} examples, {sft.get('steps')} steps, loss {losses}, {sft.get('seconds')} s."]
    lines += ["", "![popularity](sprec_popularity.png)", "", "![per iteration](sprec_iterations.png)", ""]
    return "\n".join(lines)


def plot(metrics: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table = rows(metrics)
    finals = [(label, ev) for label, ev in table if label in ("SFT", "base (no SFT)")]
    methods = metrics.get("methods", {})
    for name, m in methods.items():
        last = max((int(k.split("_")[1]) for k in m["evaluations"]), default=0)
        if last > 0:
            finals.append((f"{_title(name)} iter {last}", m["evaluations"][f"policy_{last}"]))
    with_hist = [(label, ev["popularity_histogram"]) for label, ev in finals if "popularity_histogram" in ev]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    if with_hist:
        edges = with_hist[0][1]["edges"]
        centers = np.arange(len(edges) - 1)
        width = 0.8 / (len(with_hist) + 1)
        ax.bar(centers, with_hist[0][1]["history"], width, label="histories", color="grey")
        for j, (label, h) in enumerate(with_hist, start=1):
            ax.bar(centers + j * width, h["recommended"], width, label=label)
        ax.set_xticks(centers + 0.4, [f"{int(a)}–{int(b)}" for a, b in zip(edges[:-1], edges[1:])], rotation=45, fontsize=7)
    ax.set_xlabel("item popularity (interactions)")
    ax.set_ylabel("share of items")
    ax.set_title("Popularity of recommended items (top-10) vs histories")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RunLayout(out_dir).figure("sprec_popularity"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.3))
    for ax, (key, title) in zip(axes, [("ndcg@10", "NDCG@10"), ("div_ratio@10", "DivRatio@10")]):
        for name, m in methods.items():
            evs = sorted(m["evaluations"].items(), key=lambda kv: int(kv[0].split("_")[1]))
            ax.plot([int(k.split("_")[1]) for k, _ in evs], [ev.get(key) or 0.0 for _, ev in evs], marker="o",
                    label=_title(name))
        ax.set_xticks(range(max((len(m["evaluations"]) for m in methods.values()), default=1)))
        ax.set_xlabel("iteration (0 = SFT)")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RunLayout(out_dir).figure("sprec_iterations"), dpi=120)
    plt.close(fig)


def write_sprec_report(run_dir: Path | str, metrics: dict) -> Path:
    run_dir = Path(run_dir)
    plot(metrics, run_dir)
    path = RunLayout(run_dir).report
    atomic_write_text(path, markdown(metrics))
    return path
