"""SPRec on the shared loop: the policy writes the next item's title; its own wrong guesses are DPO negatives.

SFT and DPO on random negatives both learn the popularity bias of the data: a model that names the
blockbusters is rarely far wrong. Self-play makes the policy's own favourite answers the negatives
of the next round, so what it over-recommends is pushed down while SFT on real next items keeps it
accurate. The baselines run the same loop with random or popularity-sampled catalogue negatives.

Run layout (``<run_dir>``)::

    sft/adapter, sft/adapter_log.json    SFT on train users' real next items (policy_0 of every method)
    <method>/iter_<t>/next_item.jsonl    self-play predictions for the iteration's train users (sprec only)
    <method>/iter_<t>/pairs.jsonl        real next item vs negatives (grounded predictions / sampled items)
    <method>/iter_<t>/sft_adapter        SFT on the iteration's fresh positives, continuing the one LoRA
    <method>/iter_<t>/adapter            then DPO on the pairs, reference = that SFT'd policy
    <method>/metrics.json                the loop's record (rlrf.loop.run_loop)
    eval/<policy>/                       test users' generations and eval.json, shared by equal policies
    metrics.json, report.md, *.png       every method side by side (`rlrf report`)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from rlrf.errors import UserError
from rlrf.loop import Method, run_loop, with_adapter
from rlrf.memory import releases_memory
from rlrf.runs import atomic_write_json, atomic_write_jsonl, read_json
from rlrf.sprec_report import METHOD_TITLES

SFT_DIR = "sft"


def answer_text(catalog, i: int) -> str:
    """The completion the policy is taught for item i: "Title (year)", as the prompt asks (and as grounding embeds it)."""
    from rlrf.grounding import catalogue_text

    return catalogue_text(catalog.titles[i], catalog.years[i])


def _rng(seed: int, *parts) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def eligible_train_users(ds) -> list[str]:
    return [u for u in ds.splits["train"] if len(ds.users[u].items) >= 2]


def iteration_users(ds, cfg, iteration: int) -> list[str]:
    """Train users sampled afresh for iteration t (same for every method, so they compare fairly)."""
    users = eligible_train_users(ds)
    n = min(cfg.sprec.users_per_iteration, len(users))
    picked = _rng(cfg.seed, "iteration", iteration).choice(len(users), size=n, replace=False)
    return [users[i] for i in sorted(picked)]


def sft_users(ds, cfg) -> list[str]:
    users = eligible_train_users(ds)
    if cfg.sprec.sft_users is None or cfg.sprec.sft_users >= len(users):
        return users
    picked = _rng(cfg.seed, "sft").choice(len(users), size=cfg.sprec.sft_users, replace=False)
    return [users[i] for i in sorted(picked)]


def next_item_prompts(cfg, ds, tokenizer, users) -> list:
    """Prompts over each user's items before the last one; `meta["target"]` = the last item's id."""
    from rlrf.generate import build_prompts

    return build_prompts(cfg, ds, tokenizer, "next_item", users=users)


def load_tokenizer_for(cfg):
    from rlrf.llm import load_tokenizer, resolve_model_source

    return load_tokenizer(resolve_model_source(cfg.llm.model, cfg.llm.cache_dir))


# --------------------------------------------------------------------------------------------- SFT


@releases_memory  # the trainer's cycles and glibc's retained peak (rlrf/memory.py)
def run_sft(cfg, records: list[dict], start_adapter: Path | None, adapter_dir: Path, show_progress: bool = True) -> dict:
    """trl SFTTrainer on prompt/completion records (loss on the completion only), LoRA continued
    from `start_adapter` (or fresh). Writes `adapter_dir` atomically and a log beside it; skips when done."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from rlrf.align import adapter_complete, save_adapter, trainable_policy
    from rlrf.precision import training_precision

    adapter_dir = Path(adapter_dir)
    log_path = adapter_dir.parent / f"{adapter_dir.name}_log.json"
    if adapter_complete(adapter_dir):
        return {**(read_json(log_path) or {}).get("summary", {}), "skipped": True}
    if not records:
        raise UserError(f"{adapter_dir}: no SFT examples (no train user with two or more items)")
    for leftover in [*adapter_dir.parent.glob(f".{adapter_dir.name}.tmp-*"), *adapter_dir.parent.glob(".sft-work-*")]:
        shutil.rmtree(leftover, ignore_errors=True)  # from a killed run
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    model, tokenizer, lora = trainable_policy(cfg, None, start_adapter)
    s = cfg.sprec
    work_dir = adapter_dir.parent / f".sft-work-{os.getpid()}"
    args = SFTConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=s.sft_batch_size,
        num_train_epochs=s.sft_epochs,
        learning_rate=s.sft_learning_rate,
        lr_scheduler_type=cfg.align.lr_scheduler,
        warmup_steps=0,
        weight_decay=0.0,
        max_length=cfg.align.max_length,
        completion_only_loss=True,
        packing=False,
        **training_precision(model),  # bf16 autocast over bf16 weights where the CPU/GPU has bf16
        use_cpu=next(model.parameters()).device.type == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=not show_progress,
        gradient_checkpointing=cfg.align.gradient_checkpointing,
    )
    try:
        trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=lora,
                             train_dataset=Dataset.from_list(records))
        result = trainer.train()
        steps = [e for e in trainer.state.log_history if "loss" in e]
        summary = {
            "examples": len(records), "steps": int(result.global_step),
            "first_loss": steps[0]["loss"] if steps else None, "last_loss": steps[-1]["loss"] if steps else None,
            "start_adapter": str(start_adapter) if start_adapter else None, "adapter": str(adapter_dir),
            "seconds": round(time.perf_counter() - started, 1),
        }
        save_adapter(trainer.model, adapter_dir, before_rename=lambda: atomic_write_json(
            log_path, {"summary": summary, "steps": trainer.state.log_history}))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return {**summary, "skipped": False}


