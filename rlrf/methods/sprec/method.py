"""SPRec's arms as `Method`s on the shared loop (rlrf.methods.loop.run_loop), and `arms`, which
builds one per training seed and arm of `sprec.methods`.

Each iteration an arm SFTs the policy on the iteration users' real next items, then DPOs it on
one pair per user: the real next item against a negative from the arm's sampler (`SAMPLERS`):
the policy's own greedy answer for SPRec, a uniform or popularity-drawn catalogue item for the
baselines. `prepare` is the sliding-window SFT all arms of a seed start from, run once and found
done by the others.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_directory, atomic_write_json, atomic_write_jsonl, read_json
from rlrf.core.layout import RunLayout, adapter_complete
from rlrf.data.dataset import train_popularity
from rlrf.methods.loop import Method
from rlrf.methods.sprec.comparison import arm_label, save_seed_config, seed_root, training_seeds
from rlrf.methods.sprec.evaluation import evaluate_policy, held_out_spec, policy_slug, validation_spec
from rlrf.methods.sprec.examples import (
    answer_text, iteration_users, next_item_prompts, seeded_rng, sft_records, sft_users, sft_windows, window_records,
)
from rlrf.methods.sprec.negatives import (
    SAMPLERS, Negative, build_pairs, sampled_negatives, self_play_negatives, usable_guess,
)
from rlrf.methods.sprec.stages import generate_next_items


class SPRec(Method):
    """One arm of `rlrf sprec`: SFT'd policy, then each iteration SFT on fresh positives + DPO against
    the negatives of `SAMPLERS[name]` (self-play for "sprec", catalogue samples for the baselines).

    `root` is the arm's comparison folder (the run, or its seed_<s>); `base_root` holds the base
    policy's evaluation, shared by every seed; `label` names the arm in the loop's log and records.
    """

    def __init__(self, name: str, root: Path, dataset, grounder, show_progress: bool = True, *,
                 popularity: np.ndarray | None = None, base_root: Path | None = None, label: str | None = None):
        if name not in SAMPLERS:
            raise UserError(f"sprec.methods: unknown method '{name}' ({', '.join(SAMPLERS)})")
        self.name, self.sampler_name, self.sampler = label or name, name, SAMPLERS[name]
        self.root, self.ds, self.grounder = RunLayout(root), dataset, grounder
        self.base_root = Path(base_root) if base_root is not None else self.root.root
        self.popularity = np.asarray(popularity) if popularity is not None else train_popularity(dataset)
        self.show_progress = show_progress
        self._tokenizer = None

    def tokenizer(self, cfg):
        if self._tokenizer is None:
            from rlrf.generation.policy import policy_tokenizer

            self._tokenizer = policy_tokenizer(cfg.llm)
        return self._tokenizer

    def _evaluate(self, cfg, seed: int, spec, adapter, root: Path, out: RunLayout | None = None) -> dict:
        return evaluate_policy(cfg, spec, adapter, root, self.ds, self.grounder, self.show_progress, self.popularity,
                               out=out, seed=seed)

    def _train_sft(self, cfg, seed: int, records: list[dict], start: Path | None, adapter: Path, log: Path,
                   sft=None) -> dict:
        """SFT of the one LoRA on `records` from `start`, under the `sft:` section (or the copy `sft`)."""
        from rlrf.alignment.sft import train_sft

        return train_sft(records, adapter, log, sft=cfg.sft if sft is None else sft, llm=cfg.llm, lora=cfg.lora,
                         seed=seed, start_adapter=start, show_progress=self.show_progress)

    def prepare(self, cfg, layout: RunLayout, seed: int) -> Path:
        """The base policy's evaluation (a reference row) and the sliding-window SFT every arm starts
        from; each is done once for the whole comparison and found done by the other arms."""
        save_seed_config(cfg, self.root, seed)
        if cfg.sprec.evaluate_base:
            self._evaluate(cfg, seed, held_out_spec(self.ds, cfg), None, self.base_root)
        if not adapter_complete(self.root.sft):
            windows = sft_windows(self.ds, cfg.sprec, seed, sft_users(self.ds, cfg.sft, seed))
            records = window_records(cfg, self.ds, self.tokenizer(cfg), windows)
            if cfg.sprec.sft_until_better:
                self._sft_until_better(cfg, seed, records)
            else:
                self._train_sft(cfg, seed, records, cfg.llm.adapter, self.root.sft, self.root.sft_log)
        return self.root.sft

    def _sft_until_better(self, cfg, seed: int, records: list[dict]) -> dict:
        """SPRec's initial SFT "until validation HR beats the base model": epoch e continues epoch e−1's
        adapter for one more pass over `records`, then HR@K of its greedy answers on VALID users
        (`validation_spec`) is compared with the base policy's; the first epoch strictly above the
        base, or epoch `sprec.sft_max_epochs`, becomes `sft/adapter`. Returns the log's summary.

        Why one SFT run per epoch rather than a TrainerCallback that evaluates at epoch end: an
        epoch's adapter is then a finished policy on disk, so the validation is the same
        `evaluate_policy` (generation, grounding, cache) as every other policy's, and a killed run
        skips each finished epoch (its adapter is complete, its validation cached) instead of
        resuming a trainer whose stopping state lives in memory. What it costs: each epoch is its own
        trainer, so the learning-rate schedule (warmup, linear decay) and AdamW's moments restart every
        epoch. Epoch e shuffles with `data_seed` + e − 1, so the epochs see different orders, as one
        multi-epoch run would; `sft.trainer_args.num_train_epochs` is replaced by 1.
        """
        s = cfg.sprec
        spec = validation_spec(self.ds, cfg)
        key = f"hr@{spec.ks[0]}"
        users = spec.users
        if not users:
            raise UserError("sprec.sft_until_better: no valid user with two or more items to judge the SFT on")
        base = self._evaluate(cfg, seed, spec, None, self.base_root, out=RunLayout(self.base_root).validation("base"))
        start, epochs, reason = cfg.llm.adapter, [], None
        args = cfg.sft.trainer_args
        for epoch in range(1, s.sft_max_epochs + 1):
            adapter = self.root.sft_epoch(epoch)
            one_epoch = {**args, "num_train_epochs": 1, "data_seed": args.get("data_seed", seed) + epoch - 1}
            trained = self._train_sft(cfg, seed, records, start, adapter, self.root.sft_epoch_log(epoch),
                                      sft=cfg.sft.model_copy(update={"trainer_args": one_epoch}))
            ev = self._evaluate(cfg, seed, spec, adapter, self.root.root,
                                out=self.root.validation(policy_slug(self.root.root, adapter)))
            epochs.append({"epoch": epoch, key: ev[key], "steps": trained.get("steps"),
                           "first_loss": trained.get("first_loss"), "last_loss": trained.get("last_loss"),
                           "seconds": trained.get("seconds"), "adapter": str(adapter)})
            if self.show_progress:
                print(f"[sft] epoch {epoch}: valid {key} {ev[key]:.4f} (base {base[key]:.4f}, {len(users)} users)")
            if ev[key] > base[key]:
                reason = (f"epoch {epoch}: valid {key} {ev[key]:.4f} > base {base[key]:.4f}", "beats_base")
                break
            start = adapter
        else:
            reason = (f"sprec.sft_max_epochs = {s.sft_max_epochs} reached: valid {key} never above the base's "
                      f"{base[key]:.4f} (best {max(e[key] for e in epochs):.4f})", "max_epochs")
        summary = {
            "examples": len(records), "epochs": len(epochs), "stopped": reason[1], "reason": reason[0],
            "steps": sum(e["steps"] or 0 for e in epochs), "first_loss": epochs[0]["first_loss"],
            "last_loss": epochs[-1]["last_loss"], "seconds": round(sum(e["seconds"] or 0 for e in epochs), 1),
            "start_adapter": str(cfg.llm.adapter) if cfg.llm.adapter else None, "adapter": str(self.root.sft),
            "chosen": epochs[-1]["adapter"],
            "validation": {"metric": key, "split": "valid", "users": len(users), "base": base[key],
                           "max_epochs": s.sft_max_epochs, "per_epoch": [e[key] for e in epochs]},
            "per_epoch": epochs,
        }
        with atomic_directory(self.root.sft, tag=f"-{os.getpid()}") as tmp:  # complete = SFT done (rerun skips)
            shutil.copytree(epochs[-1]["adapter"], tmp, dirs_exist_ok=True)
            atomic_write_json(self.root.sft_log, {"summary": summary})
        return summary

    def generate(self, cfg, layout: RunLayout, seed: int, iteration: int, adapter: Path | None) -> None:
        """Self-play: the current policy's GREEDY answer for every iteration user; for users whose
        answer is the target or empty (or who need more negatives), `sprec.samples` sampled answers."""
        if not self.sampler.from_policy:
            return  # the baselines draw negatives from the catalogue, not from the policy
        s = cfg.sprec
        users = iteration_users(self.ds, s, seed, iteration)
        generate_next_items(cfg, layout=layout, seed=seed, iteration=iteration, dataset=self.ds, users=users, n=1,
                            temperature=0.0, adapter=adapter, show_progress=self.show_progress)
        candidates = self._candidates(layout, iteration, fallback=False)
        short = [u for u in users if len(self_play_negatives(
            self.grounder, self.ds.users[u].items[-1], candidates.get(u, []), cfg.score.negatives)) < cfg.score.negatives]
        if short:  # its own sub-run: its records and .meta.json never touch the greedy generation's
            generate_next_items(cfg, layout=layout.self_play_fallback, seed=seed, iteration=iteration, dataset=self.ds,
                                users=short, n=s.samples, temperature=s.fallback_temperature, adapter=adapter,
                                show_progress=self.show_progress, label=f"self-play fallback iter {iteration}")

    def _candidates(self, layout: RunLayout, iteration: int, fallback: bool = True) -> dict[str, list]:
        """user -> [(k, text, grounding)] of this iteration's predictions, k=0 (greedy) first, then (with
        `fallback`) the fallback sub-run's sampled answers as k = 1, 2, ... (their own k + 1)."""
        from rlrf.generation.generate import load_responses

        records = load_responses(layout.root, iteration, "next_item")
        if fallback:
            records += [{**r, "k": r["k"] + 1}
                        for r in load_responses(layout.self_play_fallback.root, iteration, "next_item")]
        records = sorted(records, key=lambda r: (r["user"], r["k"]))
        groundings = self.grounder.ground([r["text"] for r in records])
        out: dict[str, list] = {}
        for r, g in zip(records, groundings):
            out.setdefault(r["user"], []).append((r["k"], r["text"], g))
        return out

    def score(self, cfg, layout: RunLayout, seed: int, iteration: int) -> dict:
        if layout.pairs(iteration).exists() and layout.pairs_meta(iteration).exists():
            return read_json(layout.pairs_meta(iteration))
        users = iteration_users(self.ds, cfg.sprec, seed, iteration)
        prompts = next_item_prompts(cfg, self.ds, self.tokenizer(cfg), users)
        stats: dict = {"users": len(prompts)}
        if self.sampler.from_policy:
            negatives = self._self_play(cfg, layout, seed, iteration, prompts, stats)
        else:
            negatives = self._sampled(cfg, seed, iteration, prompts)
        cat = self.ds.catalog
        pairs = build_pairs(self.ds, prompts, negatives, self.grounder.item_similarity, iteration)
        pop = self.popularity
        chosen_pop = [pop[cat.index(p.meta["target"])] for p in prompts]
        neg_pop = [pop[n.item] for negs in negatives.values() for n in negs if n.item is not None]
        stats.update({
            "pairs": len(pairs), "without_negative": len(prompts) - len(pairs),
            "sources": dict(Counter(n.source for negs in negatives.values() for n in negs)),
            "mean_target_popularity": float(np.mean(chosen_pop)) if chosen_pop else None,
            "mean_negative_popularity": float(np.mean(neg_pop)) if neg_pop else None,
            "popularity": "train users' interactions",
        })
        atomic_write_jsonl(layout.pairs(iteration), pairs)
        atomic_write_json(layout.pairs_meta(iteration), stats)
        return stats

    def _self_play(self, cfg, layout: RunLayout, seed: int, iteration: int, prompts,
                   stats: dict) -> dict[str, list[Negative]]:
        """The policy's own answers that do not name the target (greedy first, then sampled), filled
        up with uniform catalogue items when the policy gave none, so every user makes a pair."""
        from rlrf.generation.generate import load_prompts
        from rlrf.generation.grounding import grounding_shares

        cat = self.ds.catalog
        used = load_prompts(layout.root, iteration, "next_item")
        for p in prompts:
            if used.get(p.key, {}).get("prompt_hash") != p.hash:
                raise UserError(f"{layout.iteration(iteration)}: predictions for user {p.key} "
                                "were generated from another prompt")
        candidates = self._candidates(layout, iteration)
        greedy = [(p, c) for p in prompts for c in candidates.get(p.key, [])[:1] if c[0] == 0]
        stats["grounding"] = grounding_shares([g for _, (_, _, g) in greedy])
        stats["predictions"] = sum(len(c) for c in candidates.values())
        stats["greedy_is_target"] = sum(not usable_guess(self.grounder, t, g, cat.index(p.meta["target"])) and bool(t.strip())
                                        for p, (_, t, g) in greedy)
        stats["greedy_empty"] = sum(not t.strip() for _, (_, t, _) in greedy)
        k = cfg.score.negatives
        out = {}
        for p in prompts:
            target = cat.index(p.meta["target"])
            negs = self_play_negatives(self.grounder, target, candidates.get(p.key, []), k)
            if len(negs) < k:
                exclude = {*self.grounder.twins_of(target), *self.ds.users[p.key].items[:-1],
                           *(n.item for n in negs if n.item is not None)}
                fill = sampled_negatives(seeded_rng(seed, "fallback", iteration, p.key), len(cat), k - len(negs),
                                         exclude)
                negs += [Negative(answer_text(cat, i), i, "catalogue") for i in fill]
            out[p.key] = negs
        return out

    def _sampled(self, cfg, seed: int, iteration: int, prompts) -> dict[str, list[Negative]]:
        """Catalogue items outside the user's history and the target's title, uniformly or by popularity."""
        cat = self.ds.catalog
        popularity = self.popularity if self.sampler.by_popularity else None
        source = "popularity" if self.sampler.by_popularity else "random"
        negatives = {}
        for p in prompts:
            target = cat.index(p.meta["target"])
            exclude = {*self.grounder.twins_of(target), *self.ds.users[p.key].items[:-1]}
            drawn = sampled_negatives(seeded_rng(seed, self.sampler_name, iteration, p.key), len(cat),
                                      cfg.score.negatives, exclude, popularity)
            negatives[p.key] = [Negative(answer_text(cat, i), i, source) for i in drawn]
        return negatives

    def align(self, cfg, layout: RunLayout, seed: int, iteration: int, adapter: Path | None) -> Path:
        """SFT on the iteration users' real next items, then DPO on the pairs from (and referenced to)
        that SFT'd policy."""
        from rlrf.alignment.dpo import train_dpo

        users = iteration_users(self.ds, cfg.sprec, seed, iteration)
        self._train_sft(cfg, seed, sft_records(cfg, self.ds, self.tokenizer(cfg), users), adapter,
                        layout.sft_adapter(iteration), layout.sft_adapter_log(iteration))
        train_dpo(layout, iteration, align=cfg.align, llm=cfg.llm, lora=cfg.lora, seed=seed,
                  start_adapter=layout.sft_adapter(iteration), show_progress=self.show_progress)
        return layout.adapter(iteration)

    def evaluate(self, cfg, layout: RunLayout, seed: int, label: str, adapter: Path | None) -> dict:
        return self._evaluate(cfg, seed, held_out_spec(self.ds, cfg), adapter, self.root.root)

    def outdated(self, cfg, evaluation: dict) -> bool:
        """A record of another `sprec.eval_protocol` or `sprec.ks` (its lists are rescored from the stored
        generations; nothing is generated again)."""
        return evaluation.get("protocol") != cfg.sprec.eval_protocol or evaluation.get("ks") != list(cfg.sprec.ks)


