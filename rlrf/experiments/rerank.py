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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_json, atomic_write_text, read_json
from rlrf.core.layout import RunLayout
from rlrf.core.progress import progress_bar
from rlrf.experiments.rerank_results import KS, METRICS, SPLITS, aggregate, markdown_tables, plot, rich_tables

PROTOCOLS = ("swap", "retrain")


@dataclass(frozen=True)
class Row:
    key: str  # "base", "self", "none", "policy_base", "policy_iter_<t>"
    label: str
    knowledge: bool
    policy: str | None = None  # policy tag ("base", "iter_<t>") for policy rows
    iteration: int | None = None


def experiment_name(protocol: str) -> str:
    """The experiment's folder under `experiments/`: `rerank` (swap) or `rerank_<protocol>`."""
    return "rerank" if protocol == "swap" else f"rerank_{protocol}"


def experiment_dir(run_dir: Path, protocol: str) -> Path:
    return RunLayout(run_dir).experiment(experiment_name(protocol))


def experiment_rows(iterations: list[int]) -> list[Row]:
    rows = [Row("base", "base", False), Row("self", "+knowledge (self text)", True),
            Row("none", "+knowledge (no user text)", True),
            Row("policy_base", "+knowledge (base policy)", True, "base", None)]
    rows += [Row(f"policy_iter_{t}", f"+knowledge (iter {t} policy)", True, f"iter_{t}", t) for t in iterations]
    return rows


def default_protocol() -> str:
    return "retrain" if torch.cuda.is_available() else "swap"


def checked_protocol(protocol: str | None) -> str:
    protocol = protocol or default_protocol()
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol: unknown protocol '{protocol}' ({', '.join(PROTOCOLS)})")
    return protocol


def checked_iterations(layout: RunLayout, iterations: list[int] | None) -> list[int]:
    """The aligned iterations asked for (default: every `iter_<t>` with a complete adapter), sorted;
    one with no complete adapter is a one-line error before anything runs."""
    from rlrf.generation.knowledge import policy_adapter

    if iterations is None:
        return layout.aligned_iterations()
    iterations = sorted(set(int(t) for t in iterations))
    for t in iterations:
        if t < 0:
            raise UserError(f"--iteration must be >= 0 (got {t})")
        policy_adapter(layout.root, t)  # one-line UserError when iter_<t> has no complete adapter
    return iterations


# ---------------------------------------------------------------------------------------------
# the experiment: the recipe, then its three phases