def sft_records(cfg, ds, tokenizer, users) -> list[dict]:
    cat = ds.catalog
    return [{"prompt": p.text, "completion": answer_text(cat, cat.index(p.meta["target"]))}
            for p in next_item_prompts(cfg, ds, tokenizer, users)]


# --------------------------------------------------------------------------------------- negatives


def self_play_negatives(target: int, groundings, k: int) -> list[int]:
    """Up to k distinct grounded predictions that are not the target, in sampling order."""
    out: list[int] = []
    for g in groundings:
        if g.item is not None and g.item != target and g.item not in out:
            out.append(g.item)
    return out[:k]


def sampled_negatives(rng: np.random.Generator, n_items: int, k: int, exclude: set[int],
                      popularity: np.ndarray | None = None) -> list[int]:
    """k distinct catalogue items outside `exclude`, uniformly or in proportion to popularity."""
    weights = np.ones(n_items) if popularity is None else np.asarray(popularity, dtype=np.float64) + 1e-9
    weights = weights.copy()
    weights[list(exclude)] = 0.0
    k = min(k, int((weights > 0).sum()))
    return rng.choice(n_items, size=k, replace=False, p=weights / weights.sum()).tolist() if k else []


def build_pairs(ds, prompts, negatives: dict[str, list[int]], similarity=None, iteration: int = 0) -> list[dict]:
    """Pairs in the align stage's format: chosen = the real next item, rejected = the negatives.

    `margin` (RosePO's oracle) = 1 − cos(target, first negative) when `similarity` is given: a
    negative that reads like the target is a less certain "worse" answer, so it is smoothed more.
    """
    cat = ds.catalog
    pairs = []
    for p in prompts:
        negs = negatives.get(p.key, [])
        if not negs:
            continue
        target = cat.index(p.meta["target"])
        if target in negs:
            raise AssertionError(f"user {p.key}: the target was drawn as its own negative")
        texts = [answer_text(cat, i) for i in negs]
        margin = 1.0 - float(similarity(target, negs[0])) if similarity is not None else 1.0
        pairs.append({"user": p.key, "iter": iteration, "prompt": p.text, "chosen": answer_text(cat, target),
                      "rejected": texts[0], "rejected_list": texts, "margin": round(max(margin, 1e-6), 6)})
    return pairs


# --------------------------------------------------------------------------------------- the method


