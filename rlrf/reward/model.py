"""The reward stage: train and evaluate the knowledge-augmented rerankers, and score summaries.

`rlrf reward train` trains, for each reranker in `reward.models` (DLCM, PRM), a base model and a
+knowledge model, for each seed, on the TRAIN users' lists, selecting epochs on the VALID users'
MAP@5. `rlrf reward eval` scores the saved models on the TEST users' lists and prints NDCG@K and
MAP@K (K = 1, 3, 5, 7) as a table, mean ± sd over seeds, also written to `<run_dir>/reward/eval.json`.

Layout: `<run_dir>/reward/<model>[_knowledge]/seed_<s>.pt` (every seed), `model.pt` (the run's own
seed: the reward model the next stage loads), `meta.json` (dataset, encoder, knowledge sources,
hyperparameters, validation history).

`RewardScorer.score(users, texts)` is the scoring API of the next stage: each (user, summary) pair
is scored as NDCG@K / MAP@K of the user's list reranked with that summary as the user knowledge,
batched over pairs (one forward pass per batch, embeddings from the on-disk cache).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recmodels import knowledge as kn
from recmodels.train import (
    ListTensors, build_reranker, hyperparameters, item_prior_features, load_reranker, predict, save_reranker,
    tensorize, train_reranker,
)
from rlrf.core.errors import UserError
from rlrf.evaluation.metrics import map_at_k, ndcg_at_k, ranking_metrics
from rlrf.core.io import atomic_write_json, read_json
from rlrf.core.layout import RunLayout
from rlrf.core.threads import use_threads

KS = (1, 3, 5, 7)


def model_name(kind: str, knowledge: bool) -> str:
    return f"{kind}_knowledge" if knowledge else kind


def seeds_for(cfg, n: int | None) -> list[int]:
    n = n if n is not None else cfg.reward.seeds
    if n < 1:
        raise UserError(f"--seeds must be at least 1 (got {n})")
    return [cfg.seed + i for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Context: dataset, lists, knowledge


@dataclass
class Context:
    cfg: object
    ds: object
    lists: dict  # user id -> RerankList
    encoder: kn.CachedEncoder
    item_vecs: np.ndarray | None = None  # [n_items, Dk]
    user_texts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def genre_matrix(self) -> np.ndarray:
        return self.ds.catalog.genre_matrix()

    def split_lists(self, split: str) -> list:
        users = [u for u in self.ds.splits[split] if u in self.lists]
        return [self.lists[u] for u in users]

    def tensors(self, split: str) -> ListTensors:
        return tensorize(self.split_lists(split), self.cfg.data.lists.max_history, self.cfg.data.positive_rating)

    def user_knowledge(self, users: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [self.user_texts.get(u, "") for u in users]
        return encode_summaries(self.encoder, texts)


def encode_summaries(encoder: kn.CachedEncoder, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(user_k [N, Dk], has_k [N]); an empty or blank summary has has_k False (scored as no knowledge)."""
    has = np.array([bool(t and t.strip()) for t in texts])
    vecs = np.zeros((len(texts), encoder.dim), np.float32)
    if has.any():
        vecs[has] = encoder.encode([t for t, h in zip(texts, has) if h])
    return torch.from_numpy(vecs), torch.from_numpy(has)


def load_lists_for(cfg, ds) -> dict:
    """`<run_dir>/lists.jsonl` when `rlrf data` wrote it, else built here from the config (same seed)."""
    from rlrf.data.lists import build_lists, load_lists

    path = RunLayout(cfg.run_dir).lists
    if path.exists():
        lists = load_lists(path)
        unknown = [u for u in lists if u not in ds.users]
        if unknown:
            raise UserError(f"{path}: {len(unknown)} users not in dataset '{ds.name}' (e.g. {unknown[0]}); "
                            "re-run `rlrf data` for this config")
        return lists
    return build_lists(ds, cfg.data.lists, seed=cfg.seed, positive_rating=cfg.data.positive_rating)


