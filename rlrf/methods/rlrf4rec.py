"""RLRF4Rec on the shared loop: preference summaries scored by the knowledge-augmented reranker.

Per iteration: N summaries per training user from the current policy, each scored by the NDCG of the
user's reranked list with that summary as user knowledge, best vs worst as a DPO pair, LoRA update.
Evaluation uses test users only (never in pairs): the mean and best reward of the policy's N
summaries, and the reranker's NDCG@5 / MAP@5 when each test user's knowledge is the first summary.

The run's inputs (the data split and lists, the reward model, the independent evaluator) belong to
the config's run directory and data seed (`cfg.run_dir`, `cfg.seed`), prepared once; what the loop
iterates (samples, pairs, adapters, evaluations) goes to the loop's `layout` under its `seed`.
`rlrf run` passes the run directory itself and `cfg.seed`, so the two are one.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from rlrf.core.layout import RunLayout
from rlrf.core.progress import stage
from rlrf.core.records import Evaluation, PerUser
from rlrf.evaluation.copying import copied_share
from rlrf.evaluation.text import ends_on_its_own, has_repeat
from rlrf.methods.loop import Method


class RLRF4Rec(Method):
    name = "rlrf4rec"

    def __init__(self, show_progress: bool = True):
        self.show_progress = show_progress
        self.dataset = None
        self.scorer = None
        self.evaluator = None  # an independent reranker that scores the greedy summaries (not optimised)
        self._tokenizer = None

    def prepare(self, cfg, layout: RunLayout, seed: int) -> None:  # policy_0 is the policy named by cfg.llm
        from rlrf.data.dataset import load_dataset
        from rlrf.reward.scorer import RewardScorer
        from rlrf.reward.training import model_name, train

        run = RunLayout(cfg.run_dir)  # the run's inputs (module docstring)
        if not run.lists.exists():
            from rlrf.data.prepare import prepare_data

            stage(f"[{self.name}] data: users, split and reranking lists from {cfg.data.path or 'ml-100k'}")
            prepare_data(cfg)
        self.dataset = load_dataset(cfg.data, seed=cfg.seed)
        if not run.reward_model_file(model_name(cfg.reward.model, cfg.reward.knowledge)).exists():
            stage(f"[{self.name}] reward model: training {cfg.reward.model}")
            train(cfg, kinds=[cfg.reward.model], seeds=[cfg.seed])
        self.scorer = RewardScorer.from_run(cfg, ds=self.dataset, progress=self.show_progress)
        if cfg.loop.independent_evaluator:
            self.evaluator = independent_evaluator(cfg, self.dataset, self.scorer)

    def generate(self, cfg, layout: RunLayout, seed: int, iteration: int, adapter: Path | None) -> None:
        """N summaries per training user (DPO); the online methods sample their own inside the trainer."""
        from rlrf.generation.backends import resolve_backend
        from rlrf.generation.generate import generate_texts, policy_for

        if cfg.align.method != "dpo":
            return
        backend = resolve_backend(cfg.generate.backend)
        policy = policy_for(cfg.llm, backend, adapter=adapter)
        prompts = self.training_prompts(cfg, policy.tokenizer)
        generate_texts(cfg.generate, prompts, policy, layout, mode="user_preference", iteration=iteration, seed=seed,
                       backend=backend, show_progress=self.show_progress)

    def score(self, cfg, layout: RunLayout, seed: int, iteration: int) -> dict:
        from rlrf.reward.score import score_and_pair

        if cfg.align.method != "dpo":  # the reward function scores each sampled group during training
            return {"prompts": len(self._online_records(cfg))}
        stats = score_and_pair(layout, iteration, self.scorer, cfg.score, set(self.dataset.splits["train"]),
                               self.show_progress)
        return asdict(stats)

    def align(self, cfg, layout: RunLayout, seed: int, iteration: int, adapter: Path | None) -> Path:
        from rlrf.alignment.dpo import train_dpo
        from rlrf.alignment.online import train_online

        if cfg.align.method == "dpo":
            train_dpo(layout, iteration, align=cfg.align, llm=cfg.llm, lora=cfg.lora, seed=seed, start_adapter=adapter,
                      show_progress=self.show_progress)
        else:
            metric = cfg.score.metric
            train_online(layout, iteration, self._online_records(cfg),
                         lambda users, texts: self.scorer.score(users, texts)[metric], method=cfg.align.method,
                         online=cfg.online, generate=cfg.generate, llm=cfg.llm, lora=cfg.lora, seed=seed,
                         start_adapter=adapter, show_progress=self.show_progress)
        return layout.adapter(iteration)

    def training_users(self, cfg) -> list[str]:
        """The first `generate.max_users` training users whose list can rank: a list of only liked
        (or only other) items ranks the same whatever the summary says, so every summary of that
        user gets one reward and makes no pair (DPO) or a zero-variance group (online)."""
        rankable = [u for u in self.dataset.splits["train"] if u in self.scorer.row and self._rankable(u)]
        return rankable[: cfg.generate.max_users]

    def training_prompts(self, cfg, tokenizer) -> list:
        """The training users' prompts, from the history the reranker sees (the run's lists)."""
        from rlrf.generation.generate import build_prompts

        return build_prompts(cfg, self.dataset, tokenizer, "user_preference", users=self.training_users(cfg))

    def _online_records(self, cfg) -> list[dict]:
        """The same users' prompts, for the online trainers (which sample their own summaries)."""
        from rlrf.generation.policy import policy_tokenizer

        if self._tokenizer is None:
            self._tokenizer = policy_tokenizer(cfg.llm)
        return [{"prompt": p.text, "user": p.key} for p in self.training_prompts(cfg, self._tokenizer)]

    def _rankable(self, user: str) -> bool:
        labels = self.scorer.data.labels[self.scorer.row[user]]
        return bool((labels > 0).any() and (labels == 0).any())

    def evaluate(self, cfg, layout: RunLayout, seed: int, label: str, adapter: Path | None) -> dict:
        """Every test user (or the first `loop.eval_users`): N sampled summaries for the mean and
        best-of-N reward, and one greedy summary for the reranking metrics, scored by the reward
        model and, when there is one, by the independent evaluator (see `prepare`)."""
        from rlrf.core.threads import use_threads
        from rlrf.generation.backends import resolve_backend
        from rlrf.generation.generate import (generate_texts, load_prompts, make_prompts, policy_for, sampling_for,
                                              select_users, visible_histories)
        from rlrf.reward.score import score_iteration

        mode, gen = "user_preference", cfg.generate
        sub = layout.evaluation(label)
        use_threads(cfg)
        backend = resolve_backend(gen.backend)
        policy = policy_for(cfg.llm, backend, adapter=adapter)  # one policy for both passes
        max_history = cfg.data.lists.max_history
        prompts = make_prompts(gen, self.dataset, policy.tokenizer, mode,
                               users=select_users(self.dataset, "test", cfg.loop.eval_users), max_history=max_history,
                               histories=visible_histories(self.dataset, RunLayout(cfg.run_dir).lists, max_history))
        greedy = replace(sampling_for(gen, mode), temperature=0.0)
        for out, sampling, n, kind in ((sub, None, None, f"{gen.n} samples"), (sub.greedy, greedy, 1, "greedy")):
            generate_texts(gen, prompts, policy, out, mode=mode, iteration=0, seed=seed, sampling=sampling, n=n,
                           backend=backend, show_progress=self.show_progress,
                           label=f"evaluate {label}: test users, {kind}")
        responses, scored = score_iteration(sub, 0, self.scorer, cfg.score, self.show_progress,
                                            label=f"score {label} samples")
        firsts, first_scored = score_iteration(sub.greedy, 0, self.scorer, cfg.score, self.show_progress,
                                               label=f"score {label} greedy")
        independent = None
        if self.evaluator is not None:
            independent = self.evaluator.score([r["user"] for r in firsts], [r["text"] for r in firsts])
        prompts = {u: r["prompt"] for u, r in load_prompts(sub.greedy.root, 0).items()}
        return summarize_rewards(responses, scored, firsts, first_scored, independent, cfg.score.metric, prompts)


