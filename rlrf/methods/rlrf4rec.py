"""RLRF4Rec on the shared loop: preference summaries scored by the knowledge-augmented reranker.

Per iteration: N summaries per training user from the current policy, each scored by the NDCG of the
user's reranked list with that summary as user knowledge, best vs worst as a DPO pair, LoRA update.
Evaluation uses test users only (never in pairs): the mean and best reward of the policy's N
summaries, and the reranker's NDCG@5 / MAP@5 when each test user's knowledge is the first summary.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from rlrf.core.layout import RunLayout
from rlrf.methods.loop import Method


class RLRF4Rec(Method):
    name = "rlrf4rec"

    def __init__(self, show_progress: bool = True):
        self.show_progress = show_progress
        self.dataset = None
        self.scorer = None

    def prepare(self, cfg) -> None:  # policy_0 is the policy named by cfg.llm
        from rlrf.data.dataset import load_dataset
        from rlrf.core.errors import UserError
        from rlrf.reward.model import RewardScorer, train

        if not RunLayout(cfg.run_dir).lists.exists():
            from rlrf.data.prepare import prepare_data

            prepare_data(cfg)
        self.dataset = load_dataset(cfg.data, seed=cfg.seed)
        try:
            self.scorer = RewardScorer.from_run(cfg, ds=self.dataset, progress=self.show_progress)
        except UserError as err:
            if "reward model not found" not in str(err):
                raise
            only = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"models": [cfg.reward.model]})})
            train(only, n_seeds=1)
            self.scorer = RewardScorer.from_run(cfg, ds=self.dataset, progress=self.show_progress)

    def generate(self, cfg, iteration: int) -> None:
        from rlrf.generation.generate import run_generate

        train_cfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"users": "train"})})
        run_generate(train_cfg, iteration=iteration, mode="user_preference", dataset=self.dataset,
                     show_progress=self.show_progress)

    def score(self, cfg, iteration: int) -> dict:
        from rlrf.reward.score import run_score

        stats = run_score(cfg, iteration, scorer=self.scorer, dataset=self.dataset, show_progress=self.show_progress)
        return asdict(stats)

    def align(self, cfg, iteration: int) -> Path:
        from rlrf.alignment.dpo import run_align

        run_align(cfg, iteration)
        return RunLayout(cfg.run_dir).adapter(iteration)

    def evaluate(self, cfg, label: str) -> dict:
        from rlrf.generation.generate import run_generate
        from rlrf.reward.score import score_responses

        eval_cfg = cfg.model_copy(update={
            "run_dir": RunLayout(cfg.run_dir).evaluation(label).root,
            "generate": cfg.generate.model_copy(update={"users": "test", "max_users": cfg.loop.eval_users}),
        })
        run_generate(eval_cfg, iteration=0, mode="user_preference", dataset=self.dataset,
                     show_progress=self.show_progress, lists_dir=Path(cfg.run_dir))
        responses, scored = score_responses(eval_cfg, 0, self.scorer, self.show_progress)
        return summarize_rewards(responses, scored, cfg.score.metric)


def summarize_rewards(responses: list[dict], scored: dict, metric: str) -> dict:
    """Mean reward, mean of each user's best reward, and the first summary's reranking metrics."""
    users = sorted({r["user"] for r in responses})
    rewards = np.array([scored[(r["user"], r["k"])][metric] for r in responses])
    best = [max(scored[(r["user"], r["k"])][metric] for r in responses if r["user"] == u) for u in users]
    first = [scored[(u, 0)] for u in users if (u, 0) in scored]
    return {
        "users": len(users),
        "responses": len(responses),
        "mean_reward": float(rewards.mean()),
        "mean_best_reward": float(np.mean(best)),
        "first_ndcg@5": float(np.mean([s["ndcg@5"] for s in first])),
        "first_map@5": float(np.mean([s["map@5"] for s in first])),
        "empty": int(sum(bool(s.get("empty")) for s in scored.values())),
        "flagged": int(sum("flag" in r for r in responses)),
        "rewards": [round(float(x), 5) for x in rewards],
    }