class SPRecMethod(Method):
    """One arm of `rlrf sprec`: "sprec" (self-play negatives) or a baseline ("dpo_random", "dpo_popularity")."""

    def __init__(self, name: str, root: Path, dataset, grounder, show_progress: bool = True):
        if name not in METHOD_TITLES:
            raise UserError(f"sprec.methods: unknown method '{name}' ({', '.join(METHOD_TITLES)})")
        self.name, self.root, self.ds, self.grounder = name, Path(root), dataset, grounder
        self.show_progress = show_progress
        self._tokenizer = None

    def tokenizer(self, cfg):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer_for(cfg)
        return self._tokenizer

    def prepare(self, cfg) -> None:
        """Data and the SFT policy come from `run_sprec`, shared by all methods."""

    def generate(self, cfg, iteration: int) -> None:
        if self.name != "sprec":
            return  # the baselines draw negatives from the catalogue, not from the policy
        from rlrf.generate import run_generate

        gen = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"n": cfg.sprec.samples})})
        run_generate(gen, iteration=iteration, mode="next_item", dataset=self.ds, users=iteration_users(self.ds, cfg, iteration),
                     show_progress=self.show_progress)

    def judge(self, cfg, iteration: int) -> dict:
        from rlrf.generate import iter_dir

        out_dir = iter_dir(cfg.run_dir, iteration)
        meta_path = out_dir / "pairs.meta.json"
        if (out_dir / "pairs.jsonl").exists() and meta_path.exists():
            return read_json(meta_path)
        users = iteration_users(self.ds, cfg, iteration)
        prompts = next_item_prompts(cfg, self.ds, self.tokenizer(cfg), users)
        cat, k = self.ds.catalog, cfg.score.negatives
        stats: dict = {"users": len(prompts)}
        negatives: dict[str, list[int]] = {}
        if self.name == "sprec":
            from rlrf.generate import load_prompts, load_responses
            from rlrf.grounding import grounding_shares

            used = load_prompts(cfg.run_dir, iteration, "next_item")
            for p in prompts:
                if used.get(p.key, {}).get("prompt_hash") != p.hash:
                    raise UserError(f"{out_dir}: predictions for user {p.key} were generated from another prompt")
            records = sorted(load_responses(cfg.run_dir, iteration, "next_item"), key=lambda r: (r["user"], r["k"]))
            groundings = self.grounder.ground([r["text"] for r in records])
            by_user: dict[str, list] = {}
            for r, g in zip(records, groundings):
                by_user.setdefault(r["user"], []).append(g)
            for p in prompts:
                negatives[p.key] = self_play_negatives(cat.index(p.meta["target"]), by_user.get(p.key, []), k)
            stats["grounding"] = grounding_shares(groundings)
            stats["predictions"] = len(records)
            stats["predicted_target"] = sum(
                g.item == cat.index(r["target"]) for r, g in zip(records, groundings))
        else:
            popularity = np.asarray(cat.popularity) if self.name == "dpo_popularity" else None
            for p in prompts:
                target = cat.index(p.meta["target"])
                exclude = {target, *self.ds.users[p.key].items[:-1]}
                negatives[p.key] = sampled_negatives(_rng(cfg.seed, self.name, iteration, p.key), len(cat), k,
                                                     exclude, popularity)
        pairs = build_pairs(self.ds, prompts, negatives, self.grounder.item_similarity, iteration)
        chosen_pop = [cat.popularity[cat.index(p.meta["target"])] for p in prompts]
        neg_pop = [cat.popularity[i] for negs in negatives.values() for i in negs]
        stats.update({
            "pairs": len(pairs), "without_negative": len(prompts) - len(pairs),
            "mean_target_popularity": float(np.mean(chosen_pop)) if chosen_pop else None,
            "mean_negative_popularity": float(np.mean(neg_pop)) if neg_pop else None,
        })
        atomic_write_jsonl(out_dir / "pairs.jsonl", pairs)
        atomic_write_json(meta_path, stats)
        return stats

    def align(self, cfg, iteration: int) -> Path:
        from rlrf.align import run_align
        from rlrf.generate import iter_dir

        out_dir = iter_dir(cfg.run_dir, iteration)
        users = iteration_users(self.ds, cfg, iteration)
        sft_adapter = out_dir / "sft_adapter"
        run_sft(cfg, sft_records(cfg, self.ds, self.tokenizer(cfg), users), cfg.llm.adapter, sft_adapter,
                self.show_progress)
        run_align(with_adapter(cfg, sft_adapter), iteration, show_progress=self.show_progress)
        return out_dir / "adapter"

    def evaluate(self, cfg, label: str) -> dict:
        return evaluate_policy(cfg, self.root, self.ds, self.grounder, self.show_progress)


