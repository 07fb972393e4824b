"""The result of `rlrf rank`: every arm and baseline in one table (`collect` → metrics.json,
`report_table` → report.md), each row against the same seed's SFT with paired bootstrap CIs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlrf.core.io import read_json
from rlrf.core.layout import RunLayout
from rlrf.methods.rank_arms import ARMS
from rlrf.methods.rank_context import RankContext, seed_root
from rlrf.methods.rank_evaluation import BASELINES


def chosen_logps(run_dir: Path) -> list[dict]:
    """[{"step", "logps/chosen"}] over the arm's training (trl's log_history, every logging step)."""
    log = read_json(RunLayout(run_dir).align_log(0)) or {}
    return [{"step": s.get("step"), "logps/chosen": s["logps/chosen"]} for s in log.get("steps", []) if "logps/chosen" in s]


def collect(cfg, ctx: RankContext, baselines: dict, seconds: dict, runs: dict[int, dict]) -> dict:
    """Each row's HR@1 / ValidRatio / out-of-list (mean and sd over seeds), its difference from the
    same seed's SFT with a paired bootstrap 95% CI pooled over seeds, and wall time."""
    from rlrf.evaluation.stats import mean_sd, pooled_difference

    seeds = sorted(runs)
    sft = {s: runs[s]["sft"]["evaluations"]["policy_0"] for s in seeds}
    rows: dict[str, dict] = {}

    def row(label: str, evals: dict[int, dict], wall: list[float], extra: dict | None = None) -> None:
        cell = {"seeds": sorted(evals), "users": next(iter(evals.values()))["users"], "wall_seconds": wall}
        for key, unit in (("hr@1", "hr@1"), ("valid_ratio", "valid"), ("out_of_list", "outside")):
            mean, sd = mean_sd([evals[s][key] for s in sorted(evals)])
            cell[key] = {"mean": mean, "sd": sd, "per_seed": [evals[s][key] for s in sorted(evals)]}
            if label != "SFT":
                cell[key]["vs_sft"] = pooled_difference([(sft[s]["per_user"], evals[s]["per_user"]) for s in evals],
                                                        unit, seed=cfg.seed, n_boot=cfg.rank.bootstrap)
        rows[label] = {**cell, **(extra or {})}

    for name, ev in baselines.items():
        row(BASELINES[name], {s: ev for s in seeds}, [seconds[name]])
    for arm in ["sft"] + [a for a in cfg.rank.arms if a != "sft"]:
        title = f"trl {cfg.rank.trl_loss}" if arm == "trl" else ARMS[arm].title
        label = "policy_0" if arm == "sft" else "policy_1"
        evals = {s: runs[s][arm]["evaluations"][label] for s in seeds if label in runs[s][arm]["evaluations"]}
        if not evals:
            continue
        extra = {"arm": arm}
        if arm != "sft":
            extra["pairs"] = {s: runs[s][arm]["iterations"]["0"]["pairs"] for s in seeds}
            extra["chosen_logps"] = {s: chosen_logps(seed_root(cfg, s).arm(arm).root) for s in seeds}
        row(title, evals, [runs[s][arm]["wall_seconds"] for s in seeds], extra)
    return {"method": "rank", "seeds": seeds, "candidates": cfg.rank.candidates, "split": "rlrf user split",
            "examples": {"sft": len(ctx.sft_examples), "pairs": len(ctx.pair_examples), "eval": len(ctx.eval_examples)},
            "steps": cfg.rank.steps, "rows": rows}


def _fmt(cell: dict) -> str:
    text = f"{cell['mean']:.4f}" + (f" ± {cell['sd']:.4f}" if len(cell["per_seed"]) > 1 else "")
    diff = cell.get("vs_sft")
    if diff:
        text += f" ({diff['mean']:+.4f} [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}])"
    return text


def report_table(cfg, metrics: dict) -> str:
    """report.md: the table (HR@1 and ValidRatio with differences from SFT and their 95% CIs), the
    out-of-list share, wall time, RosePO's ε, and the chosen answer's log-prob over training."""
    lines = [f"# Candidate ranking ({metrics['candidates']} candidates): {len(metrics['seeds'])} seed(s) "
             f"{metrics['seeds']}", "",
             f"Examples: SFT {metrics['examples']['sft']}, preference {metrics['examples']['pairs']} "
             f"({metrics['steps']} steps per arm), held-out {metrics['examples']['eval']} users. "
             "Differences from SFT: paired bootstrap 95% CI over users, pooled over seeds.", "",
             "| row | HR@1 (vs SFT [95% CI]) | ValidRatio (vs SFT [95% CI]) | out of list | wall s |",
             "|---|---|---|---|---|"]
    for label, r in metrics["rows"].items():
        wall = np.mean(r["wall_seconds"]) if r["wall_seconds"] else float("nan")
        lines.append(f"| {label} | {_fmt(r['hr@1'])} | {_fmt(r['valid_ratio'])} | {r['out_of_list']['mean']:.4f} "
                     f"| {wall:.0f} |")
    eps_rows = [(label, s, p["epsilon"]) for label, r in metrics["rows"].items()
                for s, p in (r.get("pairs") or {}).items() if "epsilon" in p]
    if eps_rows:
        lines += ["", "RosePO's personalised ε (SASRec oracle):", "", "| arm | seed | mean | min | median | max | at cap |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {label} | {s} | {e['mean']:.4f} | {e['min']:.4f} | {e['quantiles']['0.5']:.4f} | {e['max']:.4f} "
                  f"| {e['at_cap']:.3f} |" for label, s, e in eps_rows]
    curves = [(label, s, c) for label, r in metrics["rows"].items() if r.get("arm") in ("dpo", "sdpo")
              for s, c in r["chosen_logps"].items() if c]
    if curves:
        lines += ["", "Chosen answer's log-probability over training (trl's logps/chosen, first → last logged step):", ""]
        lines += [f"- {label}, seed {s}: {c[0]['logps/chosen']:.3f} → {c[-1]['logps/chosen']:.3f} "
                  f"({len(c)} logged steps; min {min(x['logps/chosen'] for x in c):.3f})" for label, s, c in curves]
    return "\n".join(lines) + "\n"