def _item_texts(cfg, ds, notes: list[str]) -> list[str]:
    source = cfg.reward.item_knowledge
    if source == "self":
        return kn.item_self_texts(ds.catalog)
    texts, missing, kf = kn.item_texts_from_file(ds.catalog, Path(source))
    notes.append("item knowledge: " + kf.report())
    if missing:
        notes.append(f"item knowledge: {missing} items without a text in {source} use their own text")
    return texts


def _user_texts(cfg, ds, lists, notes: list[str]) -> dict[str, str]:
    source = cfg.reward.user_knowledge
    if source == "self":
        return kn.user_self_texts(ds.catalog, lists, cfg.data.positive_rating)
    kf = kn.load_knowledge_file(Path(source), ds.users.keys(), field_name="user")
    notes.append("user knowledge: " + kf.report())
    first = kf.first()
    absent = [u for u in lists if not first.get(u, "").strip()]
    if absent:
        notes.append(f"user knowledge: {len(absent)} users without a summary in {source} (scored as no knowledge)")
    return {u: first.get(u, "") for u in lists}


def prepare(cfg, progress: bool = True, ds=None, lists=None, encoder=None, with_knowledge: bool = True) -> Context:
    from rlrf.data.dataset import load_dataset

    use_threads(cfg)
    ds = ds if ds is not None else load_dataset(cfg.data, seed=cfg.seed)
    lists = lists if lists is not None else load_lists_for(cfg, ds)
    encoder = encoder if encoder is not None else kn.load_encoder(cfg.encoder, progress=progress)
    ctx = Context(cfg, ds, lists, encoder)
    if with_knowledge:
        ctx.item_vecs = encoder.encode(_item_texts(cfg, ds, ctx.notes))
        ctx.user_texts = _user_texts(cfg, ds, lists, ctx.notes)
    return ctx


def model_meta(ctx: Context, kind: str, knowledge: bool, seed: int) -> dict:
    """What a saved reranker records about how it was made (checked again when it is loaded)."""
    cfg = ctx.cfg
    meta = {
        "dataset": ctx.ds.name, "n_items": len(ctx.ds.catalog), "model": kind, "knowledge": knowledge,
        "encoder": ctx.encoder.key if knowledge else None,
        "user_knowledge": cfg.reward.user_knowledge if knowledge else None,
        "item_knowledge": cfg.reward.item_knowledge if knowledge else None,
        "seed": seed, "lists": cfg.data.lists.model_dump(mode="json"),
        "train_summaries": cfg.reward.train_summaries if knowledge else None,
        "train_cuts": cfg.reward.train_cuts,
    }
    if knowledge and cfg.reward.train_summaries == "pool":
        meta["pool"] = {"weights": cfg.reward.pool_weights, "size": cfg.reward.pool_size, "noise": cfg.reward.pool_noise}
    return meta


# ---------------------------------------------------------------------------------------------
# train / eval


@dataclass
class TrainingData:
    """What a run's rerankers train on: TRAIN lists (several cuts per user with `reward.train_cuts`),
    VALID lists for model selection, the user knowledge of each, and the optional item prior."""

    lists: list
    train: ListTensors
    valid: ListTensors
    train_k: tuple
    valid_k: tuple
    prior: np.ndarray | None


def training_data(ctx: Context, user_texts: Mapping[str, str] | None = None, console=None) -> TrainingData:
    """`user_texts` replaces the run's user knowledge (the rerank experiment's retrain protocol)."""
    cfg = ctx.cfg
    texts = ctx.user_texts if user_texts is None else user_texts
    train_t, valid_t = ctx.tensors("train"), ctx.tensors("valid")
    train_k = encode_summaries(ctx.encoder, [texts.get(u, "") for u in train_t.users])
    valid_k = encode_summaries(ctx.encoder, [texts.get(u, "") for u in valid_t.users])
    lists = ctx.split_lists("train")
    if cfg.reward.train_cuts > 1:  # more training lists per TRAIN user (rlrf/reward/train_cuts.py)
        lists, train_t, train_k = _more_cuts(ctx, lists)
        if console is not None:
            console.print(f"training on {len(lists)} lists ({cfg.reward.train_cuts} cuts per train user at most)")
    prior = item_prior_features(ctx.ds, ctx.ds.splits["train"], cfg.data.positive_rating) if cfg.reward.item_prior else None
    return TrainingData(lists, train_t, valid_t, train_k, valid_k, prior)


