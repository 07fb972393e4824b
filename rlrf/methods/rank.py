"""`rlrf rank`: S-DPO, DMPO and RosePO on their own task, candidate ranking, as arms of the shared loop.

The task (LLaRA's protocol, which S-DPO follows; `rlrf.methods.rank_examples`): the user's last
`rank.max_history` items and `rank.candidates` shuffled candidates (the true next item and items
the user never interacted with); the answer is one candidate's title, grounded within the list.
Metrics: HR@1 (the greedy answer names the target), ValidRatio (it names a candidate) and the
share of answers naming a catalogue item outside the list.

Split: rlrf's user split (`data.split`), not LLaRA's chronological one: training examples are
sliding windows of TRAIN users only (their last `rank.windows` positions); evaluation asks about
each valid/test user's held-out last item from the items before it. No evaluated user's item is
ever trained on -- neither by the policy nor by the SASRec oracle/baseline, which sees train users'
sequences and held-out users' items before their last one -- the same split the SPRec path uses.

Arms (`ARMS`), all from ONE SFT adapter (sliding-window SFT, `seed_<s>/sft/adapter`), trained on the
same `rank.pair_examples` examples for the same `rank.steps` optimisation steps with the same seed:
SFT alone; DPO (one uniform negative from the candidates); S-DPO (`rank.negatives` uniform negatives,
softmax loss); DMPO on the same negatives under the shared ranking prompt, and in its own data form
(one pairwise "rank these two" instruction per negative, chosen = target first, rejected = negative
first; each instruction is one record, so the mean over negatives is a mean of per-pair losses --
the released DMPO code trains these records pairwise too); RosePO with its three rejected-sampling
strategies (self-hard: the SFT policy's own wrong answer, falling back to a uniform candidate;
popularity: the most popular wrong candidate; hallucination: a catalogue title not in the list) and
a personalised ε = min(σ((s_rejected − s_chosen) / T), cap) from a RecBole SASRec that knows the
user's history; and one trl loss type (`rank.trl_loss`) on DPO's pairs. S-DPO, both DMPO forms and
DPO share negatives: DPO's is S-DPO's first.

Baselines on the same held-out examples: random (HR@1 = 1 / candidates per user, its expectation),
popularity among the candidates (train users' interactions only), SASRec ranking the candidates, and
the untuned policy.

Run layout (``<run_dir>``; per training seed ``seed_<s>/`` with `rank.seeds`)::

    sasrec/                                the oracle / baseline SASRec (cached by fingerprint)
    eval/<policy>/eval.json                one evaluated policy or baseline (per-user hits for the CIs)
    eval/<policy>/iter_0/recommendations.jsonl   its answers, grounded
    [seed_<s>/]sft/adapter                 the SFT every arm starts from
    [seed_<s>/]<arm>/iter_0/pairs.jsonl    the arm's preference data (RosePO: "epsilon" per pair)
    [seed_<s>/]<arm>/iter_0/next_item.jsonl      rosepo_self: the SFT policy's answers on the examples
    [seed_<s>/]<arm>/iter_0/adapter, align_log.json
    [seed_<s>/]<arm>/metrics.json          the loop's record of the arm
    metrics.json, report.md                every arm and baseline, pooled over seeds, paired CIs vs SFT

One job per module: this one the recipe (`run_rank`); `rank_examples` the task's data (examples,
prompts, grounding, negatives); `rank_context` what every arm and seed shares (`RankContext`, the
seeds' folders); `rank_evaluation` the held-out protocol and the baselines; `rank_arms` the arms
(`ARMS`, their pairs and `align:` sections, `RankArm` on the loop); `rank_report` the table.
"""

from __future__ import annotations

import time

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_json, atomic_write_text
from rlrf.core.layout import RunLayout
from rlrf.core.rundir import add_wall_time
from rlrf.methods.loop import run_loop
from rlrf.methods.rank_arms import RankArm, arm_align
from rlrf.methods.rank_context import build_context, seed_root, training_seeds
from rlrf.methods.rank_evaluation import evaluate_baseline, evaluate_policy
from rlrf.methods.rank_examples import RankPrompts
from rlrf.methods.rank_report import collect, report_table


def check_config(cfg) -> None:
    """What the schema alone cannot tell, refused before any training."""
    from rlrf.alignment.losses import TRL_LOSSES

    r = cfg.rank
    if r.trl_loss not in TRL_LOSSES:
        raise UserError(f"rank.trl_loss: '{r.trl_loss}' is not a trl loss type ({', '.join(sorted(TRL_LOSSES))})")
    if r.negatives > r.candidates - 1:
        raise UserError(f"rank.negatives: {r.negatives} negatives need at least {r.negatives + 1} candidates "
                        f"(rank.candidates is {r.candidates})")


def run_rank(cfg, show_progress: bool = True, log=print) -> dict:
    """Baselines, then for each training seed the SFT and every arm of `rank.arms`; metrics.json and
    report.md with the table. Every stage is cached, so a rerun continues where a killed one stopped."""
    from rlrf.core.config import save_config
    from rlrf.generation.policy import policy_tokenizer

    check_config(cfg)
    root = RunLayout(cfg.run_dir)
    save_config(cfg, root.config)
    ctx = build_context(cfg)
    prompts = RankPrompts(policy_tokenizer(cfg.llm), ctx.ds.catalog, max_prompt_tokens=cfg.generate.max_prompt_tokens,
                          domain=cfg.generate.domain)
    baselines, seconds = {}, {}
    for name in ("random", "popularity", "sasrec"):
        started = time.perf_counter()
        baselines[name] = evaluate_baseline(name, cfg, ctx)
        seconds[name] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    baselines["base"] = evaluate_policy(cfg, None, root.root, ctx, prompts, cfg.seed)
    seconds["base"] = round(time.perf_counter() - started, 1)
    runs: dict[int, dict] = {}
    for seed in training_seeds(cfg):
        sroot = seed_root(cfg, seed)
        runs[seed] = {}
        for arm in ["sft"] + [a for a in cfg.rank.arms if a != "sft"]:  # the SFT (every CI's reference) first
            label = arm if cfg.rank.seeds is None else f"{arm}@seed_{seed}"
            log(f"[rank] {label}")
            method = RankArm(arm, sroot.root, ctx, prompts, arm_align(cfg, arm), show_progress, label=label)
            started = time.perf_counter()
            record = run_loop(cfg, method, 0 if arm == "sft" else 1, layout=sroot.arm(arm), seed=seed, log=log)
            record["wall_seconds"] = add_wall_time(sroot.arm(arm), time.perf_counter() - started)
            runs[seed][arm] = record
    metrics = collect(cfg, ctx, baselines, seconds, runs)
    atomic_write_json(root.metrics, metrics)
    atomic_write_text(root.report, report_table(cfg, metrics))
    return metrics
