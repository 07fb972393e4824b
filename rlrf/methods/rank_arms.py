"""The arms of `rlrf rank`: what each trains on (`ARMS`), its preference data (`build_pairs`), its
`align:` section (`arm_align`), and `RankArm`, one arm as a `Method` on the shared loop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from rlrf.core.layout import RunLayout, adapter_complete
from rlrf.methods.loop import Method
from rlrf.methods.rank_context import RankContext
from rlrf.methods.rank_evaluation import evaluate_policy, greedy_answers
from rlrf.methods.rank_examples import (
    RankExample, RankPrompts, dmpo_pairwise, ground_answer, hallucination_negative, margin_for_epsilon, oracle_epsilon,
    popular_negative, seeded_rng, self_hard_negative, uniform_negatives,
)


@dataclass(frozen=True)
class ArmSpec:
    """One arm: its loss (None: SFT alone), negatives per example, where they come from, and
    whether the data is DMPO's pairwise form or carries RosePO's personalised ε."""

    title: str
    loss: str | None
    negatives: str = "uniform"  # uniform | self | popularity | hallucination
    multi: bool = False  # rank.negatives negatives per example (else one)
    pairwise: bool = False
    smoothing: bool = False


ARMS = {
    "sft": ArmSpec("SFT", None),
    "dpo": ArmSpec("DPO", "dpo"),
    "sdpo": ArmSpec("S-DPO", "sdpo", multi=True),
    "dmpo": ArmSpec("DMPO (shared prompt)", "dmpo", multi=True),
    "dmpo_pairwise": ArmSpec("DMPO (pairwise instructions)", "dmpo", multi=True, pairwise=True),
    "rosepo_self": ArmSpec("RosePO self-hard", "rosepo", "self", smoothing=True),
    "rosepo_popularity": ArmSpec("RosePO popularity", "rosepo", "popularity", smoothing=True),
    "rosepo_hallucination": ArmSpec("RosePO hallucination", "rosepo", "hallucination", smoothing=True),
    "trl": ArmSpec("trl", None),  # the loss is rank.trl_loss
}


def arm_align(cfg, arm: str):
    """The arm's `align:` section: its loss, the shared step budget (trainer_args.max_steps =
    rank.steps), ε read through the margin with eps_max = rank.eps_cap."""
    loss = cfg.rank.trl_loss if arm == "trl" else ARMS[arm].loss
    return cfg.align.model_copy(update={
        "loss": loss or cfg.align.loss, "rosepo_eps_max": cfg.rank.eps_cap,
        "trainer_args": {**cfg.align.trainer_args, "max_steps": cfg.rank.steps}})


class RankArm(Method):
    """One arm on the shared loop: `prepare` is the SFT every arm shares (trained once, found done by
    the others), `generate` the SFT policy's answers (self-hard negatives only), `score` the arm's
    preference data, `align` DPO-style training under the arm's `align` section (`arm_align`),
    `evaluate` HR@1 / ValidRatio."""

    def __init__(self, name: str, root: Path, ctx: RankContext, prompts: RankPrompts, align, show_progress: bool = True,
                 label: str | None = None):
        if name not in ARMS:
            raise UserError(f"rank.arms: unknown arm '{name}' ({', '.join(ARMS)})")
        self.arm, self.spec, self.name = name, ARMS[name], label or name
        self.root, self.ctx, self.prompts, self.show_progress = RunLayout(root), ctx, prompts, show_progress
        self.align_section = align

    def prepare(self, cfg, layout: RunLayout, seed: int) -> Path:
        from rlrf.alignment.sft import train_sft

        if not adapter_complete(self.root.sft):
            records = [{"prompt": self.prompts.ranking(ex).text, "completion": self.ctx.keys.texts[ex.target]}
                       for ex in self.ctx.sft_examples]
            train_sft(records, self.root.sft, self.root.sft_log, sft=cfg.sft, llm=cfg.llm, lora=cfg.lora, seed=seed,
                      start_adapter=cfg.llm.adapter, show_progress=self.show_progress)
        return self.root.sft

    def generate(self, cfg, layout: RunLayout, seed: int, iteration: int, adapter: Path | None) -> None:
        """Self-hard: the SFT policy's greedy answer to each preference example."""
        if self.spec.negatives != "self" or layout.responses(iteration, "next_item").exists():
            return
        exs = self.ctx.pair_examples
        texts = greedy_answers(cfg, [self.prompts.ranking(ex) for ex in exs], adapter, seed)
        atomic_write_jsonl(layout.responses(iteration, "next_item"),
                           ({"user": ex.key, "iter": iteration, "k": 0, "text": t} for ex, t in zip(exs, texts)))

    def score(self, cfg, layout: RunLayout, seed: int, iteration: int) -> dict:
        if layout.pairs(iteration).exists() and layout.pairs_meta(iteration).exists():
            return read_json(layout.pairs_meta(iteration))
        answers = None
        if self.spec.negatives == "self":
            texts = {r["user"]: r["text"] for r in read_jsonl(layout.responses(iteration, "next_item"))}
            answers = {ex.key: ground_answer(texts[ex.key], ex.candidates, self.ctx.keys) for ex in self.ctx.pair_examples}
        pairs, stats = build_pairs(self.arm, cfg, self.ctx, self.prompts, answers, seed=seed, align=self.align_section,
                                   iteration=iteration)
        atomic_write_jsonl(layout.pairs(iteration), pairs)
        atomic_write_json(layout.pairs_meta(iteration), stats)
        return stats

    def align(self, cfg, layout: RunLayout, seed: int, iteration: int, adapter: Path | None) -> Path:
        from rlrf.alignment.dpo import train_dpo

        train_dpo(layout, iteration, align=self.align_section, llm=cfg.llm, lora=cfg.lora, seed=seed,
                  start_adapter=adapter, show_progress=self.show_progress)
        return layout.adapter(iteration)

    def evaluate(self, cfg, layout: RunLayout, seed: int, label: str, adapter: Path | None) -> dict:
        return evaluate_policy(cfg, adapter, self.root.root, self.ctx, self.prompts, seed)