def fit_reranker(ctx: Context, data: TrainingData, kind: str, knowledge: bool, seed: int, file: Path,
                 log=None, meta: dict | None = None) -> dict:
    """Train one reranker (early-stopped on VALID MAP@5) and save it to `file`; returns the training
    summary. With `reward.train_summaries: pool` a +knowledge model reads summaries resampled each
    epoch (rlrf/reward/pool.py), which is what teaches it to read a summary at all."""
    cfg = ctx.cfg
    hp = hyperparameters(cfg.reward, kind, knowledge, data.train.items.shape[1])
    torch.manual_seed(seed)
    model = build_reranker(hp, len(ctx.ds.catalog), ctx.genre_matrix, ctx.item_vecs if knowledge else None, data.prior)
    train_k = data.train_k
    if knowledge and cfg.reward.train_summaries == "pool":
        from rlrf.reward.pool import PoolSampler

        train_k = PoolSampler(ctx, data.lists, seed, data.train_k)
    result = train_reranker(model, data.train, data.valid, cfg.reward, seed, train_k if knowledge else None,
                            data.valid_k if knowledge else None, log=log)
    save_reranker(file.parent, model, hp, {**model_meta(ctx, kind, knowledge, seed), "training": result, **(meta or {})},
                  name=file.name)
    if file.parent.parent == RunLayout(cfg.run_dir).reward and seed == cfg.seed:
        shutil.copyfile(file, file.parent / "model.pt")  # the run's own seed: the model the stages load
    return result


def seed_file(cfg, kind: str, knowledge: bool, seed: int) -> Path:
    return RunLayout(cfg.run_dir).reward_model(model_name(kind, knowledge)) / f"seed_{seed}.pt"


def train(cfg, n_seeds: int | None = None, console=None, ctx: Context | None = None,
          kinds: Sequence[str] | None = None, variants: Sequence[bool] = (False, True),
          seeds: Sequence[int] | None = None) -> dict:
    """Train base and +knowledge rerankers of `reward.models` (or `kinds`) for each seed; returns
    {name: [per-seed summaries]}. `variants` picks base (False) and/or +knowledge (True)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    seeds = list(seeds) if seeds is not None else seeds_for(cfg, n_seeds)
    ctx = ctx or prepare(cfg)
    for note in ctx.notes:
        console.print(f"[yellow]{note}[/yellow]")
    data = training_data(ctx, console=console)
    layout = RunLayout(cfg.run_dir)
    log_path = layout.reward_train_log  # one line per epoch, appended by each `train`
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log_epoch(name: str, seed: int):
        def write(record: dict) -> None:
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"model": name, "seed": seed, **record}) + "\n")
        return write

    summary: dict[str, list] = {}
    for kind in kinds or cfg.reward.models:
        for knowledge in variants:
            name = model_name(kind, knowledge)
            summary[name] = []
            for seed in seeds:
                result = fit_reranker(ctx, data, kind, knowledge, seed, seed_file(cfg, kind, knowledge, seed),
                                      log=log_epoch(name, seed))
                summary[name].append({"seed": seed, "valid_map@5": result["valid_map@5"],
                                      "best_epoch": result["best_epoch"], "seconds": result["seconds"]})
                console.print(f"{name} seed {seed}: valid MAP@5 {result['valid_map@5']:.4f} "
                              f"(best epoch {result['best_epoch']}/{result['epochs_run']}, {result['seconds']:.1f}s)")
    earlier = (read_json(layout.reward_train) or {}).get("models", {})  # models trained by another call stay
    atomic_write_json(layout.reward_train, {"dataset": ctx.ds.name, "encoder": ctx.encoder.key,
                                            "seeds": seeds, "models": {**earlier, **summary}})
    return summary


def _more_cuts(ctx: Context, train_lists: list) -> tuple[list, ListTensors, tuple]:
    """The train lists plus KAR lists at other cuts; "self" texts from each list's own history."""
    from rlrf.reward.train_cuts import extra_sasrec_train_lists, extra_train_lists

    cfg = ctx.cfg
    if cfg.reward.user_knowledge != "self":
        raise UserError("reward.train_cuts > 1 needs reward.user_knowledge: self (texts from each cut's own history)")
    users = [lst.user for lst in train_lists]
    if cfg.data.lists.source in ("kar", "future"):
        extra = extra_train_lists(ctx.ds, users, cfg.data.lists, cfg.data.positive_rating, cfg.reward.train_cuts, cfg.seed)
    else:
        extra = extra_sasrec_train_lists(cfg, ctx.ds, users, cfg.reward.train_cuts)
    lists = train_lists + extra
    texts = [kn.user_self_text(ctx.ds.catalog, lst.history, lst.history_ratings, cfg.data.positive_rating)
             for lst in lists]
    data = tensorize(lists, cfg.data.lists.max_history, cfg.data.positive_rating)
    return lists, data, encode_summaries(ctx.encoder, texts)


