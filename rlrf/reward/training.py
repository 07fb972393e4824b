"""`rlrf reward train` and `rlrf reward eval`: the knowledge-augmented rerankers, trained and tested.

`train_rerankers` trains, for each reranker in `reward.models` (DLCM, PRM), a base model and a
+knowledge model, for each seed, on the TRAIN users' lists, selecting epochs on the VALID users'
MAP@5; a +knowledge model that selects worse than its base is warned about and recorded, since the
reward then rewards summaries through a model that reads them badly. `evaluate_rerankers` scores
the saved models on the TEST users' lists and prints NDCG@K and MAP@K (K = 1, 3, 5, 7) as a table,
mean ± sd over seeds, also written to `<run_dir>/reward/eval.json`.

Layout (`RunLayout.reward_model_file`): `reward/<model>[_knowledge]/seed_<s>.pt` (every seed),
`model.pt` (the run's own seed: the reward model the next stage loads), `meta.json` (dataset,
encoder, knowledge sources, hyperparameters, validation history).

`train` and `evaluate` are the adapters for a whole run config; the functions beside them take the
`RerankerInputs` (rlrf/reward/inputs.py) and explicit seeds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recmodels.train import ListTensors, TrainSettings, build_reranker, load_reranker, predict, save_reranker, train_reranker
from rlrf.core.config import RewardConfig
from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_json, read_json
from rlrf.core.layout import RunLayout
from rlrf.evaluation.metrics import map_at_k, ndcg_at_k, ranking_metrics
from rlrf.reward.inputs import RerankerInputs, TrainingData, prepare, training_data

KS = (1, 3, 5, 7)


def model_name(kind: str, knowledge: bool) -> str:
    return f"{kind}_knowledge" if knowledge else kind


def reward_seeds(run_seed: int, n: int) -> list[int]:
    """The reranker seeds of a run: run_seed, run_seed + 1, ... (n of them)."""
    if n < 1:
        raise UserError(f"--seeds must be at least 1 (got {n})")
    return [run_seed + i for i in range(n)]


def seeds_for(cfg, n: int | None) -> list[int]:
    """`reward_seeds` for a whole run config; `n` None = `reward.seeds`."""
    return reward_seeds(cfg.seed, n if n is not None else cfg.reward.seeds)


def seed_file(cfg, kind: str, knowledge: bool, seed: int) -> Path:
    return RunLayout(cfg.run_dir).reward_model_file(model_name(kind, knowledge), seed)


def reranker_hyperparameters(reward: RewardConfig, kind: str, knowledge: bool, list_length: int) -> dict:
    """The `reward:` section as the hyperparameter dict recmodels builds (and saves) a reranker from."""
    return {
        "kind": kind, "knowledge": knowledge, "list_length": list_length,
        "embed_dim": reward.embed_dim, "hidden": reward.hidden, "heads": reward.heads, "layers": reward.layers,
        "adapter_out": reward.adapter_out, "adapter_hidden": reward.adapter_hidden,
        "shared_experts": reward.shared_experts, "specific_experts": reward.specific_experts,
        "dropout": reward.dropout, "knowledge_dropout": reward.knowledge_dropout,
        "history": bool(reward.knowledge_history) if knowledge else True,
        "item_prior": bool(reward.item_prior),
        "summary_match": bool(reward.summary_match) if knowledge else False,
        "history_dropout": float(reward.history_dropout) if knowledge else 0.0,
        "match_scale": float(reward.match_scale),
    }


def train_settings(reward: RewardConfig) -> TrainSettings:
    return TrainSettings(epochs=reward.epochs, batch_size=reward.batch_size, learning_rate=reward.learning_rate,
                         weight_decay=reward.weight_decay, patience=reward.patience)


def model_meta(inputs: RerankerInputs, kind: str, knowledge: bool, seed: int) -> dict:
    """What a saved reranker records about how it was made (checked again when it is loaded)."""
    reward = inputs.reward
    meta = {
        "dataset": inputs.ds.name, "n_items": len(inputs.ds.catalog), "model": kind, "knowledge": knowledge,
        "encoder": inputs.encoder.key if knowledge else None,
        "user_knowledge": reward.user_knowledge if knowledge else None,
        "item_knowledge": reward.item_knowledge if knowledge else None,
        "seed": seed, "lists": inputs.data.lists.model_dump(mode="json"),
        "train_summaries": reward.train_summaries if knowledge else None,
        "train_cuts": reward.train_cuts,
    }
    if knowledge and reward.train_summaries == "pool":
        meta["pool"] = {"weights": reward.pool_weights, "size": reward.pool_size, "noise": reward.pool_noise}
    return meta


def fit_reranker(inputs: RerankerInputs, data: TrainingData, kind: str, knowledge: bool, seed: int, file: Path,
                 log=None, meta: dict | None = None) -> dict:
    """Train one reranker (early-stopped on VALID MAP@5) and save it to `file`; returns the training
    summary. With `reward.train_summaries: pool` a +knowledge model reads summaries resampled each
    epoch (rlrf/reward/pool.py), which is what teaches it to read a summary at all."""
    reward = inputs.reward
    hp = reranker_hyperparameters(reward, kind, knowledge, data.train.items.shape[1])
    torch.manual_seed(seed)
    model = build_reranker(hp, len(inputs.ds.catalog), inputs.genre_matrix, inputs.item_vecs if knowledge else None,
                           data.prior)
    train_k = data.train_k
    if knowledge and reward.train_summaries == "pool":
        from rlrf.reward.pool import PoolSampler

        train_k = PoolSampler(inputs, data.lists, seed, data.train_k)
    result = train_reranker(model, data.train, data.valid, train_settings(reward), seed,
                            train_k if knowledge else None, data.valid_k if knowledge else None, log=log)
    save_reranker(file.parent, model, hp, {**model_meta(inputs, kind, knowledge, seed), "training": result, **(meta or {})},
                  name=file.name)
    name = model_name(kind, knowledge)
    if seed == inputs.seed and file == inputs.layout.reward_model_file(name, seed):
        shutil.copyfile(file, inputs.layout.reward_model_file(name))  # the run's own seed: the model the stages load
    return result


def knowledge_vs_base(summary: dict[str, list[dict]]) -> dict[str, dict]:
    """Per reranker kind trained in both variants: mean VALID MAP@5 over seeds of base and +knowledge."""
    out = {}
    for name, rows in summary.items():
        if not name.endswith("_knowledge") or name.removesuffix("_knowledge") not in summary:
            continue
        kind = name.removesuffix("_knowledge")
        base = float(np.mean([r["valid_map@5"] for r in summary[kind]]))
        with_k = float(np.mean([r["valid_map@5"] for r in rows]))
        out[kind] = {"base_valid_map@5": base, "knowledge_valid_map@5": with_k, "knowledge_worse": with_k < base}
    return out


def train_rerankers(inputs: RerankerInputs, seeds: Sequence[int], *, kinds: Sequence[str] | None = None,
                    variants: Sequence[bool] = (False, True), console=None) -> dict:
    """Train base and +knowledge rerankers of `reward.models` (or `kinds`) for each seed; returns
    {name: [per-seed summaries]}. `variants` picks base (False) and/or +knowledge (True)."""
    from rich.console import Console
    from torch.utils.tensorboard import SummaryWriter

    console = console or Console(stderr=True)
    seeds = list(seeds)
    for note in inputs.notes:
        console.print(f"[yellow]{note}[/yellow]")
    data = training_data(inputs, console=console)
    layout = inputs.layout
    log_path = layout.reward_train_log  # one line per epoch, appended by each `train`
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log_epoch(name: str, seed: int, board):
        def write(record: dict) -> None:
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"model": name, "seed": seed, **record}) + "\n")
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    board.add_scalar(key, value, record["epoch"])
            board.flush()
        return write

    summary: dict[str, list] = {}
    for kind in kinds or inputs.reward.models:
        for knowledge in variants:
            name = model_name(kind, knowledge)
            summary[name] = []
            for seed in seeds:
                # `tensorboard --logdir <run>/reward/tensorboard`: closed after each model (its writer thread too)
                board = SummaryWriter(str(layout.reward_tensorboard(name, seed)))
                try:
                    result = fit_reranker(inputs, data, kind, knowledge, seed, layout.reward_model_file(name, seed),
                                          log=log_epoch(name, seed, board))
                finally:
                    board.close()
                summary[name].append({"seed": seed, "valid_map@5": result["valid_map@5"],
                                      "best_epoch": result["best_epoch"], "seconds": result["seconds"]})
                console.print(f"{name} seed {seed}: valid MAP@5 {result['valid_map@5']:.4f} "
                              f"(best epoch {result['best_epoch']}/{result['epochs_run']}, {result['seconds']:.1f}s)")
    compared = knowledge_vs_base(summary)
    for kind, c in compared.items():
        if c["knowledge_worse"]:
            console.print(f"[bold red]warning: {kind.upper()} +knowledge selects worse than its base on the "
                          f"validation lists (MAP@5 {c['knowledge_valid_map@5']:.4f} vs {c['base_valid_map@5']:.4f}): "
                          "its reward reads the summaries badly; check the knowledge sources and the data "
                          "(reward/train.json, `rlrf reward probe`)[/bold red]")
    saved = read_json(layout.reward_train) or {}
    record = {"dataset": inputs.ds.name, "encoder": inputs.encoder.key, "seeds": seeds,
              "models": {**saved.get("models", {}), **summary}}  # models trained by another call stay
    validation = {**saved.get("validation", {}), **compared}
    if validation:
        record["validation"] = validation
    atomic_write_json(layout.reward_train, record)
    return summary


def train(cfg, n_seeds: int | None = None, console=None, ctx: RerankerInputs | None = None,
          kinds: Sequence[str] | None = None, variants: Sequence[bool] = (False, True),
          seeds: Sequence[int] | None = None) -> dict:
    """`train_rerankers` for a whole run config (the recipes' and the CLI's adapter)."""
    seeds = list(seeds) if seeds is not None else seeds_for(cfg, n_seeds)
    return train_rerankers(ctx or prepare(cfg), seeds, kinds=kinds, variants=variants, console=console)


def missing_models(layout: RunLayout, kinds: Sequence[str], seeds: Sequence[int]) -> list[Path]:
    return [layout.reward_model_file(model_name(kind, knowledge), seed)
            for kind in kinds for knowledge in (False, True) for seed in seeds
            if not layout.reward_model_file(model_name(kind, knowledge), seed).exists()]


def _refuse_missing(layout: RunLayout, kinds: Sequence[str], seeds: Sequence[int]) -> None:
    missing = missing_models(layout, kinds, seeds)
    if missing:
        raise UserError(f"{missing[0]}: reward model not found; run `rlrf reward train --seeds {len(seeds)}` first")


def evaluate(cfg, n_seeds: int | None = None, console=None, ctx: RerankerInputs | None = None,
             split: str = "test") -> dict:
    """`evaluate_rerankers` for a whole run config; a missing model is refused before anything loads."""
    seeds = seeds_for(cfg, n_seeds)
    _refuse_missing(RunLayout(cfg.run_dir), cfg.reward.models, seeds)
    return evaluate_rerankers(ctx or prepare(cfg), seeds, split=split, console=console)


def evaluate_rerankers(inputs: RerankerInputs, seeds: Sequence[int], *, split: str = "test", console=None) -> dict:
    """Score every saved model/seed on `split` users; print the table; write reward/eval.json."""
    from rich.console import Console

    console = console or Console(width=None if Console().is_terminal else 200)
    reward, layout, seeds = inputs.reward, inputs.layout, list(seeds)
    _refuse_missing(layout, reward.models, seeds)
    data = inputs.tensors(split)
    uk, hk = inputs.user_knowledge(data.users)
    results: dict[str, dict] = {}
    per_list: dict[str, dict[str, np.ndarray]] = {}
    ablation: dict[str, dict[str, list[float]]] = {}
    for kind in reward.models:
        for knowledge in (False, True):
            name = model_name(kind, knowledge)
            per_seed, seed_scores = [], []
            for seed in seeds:
                file = layout.reward_model_file(name, seed)
                model, _ = load_reranker(file.parent, inputs.ds.name, inputs.encoder.key, len(inputs.ds.catalog),
                                         inputs.genre_matrix, name=file.name)
                scores = predict(model, data, uk if knowledge else None, hk if knowledge else None)
                seed_scores.append(scores)
                m = ranking_metrics(scores, data.labels, KS)
                per_seed.append({"seed": seed, **{k: v for k, v in m.items() if k.split("@")[0] in ("ndcg", "map")}})
                if knowledge:  # how much the score depends on the user's own summary
                    perm = torch.roll(torch.arange(len(data)), 1)  # each list gets its neighbour's summary
                    for variant, (vk, vh) in {"own summary": (uk, hk),
                                              "no summary": (uk, torch.zeros_like(hk)),
                                              "another user's summary": (uk[perm], hk[perm])}.items():
                        vs = predict(model, data, vk, vh)
                        ablation.setdefault(kind, {}).setdefault(variant, []).append(
                            float(map_at_k(vs, data.labels, reward.k).mean()))
            per_list[name] = _per_list(seed_scores, data.labels)
            keys = [k for k in per_seed[0] if k != "seed"]
            arr = np.array([[r[k] for k in keys] for r in per_seed])
            results[name] = {
                "mean": dict(zip(keys, arr.mean(0).tolist())),
                "sd": dict(zip(keys, (arr.std(0, ddof=1) if len(seeds) > 1 else np.zeros(len(keys))).tolist())),
                "per_seed": per_seed,
            }
    k = reward.k
    gains = {kind: knowledge_gain(per_list[model_name(kind, True)], per_list[model_name(kind, False)],
                                  [f"ndcg@{k}", f"map@{k}"], seed=inputs.seed)
             for kind in reward.models}
    out = {"dataset": inputs.ds.name, "split": split, "n_lists": len(data), "encoder": inputs.encoder.key,
           "user_knowledge": reward.user_knowledge, "item_knowledge": reward.item_knowledge,
           "seeds": seeds, "sd": "sample sd over seeds (ddof=1)", "map_denominator": "min(K, #relevant)",
           "results": results, "random_order": random_reference(data.labels, seed=inputs.seed),
           "item_prior": item_prior_reference(inputs, data),
           "item_prior_note": "no model: each item scored by its smoothed share of ratings >= data.positive_rating "
                              "among TRAIN users' interactions, (pos + 1) / (n + 2)",
           "knowledge_gain": gains,
           f"summary_ablation_map@{k}": {kind: {v: float(np.mean(x)) for v, x in d.items()} for kind, d in ablation.items()},
           "knowledge_gain_note": "per-list (+knowledge − base), each averaged over seeds; mean and 95% "
                                  "percentile-bootstrap CI over test lists (2000 resamples)"}
    atomic_write_json(layout.reward_eval, out)
    console.print(results_table(out))
    for kind, g in gains.items():
        console.print(f"{kind.upper()} +knowledge − base on the same {len(data)} {split} lists: " + ", ".join(
            f"{m.upper()} {v['mean']:+.4f} [95% CI {v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]" for m, v in g.items()))
    for kind, d in ablation.items():
        console.print(f"{kind.upper()} +knowledge MAP@{k} with " + ", ".join(
            f"{v}: {np.mean(x):.4f}" for v, x in d.items()))
    console.print(f"written {layout.reward_eval}")
    return out


def item_prior_reference(inputs: RerankerInputs, data: ListTensors) -> dict[str, float]:
    """A model-free reference: rank items by their smoothed positive-rating share among train users."""
    ds = inputs.ds
    n = len(ds.catalog)
    pos, cnt = np.zeros(n + 1), np.zeros(n + 1)  # index = catalog index + 1, as in ListTensors
    for u in ds.splits["train"]:
        user = ds.users[u]
        for i, r in zip(user.items, user.ratings):
            cnt[i + 1] += 1
            pos[i + 1] += r is not None and r >= inputs.data.positive_rating
    prior = (pos + 1) / (cnt + 2)
    m = ranking_metrics(prior[data.items.numpy()], data.labels, KS)
    return {k: v for k, v in m.items() if k.split("@")[0] in ("ndcg", "map")}


def _per_list(seed_scores: list, labels) -> dict[str, np.ndarray]:
    """Per-list metrics [n_lists], averaged over seeds."""
    return {f"{name}@{k}": np.mean([fn(s, labels, k) for s in seed_scores], axis=0)
            for k in KS for name, fn in (("ndcg", ndcg_at_k), ("map", map_at_k))}


def knowledge_gain(with_k: dict, base: dict, metrics: Sequence[str], seed: int = 0, n_boot: int = 2000) -> dict:
    """Paired gain per list and a percentile-bootstrap 95% CI of its mean over lists."""
    rng = np.random.default_rng(seed)
    out = {}
    for m in metrics:
        diff = np.asarray(with_k[m]) - np.asarray(base[m])
        boots = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(1)
        out[m] = {"mean": float(diff.mean()), "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
                  "lists_better": int((diff > 0).sum()), "lists_worse": int((diff < 0).sum())}
    return out


def random_reference(labels, seed: int = 0, n: int = 200) -> dict[str, float]:
    """Expected NDCG/MAP of a uniformly random order of each list (mean over n random orders)."""
    g = torch.Generator().manual_seed(seed)
    rows = [ranking_metrics(torch.rand(labels.shape, generator=g), labels, KS) for _ in range(n)]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.split("@")[0] in ("ndcg", "map")}


def results_table(out: dict):
    from rich.table import Table

    n = len(out["seeds"])
    table = Table(title=f"{out['dataset']} {out['split']} users ({out['n_lists']} lists), "
                        f"{'mean ± sd over ' + str(n) + ' seeds' if n > 1 else 'seed ' + str(out['seeds'][0])}")
    table.add_column("model")
    metrics = [f"ndcg@{k}" for k in KS] + [f"map@{k}" for k in KS]
    for m in metrics:
        table.add_column(m.upper().replace("@", "@"), justify="right")
    for name, r in out["results"].items():
        label = name.replace("_knowledge", " +knowledge").upper().replace("+KNOWLEDGE", "+knowledge")
        cells = [f"{r['mean'][m]:.4f}" + (f" ± {r['sd'][m]:.4f}" if n > 1 else "") for m in metrics]
        table.add_row(label, *cells)
    if "item_prior" in out:
        table.add_row("item prior (no model)", *[f"{out['item_prior'][m]:.4f}" for m in metrics], style="dim")
    if "random_order" in out:
        table.add_row("random order", *[f"{out['random_order'][m]:.4f}" for m in metrics], style="dim")
    return table


def markdown_table(out: dict) -> str:
    n = len(out["seeds"])
    metrics = [f"ndcg@{k}" for k in KS] + [f"map@{k}" for k in KS]
    lines = ["| model | " + " | ".join(m.upper() for m in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for name, r in out["results"].items():
        label = name.replace("_knowledge", " +knowledge").upper().replace("+KNOWLEDGE", "+knowledge")
        cells = [f"{r['mean'][m]:.4f}" + (f" ± {r['sd'][m]:.4f}" if n > 1 else "") for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "item_prior" in out:
        lines.append("| item prior (no model) | " + " | ".join(f"{out['item_prior'][m]:.4f}" for m in metrics) + " |")
    if "random_order" in out:
        lines.append("| random order | " + " | ".join(f"{out['random_order'][m]:.4f}" for m in metrics) + " |")
    return "\n".join(lines)
