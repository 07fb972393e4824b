"""`rlrf experiment rerank`: does a policy's user knowledge make the rerankers better? (issue 7, part 2)

For each reranker of `reward.models` (DLCM, PRM), the rows

- ``base``                         — no knowledge;
- ``+knowledge (self text)``       — the run's +knowledge model with the templated "self" user text
                                     (the reference: what the reward model was trained with);
- ``+knowledge (no user text)``    — the same model with no user summary (its learned "missing" user
                                     vector; item knowledge kept): what a summary adds at all;
- ``+knowledge (base policy)``     — user knowledge = the base policy's summary;
- ``+knowledge (iter t policy)``   — user knowledge = the summary of the policy aligned in iteration t
                                     (``iter_<t>/adapter``; the README's ``policy_<t+1>``),

and the columns NDCG@K and MAP@K (K = 1, 3, 5, 7) on TEST users, mean ± sd over seeds. Summaries
are one greedy text per user and policy, from the store shared with `rlrf export`
(`rlrf.generation.knowledge`). Item knowledge is the config's (`reward.item_knowledge`) in every row.

Two protocols (nothing is ever chosen on test users):

- ``swap`` (default on CPU): the rerankers as trained by `rlrf reward train` (+knowledge models trained
  on "self" texts, epochs selected on VALID users); for a policy row, the test users' knowledge is
  replaced by that policy's summaries. It answers "does the trained reranker do better when it reads
  this policy's summaries", not "is a reranker trained on them better". Nothing is selected with the
  policy's summaries in this protocol, so only the TEST users' summaries are generated (95 on
  ml-100k instead of 943: minutes, not an hour, per policy on 2 CPU cores).
- ``retrain`` (default on CUDA): every user's knowledge comes from the policy (all users' summaries
  generated); for each policy and seed a +knowledge model is trained on the train users with those
  summaries and early-stopped on the valid users' MAP@5 with those summaries. The base and self rows
  are the run's models, as in ``swap``.

Writes ``<run_dir>/experiments/rerank/`` (swap) or ``<run_dir>/experiments/rerank_retrain/``:
``results.json`` (everything, per seed), ``table.md`` (one table per reranker), ``rerank.png``
(grouped bars of NDCG@5 / MAP@5 per row, error bars = sd over seeds), ``cells.json`` (the per-cell
cache: a rerun recomputes only cells whose model file or knowledge texts changed). Missing reward
models of the run (a seed not trained yet) are trained first, one (model, seed) at a time, and
saved where `rlrf reward train` puts them; existing ones are never retrained. Retrained models go
to ``rerank_retrain/models/<policy>/<model>_knowledge/seed_<s>.pt``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_json, read_json
from rlrf.core.layout import RunLayout
from rlrf.core.progress import progress_bar
from rlrf.evaluation.stats import bootstrap_ci, mean_sd

PROTOCOLS = ("swap", "retrain")
KS = (1, 3, 5, 7)
METRICS = tuple(f"ndcg@{k}" for k in KS) + tuple(f"map@{k}" for k in KS)
SPLITS = ("test",)  # evaluated; validation users only select (early stopping), see the module docstring


@dataclass(frozen=True)
class Row:
    key: str  # "base", "self", "none", "policy_base", "policy_iter_<t>"
    label: str
    knowledge: bool
    policy: str | None = None  # policy tag ("base", "iter_<t>") for policy rows
    iteration: int | None = None


def experiment_dir(run_dir: Path, protocol: str) -> Path:
    return RunLayout(run_dir).experiment("rerank" if protocol == "swap" else f"rerank_{protocol}")


def experiment_rows(iterations: list[int]) -> list[Row]:
    rows = [Row("base", "base", False), Row("self", "+knowledge (self text)", True),
            Row("none", "+knowledge (no user text)", True),
            Row("policy_base", "+knowledge (base policy)", True, "base", None)]
    rows += [Row(f"policy_iter_{t}", f"+knowledge (iter {t} policy)", True, f"iter_{t}", t) for t in iterations]
    return rows


def default_protocol() -> str:
    return "retrain" if torch.cuda.is_available() else "swap"


# ---------------------------------------------------------------------------------------------
# the experiment


def run_rerank_experiment(cfg, iterations: list[int] | None = None, seeds: int | None = None,
                          show_progress: bool = True, protocol: str | None = None, console=None) -> dict:
    """Run (or resume) the offline reranking experiment; print one table per reranker; return results.json's dict.

    iterations: aligned iterations to include (default: every `iter_<t>` with a complete adapter);
    seeds: reranker seeds (default `reward.seeds`; cfg.seed, cfg.seed + 1, ...);
    protocol: "swap" or "retrain" (default: swap on CPU, retrain when CUDA is available).
    """
    from rich.console import Console

    from rlrf.generation.knowledge import policy_adapter
    from rlrf.reward import training as reward
    from rlrf.reward.inputs import encode_summaries

    console = console or Console(width=None if Console().is_terminal else 200)  # tables, written paths
    log = Console(stderr=True)  # progress lines and notes
    protocol = protocol or default_protocol()
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol: unknown protocol '{protocol}' ({', '.join(PROTOCOLS)})")
    run_dir = Path(cfg.run_dir)
    seed_list = reward.seeds_for(cfg, seeds)
    if iterations is None:
        iterations = RunLayout(run_dir).aligned_iterations()
    else:
        iterations = sorted(set(int(t) for t in iterations))
        for t in iterations:
            if t < 0:
                raise UserError(f"--iteration must be >= 0 (got {t})")
            policy_adapter(run_dir, t)  # one-line UserError when iter_<t> has no complete adapter
    rows = experiment_rows(iterations)
    out_dir = experiment_dir(run_dir, protocol)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    notes: list[str] = []
    start = time.perf_counter()

    log.print(f"rerank experiment: protocol {protocol}, models {', '.join(cfg.reward.models)}, "
              f"seeds {seed_list}, policies: base" + "".join(f", iter {t}" for t in iterations))
    # the context: dataset, lists, encoder, item knowledge, "self" user texts (for the reference row)
    t0 = time.perf_counter()
    self_cfg = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"user_knowledge": "self"})})
    ctx = reward.prepare(self_cfg, progress=show_progress)
    notes += ctx.notes
    timings["prepare_s"] = time.perf_counter() - t0

    # 1. knowledge texts of every policy (resumable store shared with `rlrf export`)
    t0 = time.perf_counter()
    policy_texts: dict[str, dict[str, str]] = {}
    summary_stats: dict[str, dict] = {}
    knowledge_files: dict[str, str] = {}
    splits_needed = ("all",) if protocol == "retrain" else ("test",)
    for row in rows:
        if row.policy is None:
            continue
        t1 = time.perf_counter()
        texts, path = _policy_texts(cfg, row.iteration, splits_needed, ctx, show_progress, log)
        policy_texts[row.policy] = texts
        knowledge_files[row.policy] = str(path)
        timings[f"knowledge_{row.policy}_s"] = time.perf_counter() - t1
        need = [u for s in (("train", "valid", "test") if protocol == "retrain" else ("test",))
                for u in ctx.ds.splits[s] if u in ctx.lists]
        missing = sum(1 for u in need if not texts.get(u, "").strip())
        summary_stats[row.policy] = _summary_stats(path, need)
        if missing:
            notes.append(f"{row.label}: {missing} of {len(need)} users without a summary (scored as no knowledge)")
    timings["knowledge_s"] = time.perf_counter() - t0

    # 2. reward models: the run's (train the missing seeds), and for retrain one +knowledge model per policy
    t0 = time.perf_counter()
    trained = _ensure_models(cfg, ctx, rows, seed_list, protocol, out_dir, policy_texts, show_progress, log)
    timings["train_s"] = time.perf_counter() - t0

    # 3. evaluate every (model, row, seed) cell on the test users; cached by fingerprint
    t0 = time.perf_counter()
    cells_path = out_dir / "cells.json"
    cells = _read_json(cells_path) or {}
    data = {s: ctx.tensors(s) for s in SPLITS}
    self_k = {s: encode_summaries(ctx.encoder, [ctx.user_texts.get(u, "") for u in data[s].users])
              for s in SPLITS}
    policy_k = {p: {s: encode_summaries(ctx.encoder, [texts.get(u, "") for u in data[s].users])
                    for s in SPLITS} for p, texts in policy_texts.items()}
    text_hash = {"self": _texts_hash(ctx.user_texts, data), "none": "none",
                 **{p: _texts_hash(t, data) for p, t in policy_texts.items()}}
    no_k = {s: (torch.zeros(len(data[s]), ctx.encoder.dim), torch.zeros(len(data[s]), dtype=torch.bool)) for s in SPLITS}
    todo = [(kind, row, seed) for kind in cfg.reward.models for row in rows for seed in seed_list]
    computed = reused = 0
    with progress_bar(show_progress) as progress:
        task = progress.add_task("evaluate cells", total=len(todo))
        for kind, row, seed in todo:
            file = _model_file(cfg, kind, row, seed, protocol, out_dir)
            key = f"{kind}|{row.key}|{seed}"
            fp = _fingerprint(file, text_hash.get(row.policy or row.key) if row.knowledge else None, cfg.reward.k)
            if cells.get(key, {}).get("fingerprint") == fp:
                reused += 1
            else:
                model, meta = _load(file, ctx)
                result = {"fingerprint": fp, "model_file": str(file), "trained_with": meta.get("user_knowledge"),
                          "selected_valid_map@5": (meta.get("training") or {}).get("valid_map@5")}
                for s in SPLITS:
                    uk, hk = (None, None)
                    if row.knowledge:
                        uk, hk = {"self": self_k, "none": no_k}.get(row.key, policy_k.get(row.policy, {}))[s]
                    result[s] = _metrics(model, data[s], uk, hk, cfg.reward.k)
                cells[key] = result
                atomic_write_json(cells_path, cells)
                computed += 1
            progress.advance(task)
    timings["evaluate_s"] = time.perf_counter() - t0
    odd = sorted({f"{c['model_file']} ({c['trained_with']})" for c in
                  (cells[f"{kind}|self|{seed}"] for kind in cfg.reward.models for seed in seed_list)
                  if c.get("trained_with") not in (None, "self")})
    if odd:
        notes.append("the self-text row's models were not trained on self texts: " + ", ".join(odd))
    timings["total_s"] = time.perf_counter() - start

    out = _aggregate(cfg, ctx, rows, seed_list, cells, data, protocol, iterations)
    out.update({
        "knowledge_files": knowledge_files, "summaries": summary_stats, "trained_now": trained, "cells_computed": computed,
        "cells_reused": reused, "notes": notes, "timings_s": {k: round(v, 2) for k, v in timings.items()},
    })
    atomic_write_json(out_dir / "results.json", out)
    (out_dir / "table.md").write_text(markdown_tables(out), encoding="utf-8")
    plot(out, out_dir / "rerank.png")
    for note in notes:
        log.print(f"[yellow]{note}[/yellow]")
    for table in rich_tables(out):
        console.print(table)
    console.print(f"cells: {computed} computed, {reused} reused; {len(trained)} models trained now; "
                  f"{timings['total_s']:.1f}s")
    console.print(f"written {out_dir / 'results.json'}, {out_dir / 'table.md'}, {out_dir / 'rerank.png'}")
    return out


# ---------------------------------------------------------------------------------------------
# knowledge


def _policy_texts(cfg, iteration, splits, ctx, show_progress, console) -> tuple[dict[str, str], Path]:
    from rlrf.data import texts as kn
    from rlrf.core.io import JsonlLog
    from rlrf.generation.knowledge import generate_user_knowledge, knowledge_layout, policy_tag

    path = knowledge_layout(cfg.run_dir, iteration).responses(0)
    have = JsonlLog(path, key=lambda r: r["user"]).done if path.exists() else set()  # (repairs a torn tail: we write it)
    for split in splits:
        users = ctx.ds.users if split == "all" else ctx.ds.splits[split]
        wanted = [u for u in users if u in ctx.lists and ctx.lists[u].history]  # users with a prompt
        if all(u in have for u in wanted):  # stored already: no need to load the policy
            continue
        console.print(f"knowledge: {policy_tag(iteration)} policy, {split} users ({len(wanted) - len(have & set(wanted))} to write)")
        path = generate_user_knowledge(cfg, iteration, split, dataset=ctx.ds, show_progress=show_progress)
    if not path.exists():
        raise UserError(f"{path}: no summaries were written for the {policy_tag(iteration)} policy")
    kf = kn.load_knowledge_file(path, ctx.ds.users.keys(), field_name="user")
    return kf.first(), path


def _summary_stats(path: Path, users: list[str]) -> dict:
    """Over the users the protocol reads: how many summaries, mean tokens, unfinished, flagged (generate's flags)."""
    from rlrf.core.io import read_jsonl

    wanted = set(users)
    first: dict[str, dict] = {}
    for r in read_jsonl(path):
        if r["user"] in wanted and r["user"] not in first:
            first[r["user"]] = r
    recs = list(first.values())
    flags: dict[str, int] = {}
    for r in recs:
        if r.get("flag"):
            flags[r["flag"]] = flags.get(r["flag"], 0) + 1
    return {"users": len(users), "summaries": len(recs),
            "mean_tokens": round(float(np.mean([r.get("n_tokens", 0) for r in recs])), 1) if recs else 0.0,
            "unfinished": sum(1 for r in recs if r.get("finished") is False), "flagged": flags}


def _texts_hash(texts: dict[str, str], data: dict) -> str:
    h = hashlib.sha256()
    for s in SPLITS:
        for u in data[s].users:
            h.update(f"{u}\t{texts.get(u, '')}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# models


def _model_file(cfg, kind: str, row: Row, seed: int, protocol: str, out_dir: Path) -> Path:
    from rlrf.reward import training as reward

    if protocol == "retrain" and row.policy is not None:
        return out_dir / "models" / row.policy / reward.model_name(kind, True) / f"seed_{seed}.pt"
    return reward.seed_file(cfg, kind, row.knowledge, seed)


def _load(file: Path, ctx):
    from recmodels.train import load_reranker

    return load_reranker(file.parent, ctx.ds.name, ctx.encoder.key, len(ctx.ds.catalog), ctx.genre_matrix,
                         name=file.name)


def _ensure_models(cfg, ctx, rows, seeds, protocol, out_dir, policy_texts, show_progress, console) -> list[str]:
    """Train every model file the cells need that does not exist yet; returns the files trained now."""
    from rlrf.reward import training as reward

    jobs = []  # (file, kind, knowledge, seed, texts or None)
    seen = set()
    for kind in cfg.reward.models:
        for row in rows:
            for seed in seeds:
                file = _model_file(cfg, kind, row, seed, protocol, out_dir)
                if file in seen or file.exists():
                    continue
                seen.add(file)
                retrained = protocol == "retrain" and row.policy is not None
                jobs.append((file, kind, row.knowledge, seed, policy_texts[row.policy] if retrained else ctx.user_texts,
                             f"policy {row.policy} (rerank experiment)" if retrained else "self"))
    if not jobs:
        return []
    # the run's own +knowledge models must have been trained on "self" texts for the swap reading to hold
    if cfg.reward.user_knowledge != "self":
        console.print(f"[yellow]reward.user_knowledge is {cfg.reward.user_knowledge}: missing reward models "
                      "of the run are trained on \"self\" texts here[/yellow]")
    data_for: dict[int, reward.TrainingData] = {}  # one training set per knowledge source
    done = []
    with progress_bar(show_progress) as progress:
        task = progress.add_task("train rerankers", total=len(jobs))
        for file, kind, knowledge, seed, texts, source in jobs:
            if id(texts) not in data_for:
                data_for[id(texts)] = reward.training_data(ctx, texts)
            meta = {"user_knowledge": source} if knowledge else None
            result = reward.fit_reranker(ctx, data_for[id(texts)], kind, knowledge, seed, file, meta=meta)
            console.print(f"trained {file}: valid MAP@5 {result['valid_map@5']:.4f} "
                          f"(best epoch {result['best_epoch']}/{result['epochs_run']}, {result['seconds']:.1f}s)")
            done.append(str(file))
            progress.advance(task)
    return done


def _fingerprint(file: Path, texts: str | None, k: int) -> str:
    """Model file (name, size, mtime), the knowledge texts' hash and the paired metrics' K."""
    st = file.stat()
    return f"{file.name}:{st.st_size}:{st.st_mtime_ns}:k{k}:{texts or '-'}"


def _metrics(model, data, uk, hk, k: int) -> dict:
    from recmodels.train import predict
    from rlrf.evaluation.metrics import map_at_k, ndcg_at_k, ranking_metrics

    scores = predict(model, data, uk, hk)
    m = ranking_metrics(scores, data.labels, KS)
    return {"metrics": {name: float(m[name]) for name in METRICS},
            f"per_list_ndcg@{k}": ndcg_at_k(scores, data.labels, k).tolist(),
            f"per_list_map@{k}": map_at_k(scores, data.labels, k).tolist()}


# ---------------------------------------------------------------------------------------------
# results


def _aggregate(cfg, ctx, rows, seeds, cells, data, protocol, iterations) -> dict:
    from rlrf.reward import training as reward

    k = cfg.reward.k
    models = {}
    for kind in cfg.reward.models:
        out_rows = {}
        for row in rows:
            per_seed = [cells[f"{kind}|{row.key}|{seed}"] for seed in seeds]
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
                entry["vs"] = {ref: _paired(per_seed, [cells[f"{kind}|{ref}|{s}"] for s in seeds], k, cfg.seed)
                               for ref in refs}
            if row.key in ("self", "none"):
                entry["vs"] = {"base": _paired(per_seed, [cells[f"{kind}|base|{s}"] for s in seeds], k, cfg.seed)}
            if row.key == "self":
                entry["vs"]["none"] = _paired(per_seed, [cells[f"{kind}|none|{s}"] for s in seeds], k, cfg.seed)
            out_rows[row.key] = entry
        models[kind] = out_rows
    test = data["test"]
    return {
        "dataset": ctx.ds.name, "protocol": protocol, "encoder": ctx.encoder.key, "seeds": seeds,
        "iterations": iterations, "rows": [{"key": r.key, "label": r.label} for r in rows],
        "metrics": list(METRICS), "n_lists": {s: len(data[s]) for s in SPLITS},
        "item_knowledge": cfg.reward.item_knowledge, "k": k,
        "sd": "sample sd over seeds (ddof=1; 0 for one seed)", "map_denominator": "min(K, #relevant)",
        "selection": ("rerankers as trained by `rlrf reward train` (self texts, epochs selected on valid MAP@5); "
                      "policy rows swap the test users' knowledge for the policy's summaries"
                      if protocol == "swap" else
                      "policy rows: +knowledge reranker retrained per policy and seed on the policy's summaries "
                      "for every user, epochs selected on valid MAP@5 with those summaries"),
        "models": models,
        "random_order": reward.random_reference(test.labels, seed=cfg.seed),
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


def _read_json(path: Path):
    try:
        return read_json(path)
    except UserError:
        return None  # a cache: recomputed