def evaluate(cfg, n_seeds: int | None = None, console=None, ctx: Context | None = None, split: str = "test") -> dict:
    """Score every saved model/seed on `split` users; print the table; write reward/eval.json."""
    from rich.console import Console

    console = console or Console(width=None if Console().is_terminal else 200)
    seeds = seeds_for(cfg, n_seeds)
    for kind in cfg.reward.models:
        for knowledge in (False, True):
            for seed in seeds:
                file = seed_file(cfg, kind, knowledge, seed)
                if not file.exists():
                    raise UserError(f"{file}: reward model not found; run `rlrf reward train --seeds {len(seeds)}` first")
    ctx = ctx or prepare(cfg)
    data = ctx.tensors(split)
    uk, hk = ctx.user_knowledge(data.users)
    results: dict[str, dict] = {}
    per_list: dict[str, dict[str, np.ndarray]] = {}
    ablation: dict[str, dict[str, list[float]]] = {}
    for kind in cfg.reward.models:
        for knowledge in (False, True):
            name = model_name(kind, knowledge)
            per_seed, seed_scores = [], []
            for seed in seeds:
                model, _ = load_reranker(RunLayout(cfg.run_dir).reward_model(name), ctx.ds.name, ctx.encoder.key,
                                         len(ctx.ds.catalog), ctx.genre_matrix, name=f"seed_{seed}.pt")
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
                            float(map_at_k(vs, data.labels, cfg.reward.k).mean()))
            per_list[name] = _per_list(seed_scores, data.labels)
            keys = [k for k in per_seed[0] if k != "seed"]
            arr = np.array([[r[k] for k in keys] for r in per_seed])
            results[name] = {
                "mean": dict(zip(keys, arr.mean(0).tolist())),
                "sd": dict(zip(keys, (arr.std(0, ddof=1) if len(seeds) > 1 else np.zeros(len(keys))).tolist())),
                "per_seed": per_seed,
            }
    k = cfg.reward.k
    gains = {kind: knowledge_gain(per_list[model_name(kind, True)], per_list[model_name(kind, False)],
                                  [f"ndcg@{k}", f"map@{k}"], seed=cfg.seed)
             for kind in cfg.reward.models}
    out = {"dataset": ctx.ds.name, "split": split, "n_lists": len(data), "encoder": ctx.encoder.key,
           "user_knowledge": cfg.reward.user_knowledge, "item_knowledge": cfg.reward.item_knowledge,
           "seeds": seeds, "sd": "sample sd over seeds (ddof=1)", "map_denominator": "min(K, #relevant)",
           "results": results, "random_order": random_reference(data.labels, seed=cfg.seed),
           "item_prior": item_prior_reference(ctx, data),
           "item_prior_note": "no model: each item scored by its smoothed share of ratings >= data.positive_rating "
                              "among TRAIN users' interactions, (pos + 1) / (n + 2)",
           "knowledge_gain": gains,
           f"summary_ablation_map@{k}": {kind: {v: float(np.mean(x)) for v, x in d.items()} for kind, d in ablation.items()},
           "knowledge_gain_note": "per-list (+knowledge − base), each averaged over seeds; mean and 95% "
                                  "percentile-bootstrap CI over test lists (2000 resamples)"}
    atomic_write_json(RunLayout(cfg.run_dir).reward_eval, out)
    console.print(results_table(out))
    for kind, g in gains.items():
        console.print(f"{kind.upper()} +knowledge − base on the same {len(data)} {split} lists: " + ", ".join(
            f"{m.upper()} {v['mean']:+.4f} [95% CI {v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]" for m, v in g.items()))
    for kind, d in ablation.items():
        console.print(f"{kind.upper()} +knowledge MAP@{k} with " + ", ".join(
            f"{v}: {np.mean(x):.4f}" for v, x in d.items()))
    console.print(f"written {RunLayout(cfg.run_dir).reward_eval}")
    return out


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