def negatives_of(arm: str, cfg, ctx: RankContext, ex: RankExample, seed: int, answer=None) -> tuple[list[int], str]:
    """The arm's rejected items for one example under training seed `seed`, and where they came from."""
    spec, k = ARMS[arm], cfg.rank.negatives
    uniform = uniform_negatives(seeded_rng(seed, "rank-negatives", ex.key), ex, k)  # shared by the uniform arms
    if spec.negatives == "uniform":
        return (uniform if spec.multi else uniform[:1]), "uniform"
    if spec.negatives == "popularity":
        return [popular_negative(ex, ctx.popularity)], "popularity"
    if spec.negatives == "hallucination":
        never = set(ctx.ds.users[ex.user].items)
        return [hallucination_negative(seeded_rng(seed, "rank-hallucination", ex.key), ex, ctx.keys, never)], "hallucination"
    hard = self_hard_negative(answer, ex) if answer is not None else None
    return ([hard], "self") if hard is not None else (uniform[:1], "uniform_fallback")


def build_pairs(arm: str, cfg, ctx: RankContext, prompts: RankPrompts, answers: dict | None, *, seed: int, align,
                iteration: int = 0):
    """The arm's records in the align stage's format under training seed `seed`, and their statistics
    (pairs.meta.json); RosePO's ε becomes the margin through the arm's `align` section (`arm_align`)."""
    spec, texts = ARMS[arm], ctx.keys.texts
    exs = ctx.pair_examples
    scores = ctx.oracle_scores(exs) if spec.smoothing else {}
    pairs, sources, eps_all = [], Counter(), []
    a = align
    for ex in exs:
        negs, source = negatives_of(arm, cfg, ctx, ex, seed, (answers or {}).get(ex.key))
        sources[source] += 1
        if ex.target in negs:
            raise AssertionError(f"{ex.key}: the target was drawn as its own negative")
        base = {"user": ex.key, "iter": iteration, "rejected_items": [ctx.ds.catalog.ids[i] for i in negs],
                "source": source}
        if spec.pairwise:  # DMPO's own form: one "rank these two" instruction per negative
            for first, second, neg in dmpo_pairwise(seeded_rng(seed, "rank-dmpo-order", ex.key), ex, negs):
                chosen, rejected = f"{texts[ex.target]}, {texts[neg]}", f"{texts[neg]}, {texts[ex.target]}"
                pairs.append({**base, "prompt": prompts.pairwise(ex, first, second).text, "chosen": chosen,
                              "rejected": rejected, "rejected_list": [rejected], "margin": 1.0,
                              "rejected_items": [ctx.ds.catalog.ids[neg]]})
            continue
        record = {**base, "prompt": prompts.ranking(ex).text, "chosen": texts[ex.target], "rejected": texts[negs[0]],
                  "rejected_list": [texts[i] for i in negs], "margin": 1.0}
        if spec.smoothing:
            s = scores[ex.key]
            eps = oracle_epsilon(float(s[ex.target]), float(s[negs[0]]), temperature=cfg.rank.oracle_temperature,
                                 cap=cfg.rank.eps_cap)
            record.update(epsilon=round(eps, 6), margin=margin_for_epsilon(eps, eps_max=a.rosepo_eps_max, tau=a.rosepo_tau))
            eps_all.append(eps)
        pairs.append(record)
    stats = {"pairs": len(pairs), "examples": len(exs), "sources": dict(sources),
             "mean_rejected_popularity": float(np.mean([ctx.popularity[ctx.ds.catalog.index(i)]
                                                        for p in pairs for i in p["rejected_items"]]))}
    if eps_all:
        e = np.asarray(eps_all)
        stats["epsilon"] = {"mean": float(e.mean()), "min": float(e.min()), "max": float(e.max()),
                            "quantiles": {str(q): float(np.quantile(e, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
                            "at_cap": float((e >= cfg.rank.eps_cap - 1e-12).mean()),
                            "histogram": np.histogram(e, bins=10, range=(0.0, 0.5))[0].tolist()}
    return pairs, stats