# -------------------------------------------------------------------------------------- evaluation


def policy_slug(root: Path, adapter: Path | None) -> str:
    """A folder name for a policy: ``base`` or its adapter's path under the run (``sft__adapter``)."""
    if adapter is None:
        return "base"
    adapter = Path(adapter)
    try:
        rel = adapter.resolve().relative_to(Path(root).resolve())
    except ValueError:
        return "adapter_" + hashlib.sha256(str(adapter.resolve()).encode()).hexdigest()[:12]
    return "__".join(rel.parts)


def evaluation_users(ds, cfg) -> list[str]:
    users = [u for u in ds.splits["test"] if len(ds.users[u].items) >= 2]
    return users[: cfg.sprec.eval_users] if cfg.sprec.eval_users else users


def recommendations(grounder, ds, records: list[dict], histories: dict[str, list[int]], k: int, topk: str,
                    exclude_history: bool) -> tuple[list[str], np.ndarray, list]:
    """(users, top-K item indices [n, k] padded with -1, groundings of each user's first text).

    nearest: the grounded item first, then the items nearest the generated title's embedding.
    samples: the grounded items of the user's sampled titles, most frequent first.
    """
    by_user: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: (r["user"], r["k"])):
        by_user.setdefault(r["user"], []).append(r)
    users = sorted(by_user)
    first = grounder.ground([by_user[u][0]["text"] for u in users])
    if topk == "nearest":
        exclude = [histories[u] if exclude_history else [] for u in users]
        recs = grounder.nearest([by_user[u][0]["text"] for u in users], k, exclude=exclude, grounded_first=True)
    else:
        recs = np.full((len(users), k), -1, dtype=np.int64)
        texts = [r["text"] for u in users for r in by_user[u]]
        grounded = iter(grounder.ground(texts))
        for row, u in enumerate(users):
            seen = set(histories[u]) if exclude_history else set()
            counts = Counter()
            for _ in by_user[u]:
                g = next(grounded)
                if g.item is not None and g.item not in seen:
                    counts[g.item] += 1
            items = [i for i, _ in counts.most_common(k)]
            recs[row, : len(items)] = items
    return users, recs, first


def bias_and_ranking_metrics(recs: np.ndarray, targets: np.ndarray, history_items: np.ndarray, catalog,
                             ks: list[int]) -> dict:
    from rlrf import metrics as m

    ranks = m.target_ranks(recs, targets)
    genre = catalog.genre_matrix()
    out: dict = {}
    for k in ks:
        hr, ndcg = m.hit_ndcg_at_k(ranks, k)
        mgu, dgu = m.mgu_dgu(recs, history_items, genre, k)
        filled = recs[:, :k][recs[:, :k] >= 0]
        out.update({
            f"hr@{k}": float(hr.mean()), f"ndcg@{k}": float(ndcg.mean()),
            f"div_ratio@{k}": m.div_ratio(recs, k), f"or_ratio@{k}": m.or_ratio(recs, k),
            f"mgu@{k}": mgu, f"dgu@{k}": dgu,
            f"mean_popularity@{k}": m.mean_popularity(recs, catalog.popularity, k) if filled.size else None,
        })
    return out


def popularity_bins(popularity) -> np.ndarray:
    """Log-spaced popularity bins over the catalogue (1 .. max count): the long tail gets its own bins."""
    top = max(float(np.max(popularity)), 2.0)
    return np.unique(np.round(np.geomspace(1, top + 1, 11)))