def independent_evaluator(cfg, ds, scorer):
    """A +knowledge reranker of the other kind than `reward.model`, trained with the next seed
    (trained here if the run has none): it never scores a summary the loop optimises against."""
    from rlrf.reward.scorer import RewardScorer
    from rlrf.reward.training import model_name, train

    other = "prm" if cfg.reward.model == "dlcm" else "dlcm"
    seed = cfg.seed + 1
    if not RunLayout(cfg.run_dir).reward_model_file(model_name(other, True), seed).exists():
        train(cfg, kinds=[other], variants=(True,), seeds=[seed])
    return RewardScorer.from_run(cfg, ds=ds, encoder=scorer.encoder, kind=other, knowledge=True, seed=seed)


def summarize_rewards(responses: list[dict], scored: dict, greedy: list[dict], greedy_scored: dict,
                      independent: dict | None, metric: str, prompts: dict[str, str] | None = None) -> dict:
    """metrics.json's evaluation of one policy (`rlrf.core.records.Evaluation`): means over users,
    and the per-user values the report pairs with policy_0 for its CIs.

    reward_mean / reward_best: the user's N sampled summaries under the reward model; ndcg@5 /
    map@5: the greedy summary as the user's knowledge; independent_*: the same greedy summary under
    the independent evaluator; tokens: the greedy summary's length, copied: the share of it copied
    from its prompt (a policy gaming the reward with length or by restating its prompt shows here);
    ended / repeated: whether it ends on its own (EOS, or a closed sentence at the cap) and whether
    it repeats a sentence or an 8-word run (rlrf/evaluation/text.py), as 1/0 per user."""
    by_user: dict[str, list[float]] = {}
    for r in responses:
        by_user.setdefault(r["user"], []).append(scored[(r["user"], r["k"])][metric])
    users = sorted(by_user)
    first = {r["user"]: r for r in greedy}
    independent_of = {}
    if independent is not None:
        row = {r["user"]: i for i, r in enumerate(greedy)}
        independent_of = {m: [float(independent[m][row[u]]) for u in users] for m in ("ndcg@5", "map@5")}
    per_user = PerUser(
        users=users,
        reward_mean=[float(np.mean(by_user[u])) for u in users],
        reward_best=[float(np.max(by_user[u])) for u in users],
        ndcg_5=[float(greedy_scored[(u, 0)]["ndcg@5"]) for u in users],
        map_5=[float(greedy_scored[(u, 0)]["map@5"]) for u in users],
        tokens=[int(first[u]["n_tokens"]) for u in users],
        copied=[copied_share(first[u]["text"], prompts[u]) for u in users] if prompts is not None else None,
        independent_ndcg_5=independent_of.get("ndcg@5"),
        independent_map_5=independent_of.get("map@5"),
        ended=[int(ends_on_its_own(first[u]["text"], first[u].get("finished", True))) for u in users],
        repeated=[int(has_repeat(first[u]["text"])) for u in users],
    )
    rewards = [scored[(r["user"], r["k"])][metric] for r in responses]
    return Evaluation(
        users=len(users), responses=len(responses), metric=metric,
        reward_mean=_mean(per_user.reward_mean), reward_best=_mean(per_user.reward_best),
        ndcg_5=_mean(per_user.ndcg_5), map_5=_mean(per_user.map_5), tokens=_mean(per_user.tokens),
        copied=_mean(per_user.copied), independent_ndcg_5=_mean(per_user.independent_ndcg_5),
        independent_map_5=_mean(per_user.independent_map_5),
        ended=_mean(per_user.ended), repeated=_mean(per_user.repeated),
        empty=int(sum(bool(s.get("empty")) for s in scored.values())),
        flagged=int(sum("flag" in r for r in responses)),
        rewards=[round(float(x), 5) for x in rewards],
        per_user=per_user,
    ).to_dict()


def _mean(values: list | None) -> float | None:
    return None if values is None else float(np.mean(values))
