"""The `rlrf sprec` report: SFT vs the DPO baselines vs SPRec, iteration by iteration, on held-out users.

SPRec's claim is about the trade-off, so accuracy (HR, NDCG) and bias (DivRatio, ORRatio, MGU, DGU,
mean popularity) sit in one table. Every value is pooled over the training seeds (mean ± sd over
seeds); a second table gives each policy's difference from SFT with a paired bootstrap 95% CI over
users (`metrics["comparison"]`, computed by `rlrf.methods.sprec.comparison.collect`). A CI that
contains 0 is no evidence of a difference. The reference recommenders (popularity, SASRec) are one
evaluation each, the same for every seed. The popularity histogram of each final policy's recommendations is
drawn against that of the users' histories (popularity = training interactions).
"""

from __future__ import annotations

from rlrf.methods.sprec.comparison import REFERENCES
from rlrf.methods.sprec.negatives import SAMPLERS
from rlrf.report import save_figure

ACCURACY = [("hr@1", "HR@1"), ("hr@5", "HR@5"), ("ndcg@5", "NDCG@5"), ("hr@10", "HR@10"), ("ndcg@10", "NDCG@10")]
BIAS = [("div_ratio@1", "DivRatio@1 ↑"), ("or_ratio@1", "ORRatio@1 ↓"), ("div_ratio@10", "DivRatio@10 ↑"),
        ("or_ratio@10", "ORRatio@10 ↓"), ("mgu@10", "MGU@10 ↓"), ("dgu@10", "DGU@10 ↓"),
        ("mean_popularity@10", "mean pop@10")]


def _title(name: str) -> str:
    return SAMPLERS[name].title if name in SAMPLERS else name


def rows(metrics: dict) -> list[tuple[str, dict]]:
    """(label, evaluation) of the first seed in reading order: base, SFT, then each iteration's methods."""
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


def _fmt(value, key: str, signed: bool = False) -> str:
    if value is None:
        return ""
    digits = 1 if key.startswith("mean_popularity") else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pooled_cell(cell: dict | None, key: str, n_seeds: int) -> str:
    if not cell:
        return ""
    text = _fmt(cell["mean"], key)
    return f"{text} ± {_fmt(cell['sd'], key)}" if n_seeds > 1 else text


def _diff_cell(cell: dict | None, key: str) -> str:
    if not cell or "vs_sft" not in cell:
        return ""
    d = cell["vs_sft"]
    lo, hi = d["ci95"]
    mark = " *" if lo > 0 or hi < 0 else ""
    return f"{_fmt(d['mean'], key, True)} [{_fmt(lo, key, True)}, {_fmt(hi, key, True)}]{mark}"