def evaluate_policy(cfg, root: Path, ds, grounder, show_progress: bool = True) -> dict:
    """HR/NDCG, bias metrics and popularity histograms of the policy named by cfg.llm on test users.

    Cached in ``<root>/eval/<policy>/eval.json``: methods that share a policy (SFT) evaluate it once.
    """
    from rlrf import metrics as m
    from rlrf.generate import iter_dir, load_responses, run_generate

    s = cfg.sprec
    out_dir = Path(root) / "eval" / policy_slug(root, cfg.llm.adapter)
    cached = read_json(out_dir / "eval.json")
    if cached is not None:
        return cached
    sampled = s.topk == "samples"
    gen = cfg.model_copy(update={"run_dir": out_dir, "generate": cfg.generate.model_copy(update={
        "n": s.eval_samples if sampled else 1, "temperature": cfg.generate.temperature if sampled else 0.0})})
    users = evaluation_users(ds, cfg)
    run_generate(gen, iteration=0, mode="next_item", dataset=ds, users=users, show_progress=show_progress)
    records = load_responses(out_dir, 0, "next_item")
    cat = ds.catalog
    hist = {u: ds.users[u].items[:-1] for u in users}  # everything before the target, not only what the prompt shows
    k_max = max(s.ks)
    rec_users, recs, first = recommendations(grounder, ds, records, hist, k_max, s.topk, s.exclude_history)
    targets = np.array([ds.users[u].items[-1] for u in rec_users])
    history_items = np.array([i for u in rec_users for i in hist[u]])
    result = {
        "policy": str(cfg.llm.adapter) if cfg.llm.adapter else "base",
        "users": len(rec_users), "topk": s.topk,
        **bias_and_ranking_metrics(recs, targets, history_items, cat, s.ks),
        "grounding": _shares(first),
        "top1_is_target": float(np.mean([g.item == t for g, t in zip(first, targets)])),
    }
    edges = popularity_bins(cat.popularity)
    rec_hist, _ = m.popularity_histogram(recs[:, :k_max], cat.popularity, edges)
    his_hist, _ = m.popularity_histogram(history_items, cat.popularity, edges)
    result["popularity_histogram"] = {"edges": edges.tolist(), "recommended": rec_hist.round(5).tolist(),
                                      "history": his_hist.round(5).tolist()}
    atomic_write_jsonl(iter_dir(out_dir, 0) / "recommendations.jsonl", (
        {"user": u, "target": cat.ids[t], "items": [cat.ids[i] for i in row if i >= 0]}
        for u, t, row in zip(rec_users, targets.tolist(), recs.tolist())))
    atomic_write_json(out_dir / "eval.json", result)
    return result


def _shares(groundings) -> dict:
    from rlrf.grounding import grounding_shares

    return {k: round(v, 5) for k, v in grounding_shares(groundings).items()}


# ------------------------------------------------------------------------------------ orchestration


def make_grounder(cfg, ds):
    from recmodels.knowledge import load_encoder
    from rlrf.grounding import TitleGrounder

    return TitleGrounder(ds.catalog, load_encoder(cfg.encoder, progress=False),
                         min_similarity=cfg.sprec.min_similarity, index_dir=Path(cfg.run_dir) / "grounding")


def run_sprec(cfg, show_progress: bool = True, log=print) -> dict:
    """SFT, then `loop.iterations` rounds of each method in `sprec.methods`; resumable. Returns metrics.json."""
    from rlrf.config import save_config
    from rlrf.data import load_dataset

    root = Path(cfg.run_dir)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
    grounder = make_grounder(cfg, ds)
    metrics_path = root / "metrics.json"
    metrics = read_json(metrics_path) or {"method": "sprec", "evaluations": {}, "methods": {}}

    if cfg.sprec.evaluate_base and "base" not in metrics["evaluations"]:
        log("[sprec] evaluating the base policy (before SFT)")
        metrics["evaluations"]["base"] = evaluate_policy(cfg, root, ds, grounder, show_progress)
        atomic_write_json(metrics_path, metrics)

    sft_adapter = root / SFT_DIR / "adapter"
    users = sft_users(ds, cfg)
    log(f"[sprec] SFT on the next items of {len(users)} train users")
    summary = run_sft(cfg, sft_records(cfg, ds, load_tokenizer_for(cfg), users), cfg.llm.adapter, sft_adapter, show_progress)
    metrics["sft"] = summary

    for name in cfg.sprec.methods:
        method_cfg = with_adapter(cfg.model_copy(update={"run_dir": root / name}), sft_adapter)
        method = SPRecMethod(name, root, ds, grounder, show_progress)
        metrics["methods"][name] = run_loop(method_cfg, method, cfg.loop.iterations, log=log)
        atomic_write_json(metrics_path, metrics)
    metrics["evaluations"]["sft"] = metrics["methods"][cfg.sprec.methods[0]]["evaluations"]["policy_0"]
    atomic_write_json(metrics_path, metrics)
    return metrics