def make_grounder(cfg, ds, popularity=None):
    from rlrf.data.texts import load_encoder
    from rlrf.generation.grounding import TitleGrounder

    return TitleGrounder(ds.catalog, load_encoder(cfg.encoder, progress=False), min_similarity=cfg.sprec.min_similarity,
                         index_dir=RunLayout(cfg.run_dir).grounding,
                         popularity=train_popularity(ds) if popularity is None else popularity)


def arms(cfg, show_progress: bool = True) -> list[tuple[SPRec, RunLayout, int]]:
    """(method, layout, training seed) for each training seed and arm of `sprec.methods`, sharing one
    dataset (split by the run's `seed`), one grounder and the train-only popularity; each runs as
    ``run_loop(cfg, method, loop.iterations, layout=layout, seed=seed)``, in its own folder."""
    from rlrf.data.dataset import load_dataset

    ds = load_dataset(cfg.data, seed=cfg.seed)
    popularity = train_popularity(ds)
    grounder = make_grounder(cfg, ds, popularity)
    out = []
    for seed in training_seeds(cfg):
        root = seed_root(cfg, seed)
        for name in cfg.sprec.methods:
            out.append((SPRec(name, root.root, ds, grounder, show_progress, popularity=popularity,
                              base_root=cfg.run_dir, label=arm_label(cfg, name, seed)), root.arm(name), seed))
    return out
