"""The rerank experiment's results: results.json from the evaluated cells, and as people read it: one
markdown table per reranker (table.md), the same tables in the terminal, and grouped bars of NDCG@5 /
MAP@5 per row (rerank.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlrf.evaluation.stats import bootstrap_ci, mean_sd

KS = (1, 3, 5, 7)
METRICS = tuple(f"ndcg@{k}" for k in KS) + tuple(f"map@{k}" for k in KS)
SPLITS = ("test",)  # evaluated; validation users only select (early stopping), see rlrf/experiments/rerank.py


def aggregate(reward_cfg, seed: int, ctx, rows, seeds, cells, data, protocol, iterations) -> dict:
    """results.json from the cells: per reranker and row, mean ± sd over seeds of every metric on the
    test lists, each knowledge row paired with its references (`_paired`), and the reference orders."""
    from rlrf.reward import training as reward

    k = reward_cfg.k
    models = {}
    for kind in reward_cfg.models:
        out_rows = {}
        for row in rows:
            per_seed = [cells[f"{kind}|{row.key}|{s}"] for s in seeds]
            entry = {"label": row.label, "knowledge": row.knowledge, "policy": row.policy}
            valid = [c.get("selected_valid_map@5") for c in per_seed]
            if all(v is not None for v in valid):
                entry["selected_valid_map@5"] = {"mean": mean_sd(valid)[0], "sd": mean_sd(valid)[1], "per_seed": valid}
            for split in SPLITS:
                stats = {m: mean_sd([c[split]["metrics"][m] for c in per_seed]) for m in METRICS}
                entry[split] = {"mean": {m: v[0] for m, v in stats.items()}, "sd": {m: v[1] for m, v in stats.items()},
                                "per_seed": [{"seed": s, **c[split]["metrics"]} for s, c in zip(seeds, per_seed)]}
            if row.policy is not None:  # how far the policy's summaries move the ranking
                refs = ("self", "none", "base") + (("policy_base",) if row.iteration is not None else ())
                entry["vs"] = {ref: _paired(per_seed, [cells[f"{kind}|{ref}|{s}"] for s in seeds], k, seed)
                               for ref in refs}
            if row.key in ("self", "none"):
                entry["vs"] = {"base": _paired(per_seed, [cells[f"{kind}|base|{s}"] for s in seeds], k, seed)}
            if row.key == "self":
                entry["vs"]["none"] = _paired(per_seed, [cells[f"{kind}|none|{s}"] for s in seeds], k, seed)
            out_rows[row.key] = entry
        models[kind] = out_rows
    test = data["test"]
    return {
        "dataset": ctx.ds.name, "protocol": protocol, "encoder": ctx.encoder.key, "seeds": seeds,
        "iterations": iterations, "rows": [{"key": r.key, "label": r.label} for r in rows],
        "metrics": list(METRICS), "n_lists": {s: len(data[s]) for s in SPLITS},
        "item_knowledge": reward_cfg.item_knowledge, "k": k,
        "sd": "sample sd over seeds (ddof=1; 0 for one seed)", "map_denominator": "min(K, #relevant)",
        "selection": ("rerankers as trained by `rlrf reward train` (self texts, epochs selected on valid MAP@5); "
                      "policy rows swap the test users' knowledge for the policy's summaries"
                      if protocol == "swap" else
                      "policy rows: +knowledge reranker retrained per policy and seed on the policy's summaries "
                      "for every user, epochs selected on valid MAP@5 with those summaries"),
        "models": models,
        "random_order": reward.random_reference(test.labels, seed=seed),
        "item_prior": reward.item_prior_reference(ctx, test),
        "vs_note": f"mean per-list difference of NDCG@{k} / MAP@{k}, row − ref, averaged over seeds; 95% percentile "
                   "bootstrap CI over lists; share of (list, seed) values that changed at all",
    }


def _paired(cells_a: list, cells_b: list, k: int, seed: int = 0, n_boot: int = 2000) -> dict:
    """Row a − row b on the same test lists: mean difference (per list, averaged over seeds) with a
    95% percentile-bootstrap CI over lists, and the share of (list, seed) values that changed at all."""
    out = {}
    for m in (f"ndcg@{k}", f"map@{k}"):
        a = np.array([c["test"][f"per_list_{m}"] for c in cells_a])  # [seeds, lists]
        b = np.array([c["test"][f"per_list_{m}"] for c in cells_b])
        diff = a - b
        per_list = diff.mean(0)
        mean, ci = bootstrap_ci(per_list, seed=seed, n_boot=n_boot)
        out[m] = {"mean_diff": mean, "ci95": ci,
                  "changed_share": float((np.abs(diff) > 1e-9).mean()),
                  "lists_better": int((per_list > 1e-12).sum()), "lists_worse": int((per_list < -1e-12).sum())}
    return out


def _fmt(entry: dict, m: str, n_seeds: int) -> str:
    mean, sd = entry["test"]["mean"][m], entry["test"]["sd"][m]
    return f"{mean:.4f}" + (f" ± {sd:.4f}" if n_seeds > 1 else "")


def markdown_tables(out: dict) -> str:
    n = len(out["seeds"])
    head = "| row | " + " | ".join(m.upper() for m in out["metrics"]) + " |"
    rule = "|---|" + "---:|" * len(out["metrics"])
    spread = f"mean ± sd over {n} seeds" if n > 1 else f"seed {out['seeds'][0]}"
    lines = [f"# Reranking with policy knowledge ({out['dataset']}, protocol {out['protocol']})", "",
             f"Test users ({out['n_lists']['test']} lists), {spread}. Selection: {out['selection']}.", ""]
    for kind, rows in out["models"].items():
        lines += [f"## {kind.upper()}", "", head, rule]
        for entry in rows.values():
            lines.append(f"| {entry['label']} | " + " | ".join(_fmt(entry, m, n) for m in out["metrics"]) + " |")
        for name, ref in (("item prior (no model)", out["item_prior"]), ("random order", out["random_order"])):
            lines.append(f"| {name} | " + " | ".join(f"{ref[m]:.4f}" for m in out["metrics"]) + " |")
        k = out["k"]
        names = {"self": "self text", "none": "no user text", "base": "base", "policy_base": "base policy"}
        paired = []
        for e in rows.values():
            for ref, v in e.get("vs", {}).items():
                if e["policy"] is not None and ref == "base":
                    continue  # in results.json; the table above shows it
                d = v[f"map@{k}"]
                paired.append(f"{e['label']} − {names[ref]}: MAP@{k} {d['mean_diff']:+.4f} "
                              f"(95% CI {d['ci95'][0]:+.4f} … {d['ci95'][1]:+.4f}; "
                              f"{d['changed_share']:.0%} of (list, seed) values changed)")
        if paired:
            lines += ["", f"Paired over the same test lists ({out['vs_note']}):", "", *[f"- {p}" for p in paired]]
        lines.append("")
    return "\n".join(lines)


def rich_tables(out: dict) -> list:
    from rich.table import Table

    n = len(out["seeds"])
    tables = []
    for kind, rows in out["models"].items():
        t = Table(title=f"{kind.upper()} — {out['dataset']} test users ({out['n_lists']['test']} lists), "
                        f"protocol {out['protocol']}, {'mean ± sd over ' + str(n) + ' seeds' if n > 1 else 'one seed'}")
        t.add_column("row")
        for m in out["metrics"]:
            t.add_column(m.upper(), justify="right")
        for entry in rows.values():
            t.add_row(entry["label"], *[_fmt(entry, m, n) for m in out["metrics"]])
        for name, ref in (("item prior (no model)", out["item_prior"]), ("random order", out["random_order"])):
            t.add_row(name, *[f"{ref[m]:.4f}" for m in out["metrics"]], style="dim")
        tables.append(t)
    return tables


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(out["models"])
    n_rows = max(len(out["models"][kind]) for kind in kinds)
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(4.5, 0.9 * n_rows + 1) * len(kinds), 3.8), squeeze=False,
                             sharey=True)
    shown = ("ndcg@5", "map@5")
    lows = []
    for ax, kind in zip(axes[0], kinds):
        rows = list(out["models"][kind].values())
        x = np.arange(len(rows))
        width = 0.38
        for j, m in enumerate(shown):
            means = [r["test"]["mean"][m] for r in rows]
            sds = [r["test"]["sd"][m] for r in rows]
            lows.append(min(means) - max(sds))
            ax.bar(x + (j - 0.5) * width, means, width, yerr=sds, capsize=3, label=m.upper())
        for j, m in enumerate(shown):
            ax.axhline(out["random_order"][m], color=f"C{j}", linestyle=":", linewidth=1)
        ax.set_xticks(x, [_short(r["label"]) for r in rows], fontsize=7)
        ax.set_title(f"{kind.upper()} ({out['protocol']})")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"test users, mean ± sd over {len(out['seeds'])} seeds")
    axes[0][0].set_ylim(max(0.0, min(lows + [out["random_order"][m] for m in shown]) - 0.05), None)
    axes[0][-1].legend(fontsize=7, loc="lower right", title="dotted: random order", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(label: str) -> str:
    """'+knowledge (iter 0 policy)' -> '+k iter 0\npolicy' (two short tick lines)."""
    if "(" not in label:
        return label
    words = label[label.index("(") + 1: label.rindex(")")].split()
    cut = max(1, len(words) - 1)
    return "+k " + " ".join(words[:cut]) + "\n" + " ".join(words[cut:])