def item_prior_reference(ctx: Context, data: ListTensors) -> dict[str, float]:
    """A model-free reference: rank items by their smoothed positive-rating share among train users."""
    n = len(ctx.ds.catalog)
    pos, cnt = np.zeros(n + 1), np.zeros(n + 1)  # index = catalog index + 1, as in ListTensors
    for u in ctx.ds.splits["train"]:
        user = ctx.ds.users[u]
        for i, r in zip(user.items, user.ratings):
            cnt[i + 1] += 1
            pos[i + 1] += r is not None and r >= ctx.cfg.data.positive_rating
    prior = (pos + 1) / (cnt + 2)
    m = ranking_metrics(prior[data.items.numpy()], data.labels, KS)
    return {k: v for k, v in m.items() if k.split("@")[0] in ("ndcg", "map")}


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


# ---------------------------------------------------------------------------------------------
# The scoring API


class RewardScorer:
    """Score (user, summary) pairs with a trained reranker: NDCG@K / MAP@K of the user's list.

    All lists of the run are tensorized once; a batch of pairs gathers its lists by row index, runs
    one forward pass with the summaries' embeddings as user knowledge, and computes the metrics with
    the vectorised `rlrf.evaluation.metrics` functions. An empty summary is scored as no knowledge (the model's
    learned "missing" user vector) and flagged `empty`.
    """

    def __init__(self, model, lists: Mapping, encoder: kn.CachedEncoder, max_history: int = 30,
                 positive_rating: float = 4.0, ks: Sequence[int] = KS):
        self.model = model.eval()
        self.encoder = encoder
        self.ks = tuple(ks)
        records = list(lists.values())
        self.data = tensorize(records, max_history, positive_rating)
        self.row = {u: i for i, u in enumerate(self.data.users)}
        self.knowledge = bool(model.features.knowledge)

    @classmethod
    def from_run(cls, cfg, ds=None, lists=None, encoder=None, kind: str | None = None,
                 knowledge: bool | None = None, progress: bool = True, seed: int | None = None) -> "RewardScorer":
        """The run's reward model (`reward.model`, `reward.knowledge`) over the run's lists; `seed`
        loads that seed's model instead of the run's own (`model.pt`)."""
        from rlrf.data.dataset import load_dataset

        ds = ds if ds is not None else load_dataset(cfg.data, seed=cfg.seed)
        lists = lists if lists is not None else load_lists_for(cfg, ds)
        encoder = encoder if encoder is not None else kn.load_encoder(cfg.encoder, progress=progress)
        kind = kind or cfg.reward.model
        knowledge = cfg.reward.knowledge if knowledge is None else knowledge
        folder = RunLayout(cfg.run_dir).reward_model(model_name(kind, knowledge))
        model, _ = load_reranker(folder, ds.name, encoder.key, len(ds.catalog), ds.catalog.genre_matrix(),
                                 name="model.pt" if seed is None else f"seed_{seed}.pt")
        return cls(model, lists, encoder, cfg.data.lists.max_history, cfg.data.positive_rating)

    def rows(self, users: Sequence[str]) -> torch.Tensor:
        missing = [u for u in users if u not in self.row]
        if missing:
            raise UserError(f"{len(missing)} users have no reranking list (e.g. '{missing[0]}')")
        return torch.tensor([self.row[u] for u in users], dtype=torch.long)

    @torch.no_grad()
    def score_vectors(self, users: Sequence[str], user_k: torch.Tensor | None, has_k: torch.Tensor | None,
                      batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Encoding excluded: pairs given as summary embeddings [P, Dk] (+ has_k [P]). Arrays [P]."""
        rows = self.rows(users)
        out: dict[str, list] = {f"{m}@{k}": [] for k in self.ks for m in ("ndcg", "map")}
        out["margin"] = []
        for start in range(0, len(rows), batch_size):
            r = rows[start: start + batch_size]
            uk = hk = None
            if self.knowledge and user_k is not None:
                uk, hk = user_k[start: start + batch_size], has_k[start: start + batch_size] if has_k is not None else None
            scores = self._logits(r, uk, hk)
            labels = self.data.labels[r]
            for k in self.ks:
                out[f"ndcg@{k}"].append(ndcg_at_k(scores, labels, k))
                out[f"map@{k}"].append(map_at_k(scores, labels, k))
            out["margin"].append(logit_margin(scores, labels).numpy())
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}

    def _logits(self, rows: torch.Tensor, user_k, has_k) -> torch.Tensor:
        return self.model(self.data.items[rows], self.data.hist[rows], self.data.hist_r[rows], user_k, has_k)

    @torch.no_grad()
    def item_logits(self, users: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """Each pair's per-item logits [P, L]: for diagnostics that look below the list metrics
        (which items a summary moves)."""
        user_k, has_k = encode_summaries(self.encoder, texts) if self.knowledge else (None, None)
        return self._logits(self.rows(users), user_k, has_k)

    def score(self, users: Sequence[str], texts: Sequence[str], batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Pairs (users[i], texts[i]) → {"ndcg@K": [P], "map@K": [P], "margin": [P], "empty": [P] bool}."""
        if len(users) != len(texts):
            raise ValueError(f"{len(users)} users but {len(texts)} texts")
        user_k, has_k = encode_summaries(self.encoder, texts) if self.knowledge else (None, None)
        result = self.score_vectors(users, user_k, has_k, batch_size)
        result["empty"] = np.array([not (t and t.strip()) for t in texts])
        return result


def logit_margin(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per list: mean logit of its positive items − mean logit of its negatives (0 if it lacks either).

    A continuous reward: it moves with the summary even when the ranking (and so NDCG/MAP) does not.
    """
    pos = labels > 0
    n_pos, n_neg = pos.sum(-1), (~pos).sum(-1)
    mean_pos = (scores * pos).sum(-1) / n_pos.clamp_min(1)
    mean_neg = (scores * ~pos).sum(-1) / n_neg.clamp_min(1)
    return torch.where((n_pos > 0) & (n_neg > 0), mean_pos - mean_neg, torch.zeros_like(mean_pos))


def score_summaries(scorer: RewardScorer, summaries: Mapping[str, Sequence[str]],
                    batch_size: int = 4096) -> dict[str, list[dict]]:
    """{user: [summary, ...]} → {user: [{"ndcg@K": .., "map@K": .., "margin": .., "empty": bool}, ...]} in input order."""
    users = [u for u, texts in summaries.items() for _ in texts]
    texts = [t for ts in summaries.values() for t in ts]
    scored = scorer.score(users, texts, batch_size)
    out: dict[str, list[dict]] = {u: [] for u in summaries}
    for i, u in enumerate(users):
        out[u].append({k: (bool(v[i]) if k == "empty" else float(v[i])) for k, v in scored.items()})
    return out