def run_rerank_experiment(cfg, iterations: list[int] | None = None, seeds: int | None = None,
                          show_progress: bool = True, protocol: str | None = None, console=None) -> dict:
    """Run (or resume) the offline reranking experiment; print one table per reranker; return results.json's dict.

    iterations: aligned iterations to include (default: every `iter_<t>` with a complete adapter);
    seeds: reranker seeds (default `reward.seeds`; cfg.seed, cfg.seed + 1, ...);
    protocol: "swap" or "retrain" (default: swap on CPU, retrain when CUDA is available).
    """
    from rich.console import Console

    from rlrf.core.threads import use_threads
    from rlrf.generation.knowledge import generate_user_knowledge
    from rlrf.reward import inputs as reward_inputs
    from rlrf.reward import training as reward

    console = console or Console(width=None if Console().is_terminal else 200)  # tables, written paths
    log = Console(stderr=True)  # progress lines and notes
    protocol = checked_protocol(protocol)
    layout = RunLayout(cfg.run_dir)
    seed_list = reward.seeds_for(cfg, seeds)
    iterations = checked_iterations(layout, iterations)
    rows = experiment_rows(iterations)
    name = experiment_name(protocol)
    layout.experiment(name).mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    log.print(f"rerank experiment: protocol {protocol}, models {', '.join(cfg.reward.models)}, "
              f"seeds {seed_list}, policies: base" + "".join(f", iter {t}" for t in iterations))
    # the context: dataset, lists, encoder, item knowledge, "self" user texts (for the reference row)
    t0 = time.perf_counter()
    use_threads(cfg)
    self_reward = cfg.reward.model_copy(update={"user_knowledge": "self"})
    ctx = reward_inputs.prepare_inputs(cfg.data, self_reward, cfg.encoder, cfg.sasrec, layout, cfg.seed,
                                       progress=show_progress)
    notes = list(ctx.notes)
    timings["prepare_s"] = time.perf_counter() - t0

    def write_knowledge(iteration: int | None, split: str) -> Path:  # the generation stage, for missing summaries
        return generate_user_knowledge(cfg, iteration, split, dataset=ctx.ds, show_progress=show_progress)

    t0 = time.perf_counter()
    knowledge = policy_knowledge(ctx, rows, protocol, layout, write_knowledge, log)
    notes += knowledge.notes
    timings.update(knowledge.seconds)
    timings["knowledge_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    trained = ensure_models(cfg.reward, ctx, rows, seed_list, protocol, layout, knowledge.texts, show_progress, log)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cells = evaluate_cells(cfg.reward, ctx, rows, seed_list, protocol, layout, knowledge.texts, show_progress)
    notes += cells.notes
    timings["evaluate_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    out = aggregate(cfg.reward, cfg.seed, ctx, rows, seed_list, cells.values, cells.data, protocol, iterations)
    out.update({
        "knowledge_files": knowledge.files, "summaries": knowledge.summaries, "trained_now": trained,
        "cells_computed": cells.computed, "cells_reused": cells.reused, "notes": notes,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    })
    written = write_results(out, layout, name)
    for note in notes:
        log.print(f"[yellow]{note}[/yellow]")
    for table in rich_tables(out):
        console.print(table)
    console.print(f"cells: {cells.computed} computed, {cells.reused} reused; {len(trained)} models trained now; "
                  f"{timings['total_s']:.1f}s")
    console.print("written " + ", ".join(str(path) for path in written))
    return out


def write_results(out: dict, layout: RunLayout, name: str) -> list[Path]:
    """results.json, table.md and the plot of one experiment; returns their paths."""
    written = [layout.experiment_results(name), layout.experiment_table(name), layout.experiment_figure(name, "rerank")]
    atomic_write_json(written[0], out)
    atomic_write_text(written[1], markdown_tables(out))
    plot(out, written[2])
    return written


# ---------------------------------------------------------------------------------------------
# 1. knowledge texts of every policy (resumable store shared with `rlrf export`)


@dataclass
class PolicyKnowledge:
    """Every policy row's summaries, where they are stored, and what they look like."""

    texts: dict[str, dict[str, str]] = field(default_factory=dict)  # policy tag -> user -> summary
    files: dict[str, str] = field(default_factory=dict)
    summaries: dict[str, dict] = field(default_factory=dict)  # `_summary_stats` per policy
    seconds: dict[str, float] = field(default_factory=dict)  # "knowledge_<policy>_s"
    notes: list[str] = field(default_factory=list)


def policy_knowledge(ctx, rows: list[Row], protocol: str, layout: RunLayout,
                     write_knowledge: Callable[[int | None, str], Path], console) -> PolicyKnowledge:
    """Each policy row's summaries for the users the protocol reads (test users for swap, all for
    retrain); `write_knowledge(iteration, split)` runs the generation stage for the missing ones."""
    splits = ("all",) if protocol == "retrain" else ("test",)
    need = [u for s in (("train", "valid", "test") if protocol == "retrain" else ("test",))
            for u in ctx.ds.splits[s] if u in ctx.lists]
    out = PolicyKnowledge()
    for row in rows:
        if row.policy is None:
            continue
        t1 = time.perf_counter()
        texts, path = _policy_texts(layout, row.iteration, splits, ctx, write_knowledge, console)
        out.texts[row.policy] = texts
        out.files[row.policy] = str(path)
        out.seconds[f"knowledge_{row.policy}_s"] = time.perf_counter() - t1
        missing = sum(1 for u in need if not texts.get(u, "").strip())
        out.summaries[row.policy] = _summary_stats(path, need)
        if missing:
            out.notes.append(f"{row.label}: {missing} of {len(need)} users without a summary (scored as no knowledge)")
    return out


def _policy_texts(layout: RunLayout, iteration, splits, ctx, write_knowledge, console) -> tuple[dict[str, str], Path]:
    from rlrf.core.io import JsonlLog
    from rlrf.data import texts as kn
    from rlrf.generation.knowledge import knowledge_layout, policy_tag

    path = knowledge_layout(layout.root, iteration).responses(0)
    have = JsonlLog(path, key=lambda r: r["user"]).done if path.exists() else set()  # (repairs a torn tail: we write it)
    for split in splits:
        users = ctx.ds.users if split == "all" else ctx.ds.splits[split]
        wanted = [u for u in users if u in ctx.lists and ctx.lists[u].history]  # users with a prompt
        if all(u in have for u in wanted):  # stored already: no need to load the policy
            continue
        console.print(f"knowledge: {policy_tag(iteration)} policy, {split} users ({len(wanted) - len(have & set(wanted))} to write)")
        path = write_knowledge(iteration, split)
    if not path.exists():
        raise UserError(f"{path}: no summaries were written for the {policy_tag(iteration)} policy")
    kf = kn.load_knowledge_file(path, ctx.ds.users.keys(), field_name="user")
    return kf.first(), path


def _summary_stats(path: Path, users: list[str]) -> dict:
    """Over the users the protocol reads: how many summaries, mean tokens, unfinished, flagged (generate's flags)."""
    from rlrf.core.io import read_jsonl
    from rlrf.core.records import ResponseRecord

    wanted = set(users)
    first: dict[str, ResponseRecord] = {}
    for r in map(ResponseRecord.from_dict, read_jsonl(path)):
        if r.user in wanted and r.user not in first:
            first[r.user] = r
    recs = list(first.values())
    flags: dict[str, int] = {}
    for r in recs:
        if r.flag:
            flags[r.flag] = flags.get(r.flag, 0) + 1
    return {"users": len(users), "summaries": len(recs),
            "mean_tokens": round(float(np.mean([r.n_tokens for r in recs])), 1) if recs else 0.0,
            "unfinished": sum(1 for r in recs if r.finished is False), "flagged": flags}


def _texts_hash(texts: dict[str, str], data: dict) -> str:
    h = hashlib.sha256()
    for s in SPLITS:
        for u in data[s].users:
            h.update(f"{u}\t{texts.get(u, '')}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# 2. reward models: the run's (train the missing seeds), and for retrain one +knowledge model per policy


def _model_file(layout: RunLayout, kind: str, row: Row, seed: int, protocol: str) -> Path:
    from rlrf.reward.training import model_name

    if protocol == "retrain" and row.policy is not None:
        return layout.experiment_model(experiment_name(protocol), row.policy, model_name(kind, True), seed)
    return layout.reward_model_file(model_name(kind, row.knowledge), seed)


def _load(file: Path, ctx):
    from recmodels.train import load_reranker

    return load_reranker(file.parent, ctx.ds.name, ctx.encoder.key, len(ctx.ds.catalog), ctx.genre_matrix,
                         name=file.name)


def ensure_models(reward_cfg, ctx, rows, seeds, protocol, layout: RunLayout, policy_texts, show_progress,
                  console) -> list[str]:
    """Train every model file the cells need that does not exist yet; returns the files trained now."""
    from rlrf.reward import inputs as reward_inputs
    from rlrf.reward import training as reward

    jobs = []  # (file, kind, knowledge, seed, texts or None)
    seen = set()
    for kind in reward_cfg.models:
        for row in rows:
            for seed in seeds:
                file = _model_file(layout, kind, row, seed, protocol)
                if file in seen or file.exists():
                    continue
                seen.add(file)
                retrained = protocol == "retrain" and row.policy is not None
                jobs.append((file, kind, row.knowledge, seed, policy_texts[row.policy] if retrained else ctx.user_texts,
                             f"policy {row.policy} (rerank experiment)" if retrained else "self"))
    if not jobs:
        return []
    # the run's own +knowledge models must have been trained on "self" texts for the swap reading to hold
    if reward_cfg.user_knowledge != "self":
        console.print(f"[yellow]reward.user_knowledge is {reward_cfg.user_knowledge}: missing reward models "
                      "of the run are trained on \"self\" texts here[/yellow]")
    data_for: dict[int, reward_inputs.TrainingData] = {}  # one training set per knowledge source
    done = []
    with progress_bar(show_progress) as progress:
        task = progress.add_task("train rerankers", total=len(jobs))
        for file, kind, knowledge, seed, texts, source in jobs:
            if id(texts) not in data_for:
                data_for[id(texts)] = reward_inputs.training_data(ctx, texts)
            meta = {"user_knowledge": source} if knowledge else None
            result = reward.fit_reranker(ctx, data_for[id(texts)], kind, knowledge, seed, file, meta=meta)
            console.print(f"trained {file}: valid MAP@5 {result['valid_map@5']:.4f} "
                          f"(best epoch {result['best_epoch']}/{result['epochs_run']}, {result['seconds']:.1f}s)")
            done.append(str(file))
            progress.advance(task)
    return done


# ---------------------------------------------------------------------------------------------
# 3. evaluate every (model, row, seed) cell on the test users; cached by fingerprint


@dataclass
class Cells:
    """Every (model, row, seed) cell's test metrics, keyed "kind|row|seed", and the lists they were taken on."""

    values: dict
    data: dict  # split -> the lists' tensors
    computed: int
    reused: int
    notes: list[str]


def evaluate_cells(reward_cfg, ctx, rows, seeds, protocol, layout: RunLayout, policy_texts, show_progress) -> Cells:
    """Each cell's metrics, recomputed only when its model file or knowledge texts changed (cells.json)."""
    from rlrf.reward.inputs import encode_summaries

    cells_path = layout.experiment_cells(experiment_name(protocol))
    cells = _read_json(cells_path) or {}
    data = {s: ctx.tensors(s) for s in SPLITS}
    self_k = {s: encode_summaries(ctx.encoder, [ctx.user_texts.get(u, "") for u in data[s].users])
              for s in SPLITS}
    policy_k = {p: {s: encode_summaries(ctx.encoder, [texts.get(u, "") for u in data[s].users])
                    for s in SPLITS} for p, texts in policy_texts.items()}
    text_hash = {"self": _texts_hash(ctx.user_texts, data), "none": "none",
                 **{p: _texts_hash(t, data) for p, t in policy_texts.items()}}
    no_k = {s: (torch.zeros(len(data[s]), ctx.encoder.dim), torch.zeros(len(data[s]), dtype=torch.bool)) for s in SPLITS}
    todo = [(kind, row, seed) for kind in reward_cfg.models for row in rows for seed in seeds]
    computed = reused = 0
    with progress_bar(show_progress) as progress:
        task = progress.add_task("evaluate cells", total=len(todo))
        for kind, row, seed in todo:
            file = _model_file(layout, kind, row, seed, protocol)
            key = f"{kind}|{row.key}|{seed}"
            fp = _fingerprint(file, text_hash.get(row.policy or row.key) if row.knowledge else None, reward_cfg.k)
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
                    result[s] = _metrics(model, data[s], uk, hk, reward_cfg.k)
                cells[key] = result
                atomic_write_json(cells_path, cells)
                computed += 1
            progress.advance(task)
    odd = sorted({f"{c['model_file']} ({c['trained_with']})" for c in
                  (cells[f"{kind}|self|{seed}"] for kind in reward_cfg.models for seed in seeds)
                  if c.get("trained_with") not in (None, "self")})
    notes = ["the self-text row's models were not trained on self texts: " + ", ".join(odd)] if odd else []
    return Cells(cells, data, computed, reused, notes)


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


def _read_json(path: Path):
    try:
        return read_json(path)
    except UserError:
        return None  # a cache: recomputed