def markdown(metrics: dict) -> str:
    columns = ACCURACY + BIAS
    comparison = metrics.get("comparison")
    table = rows(metrics)
    users = table[0][1].get("users", "") if table else ""
    protocol = metrics.get("protocol", table[0][1].get("protocol", "") if table else "")
    seeds = metrics.get("seeds", [])
    lines = [
        "# SPRec report",
        "",
        f"Next-item generation on {users} held-out users (their last item), evaluation protocol `{protocol}`,",
        f"training seeds {seeds}. The policy writes one title (greedy); the top-K list is the items nearest",
        "that title's embedding (`sprec`: SPRec's own protocol, no history masking; `rlrf`: the matched",
        "title first, history masked). A recommendation with the target's title (a twin item) is a hit.",
        "DivRatio = distinct items / slots; ORRatio = share of the 3 most recommended items; MGU/DGU =",
        "genre drift from the histories; popularity counts training users' interactions only.",
        "",
    ]
    if comparison:
        n = max((len(e["seeds"]) for e in comparison.values()), default=1)
        lines += [f"## Pooled over seeds (mean{' ± sd over seeds' if n > 1 else ''})", "",
                  "| policy | seeds | " + " | ".join(t for _, t in columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        for label, entry in comparison.items():
            fixed = label in REFERENCES.values()  # seed-free: no spread over seeds to show
            lines.append(f"| {label} | {'—' if fixed else len(entry['seeds'])} | "
                         + " | ".join(_pooled_cell(entry["metrics"].get(k), k, 1 if fixed else len(entry["seeds"]))
                                      for k, _ in columns) + " |")
        lines += ["", "## Difference from SFT (paired 95% CI over users, averaged over seeds; * = CI excludes 0)", "",
                  "Percentile bootstrap over users, except DivRatio and ORRatio (counts over the set of lists, which",
                  "a resample with repeated users biases): half-samples of users without repeats, centred on the",
                  "observed difference.", "",
                  "| policy | " + " | ".join(t for _, t in columns) + " |", "|---|" + "---|" * len(columns)]
        for label, entry in comparison.items():
            if label == "SFT":
                continue
            lines.append(f"| {label} | " + " | ".join(_diff_cell(entry["metrics"].get(k), k) for k, _ in columns) + " |")
    else:
        lines += ["| policy | " + " | ".join(t for _, t in columns) + " |", "|---|" + "---|" * len(columns)]
        for label, ev in table:
            lines.append(f"| {label} | " + " | ".join(_fmt(ev.get(k), k) for k, _ in columns) + " |")
    if table:
        lines += ["", "Grounded greedy titles (first seed): " + ", ".join(
            f"{label} {1.0 - ev.get('grounding', {}).get('none', 0.0):.2f}" for label, ev in table if ev.get("grounding"))]
    methods = metrics.get("methods", {})
    runs = metrics.get("seed_runs") or ({str(seeds[0]): methods} if seeds else {"": methods})
    if methods:
        lines += ["", "| seed | method | iteration | pairs | negatives by source | mean pop. target | mean pop. negative | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for seed, arms in runs.items():
            for name, m in arms.items():
                for t, it in sorted(m.get("iterations", {}).items(), key=lambda kv: int(kv[0])):
                    p = it.get("pairs", {})
                    pop = [p.get("mean_target_popularity"), p.get("mean_negative_popularity")]
                    sources = ", ".join(f"{k} {v}" for k, v in sorted(p.get("sources", {}).items()))
                    lines.append(f"| {seed} | {_title(name)} | {t} | {p.get('pairs', '')} | {sources} | "
                                 + " | ".join("" if x is None else f"{x:.1f}" for x in pop) + f" | {it.get('seconds', '')} |")
    sft = metrics.get("sft")
    if sft:
        losses = " → ".join(f"{x:.3f}" for x in (sft.get("first_loss"), sft.get("last_loss")) if x is not None)
        lines += ["", f"SFT (first seed): {sft.get('examples')} sliding-window examples, {sft.get('steps')} steps, "
                      f"loss {losses}, {sft.get('seconds')} s."]
        if sft.get("validation"):  # sprec.sft_until_better: why SFT stopped when it did
            v = sft["validation"]
            hrs = ", ".join(f"{x:.4f}" for x in v["per_epoch"])
            lines += [f"SFT stopped after {sft['epochs']} epoch(s) ({sft['stopped']}): {sft['reason']}. "
                      f"{v['metric']} on {v['users']} {v['split']} users per epoch: {hrs}; base policy {v['base']:.4f}."]
    lines += ["", "![popularity](sprec_popularity.png)", "", "![per iteration](sprec_iterations.png)", ""]
    return "\n".join(lines)


def plot(metrics: dict, layout) -> None:
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
    ax.set_xlabel("item popularity (training interactions)")
    ax.set_ylabel("share of items")
    ax.set_title("Popularity of recommended items (top-10) vs histories (first seed)")
    ax.legend(fontsize=7)
    save_figure(fig, layout, "sprec_popularity")

    comparison = metrics.get("comparison", {})
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.5))
    for ax, (key, title) in zip(axes, [("ndcg@10", "NDCG@10"), ("div_ratio@10", "DivRatio@10")]):
        for name, m in methods.items():
            xs, ys, err = [], [], []
            n_iter = len(m["evaluations"])
            for t in range(n_iter):
                label = "SFT" if t == 0 else f"{_title(name)} iter {t}"
                cell = comparison.get(label, {}).get("metrics", {}).get(key)
                if cell is not None:
                    xs.append(t), ys.append(cell["mean"]), err.append(cell["sd"])
                elif f"policy_{t}" in m["evaluations"]:
                    xs.append(t), ys.append(m["evaluations"][f"policy_{t}"].get(key) or 0.0), err.append(0.0)
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=_title(name))
        ax.set_xticks(range(max((len(m["evaluations"]) for m in methods.values()), default=1)))
        ax.set_xlabel("iteration (0 = SFT)")
        ax.set_ylabel(f"{title} (mean ± sd over seeds)")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.suptitle("SPRec vs DPO baselines per iteration")
    save_figure(fig, layout, "sprec_iterations")
