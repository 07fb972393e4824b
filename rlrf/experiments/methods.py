"""`rlrf experiment methods`: every preference method of RLRF4Rec from the same policy_0, side by side.

One iteration of each method, each starting from policy_0 (the policy `llm` names):

- offline, on ONE set of samples per training seed: DPO (best vs worst), S-DPO (softmax over the
  N − 1 other summaries), DMPO (mean over the same N − 1), RosePO (DPO's pair, smoothed by a per-pair
  ε from its reward margin);
- online: GRPO and RLOO, whose trainers sample their own groups of N = `generate.n` summaries per
  training user, for as many optimizer steps as it takes to generate the same number of summaries
  as the offline methods' samples (`online_steps`).

What every method shares: the data, the reward model and the independent evaluator (the run's own,
trained once by `RLRF4Rec.prepare`), the training users (RLRF4Rec's: the first `generate.max_users`
train users whose list can rank) and their prompts, and the evaluation: `RLRF4Rec.evaluate` on the
run's held-out test users, with the run's seed for the evaluation samples, so every policy is scored
on the same users with the same sample seeds and each difference is paired by user.

Training seeds (`seeds`): seed s samples iteration 0's summaries (sample k of user u seeded by
(s, mode, 0, u, k), as `rlrf run` with `seed: s` would) and seeds every trainer. The run's own seed
reuses the run's iteration 0 (`rlrf run` writes the same records there; whichever runs first serves
both); the other seeds' samples go under the experiment's folder. The table pools the seeds: each
method's change against policy_0, and against DPO, over every (seed, user) with a bootstrap that
resamples users within each seed (`rlrf.evaluation.stats.pooled_difference`). `online_seeds` runs
GRPO and RLOO on the first seeds only; each method then pools over the seeds it ran. `named` runs
exactly the seeds named (one seed added or redone alone).

RosePO's ε = `align.rosepo_eps_max` · exp(−margin / τ): margins here are differences of the reward
(the reranker's logit margin less the copy penalty, not NDCG's [0, 1]), so the config's τ can put
every ε near 0. τ is calibrated on the seed's own pairs so that the median pair gets ε = eps_max / 2
(τ = median margin / ln 2; `rosepo_tau` fixes it instead). ε's distribution under both τ goes into
the results.

Run layout (``<run_dir>``)::

    iter_0/responses.jsonl, scores.jsonl       the run's seed: iteration 0's samples (shared with `rlrf run`)
    eval/policy_0/                             policy_0 on the test users (shared with `rlrf run`)
    eval/methods.<method>@seed_<s>/            each method's policy_1 on the same users
    experiments/methods/seed_<s>/iter_0/...    another seed's samples and scores
    experiments/methods/seed_<s>/wall.json     what the seed's samples took (summed over resumes)
    experiments/methods/seed_<s>/<method>/     one method's loop: iter_0/pairs.jsonl, adapter, align_log.json,
                                               metrics.json (policy_0 and policy_1, as `rlrf run` records them)
    experiments/methods/results.json, table.md every method, pooled over seeds

Every stage is cached (samples, scores, adapters, evaluations), so a rerun continues where a killed
one stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_json, atomic_write_jsonl, read_json
from rlrf.core.layout import RunLayout
from rlrf.methods.loop import Method, run_loop
from rlrf.methods.rlrf4rec import RLRF4Rec

EXPERIMENT = "methods"


@dataclass(frozen=True)
class Arm:
    """One method: `method` is `align.method` (dpo: offline on the seed's pairs; grpo / rloo: online),
    `loss` the offline methods' `align.loss`."""

    title: str
    method: str
    loss: str | None = None

    @property
    def online(self) -> bool:
        return self.method != "dpo"


ARMS = {
    "dpo": Arm("DPO", "dpo", "dpo"),
    "sdpo": Arm("S-DPO", "dpo", "sdpo"),
    "dmpo": Arm("DMPO", "dpo", "dmpo"),
    "rosepo": Arm("RosePO", "dpo", "rosepo"),
    "grpo": Arm("GRPO", "grpo"),
    "rloo": Arm("RLOO", "rloo"),
}


# ------------------------------------------------------------------------------------ what is shared


@dataclass
class Shared:
    """What every method and seed shares: the run's config, RLRF4Rec prepared on it (data, reward
    model, independent evaluator), the training users' prompts, and the evaluations (cached by policy)."""

    cfg: object
    base: RLRF4Rec
    prompts: list
    policy_0: Path | None
    evaluations: dict = field(default_factory=dict)

    def evaluate(self, adapter: Path | None, label: str) -> dict:
        """`RLRF4Rec.evaluate` of the policy with `adapter` on the run's test users, in ``eval/<label>``
        (policy_0: ``eval/policy_0``, as `rlrf run`)."""
        if adapter == self.policy_0:
            label = "policy_0"
        if label not in self.evaluations:
            self.evaluations[label] = self.base.evaluate(self.cfg, RunLayout(self.cfg.run_dir), self.cfg.seed, label,
                                                         adapter)
        return self.evaluations[label]


@dataclass
class Samples:
    """One seed's iteration 0 for the offline methods: the summaries' pairs (best vs the N − 1 others,
    worst first) and their statistics."""

    seed: int
    layout: RunLayout
    pairs: list[dict]
    stats: dict
    seconds: float | None  # generating and scoring them (None: found done, by `rlrf run`)


def prepare_shared(cfg, show_progress: bool = True) -> Shared:
    from rlrf.generation.policy import policy_tokenizer

    base = RLRF4Rec(show_progress=show_progress)
    base.prepare(cfg, RunLayout(cfg.run_dir), cfg.seed)
    prompts = base.training_prompts(cfg, policy_tokenizer(cfg.llm))  # RLRF4Rec's own users, shared by every method
    if not prompts:
        raise UserError("no training user with a rankable list: nothing to align on")
    return Shared(cfg, base, prompts, cfg.llm.adapter)


def seed_folder(cfg, seed: int) -> RunLayout:
    """The experiment's folder for training seed `seed`: its methods' loops and what its samples took."""
    return RunLayout(RunLayout(cfg.run_dir).experiment(EXPERIMENT)).arm(f"seed_{seed}")


def samples_layout(cfg, seed: int) -> RunLayout:
    """Where seed `seed`'s iteration 0 lives: the run's own for its seed when `rlrf run` samples the
    same summaries there (align.method dpo), else the experiment's seed folder."""
    if seed == cfg.seed and cfg.align.method == "dpo":
        return RunLayout(cfg.run_dir)
    return seed_folder(cfg, seed)


def sample(shared: Shared, seed: int, show_progress: bool = True) -> Samples:
    """Seed `seed`'s N summaries per training user from policy_0, their rewards, and the pairs every
    offline method trains on (built as `rlrf score` builds them, with `generate.n` − 1 negatives).
    What making them took is summed over the processes that wrote them, in the experiment's seed
    folder (``wall.json``), so a later command over fewer seeds keeps it."""
    from rlrf.core.rundir import add_wall_time, recorded_wall_time
    from rlrf.core.threads import use_threads
    from rlrf.generation.backends import resolve_backend
    from rlrf.generation.generate import generate_texts, load_prompts, policy_for
    from rlrf.reward.score import build_pairs, finish_preference, guard_changes, pair_rewards, score_iteration

    cfg, gen = shared.cfg, shared.cfg.generate
    layout = samples_layout(cfg, seed)
    started = time.perf_counter()
    use_threads(cfg)
    backend = resolve_backend(gen.backend)
    users = {p.key for p in shared.prompts}
    written = 0
    if _missing_samples(layout, users, gen.n):
        policy = policy_for(cfg.llm, backend, adapter=shared.policy_0)
        written = generate_texts(gen, shared.prompts, policy, layout, mode="user_preference", iteration=0, seed=seed,
                                 backend=backend, show_progress=show_progress,
                                 label=f"methods: seed {seed} samples of policy_0").written
        del policy
    responses, scored = score_iteration(layout, 0, shared.base.scorer, cfg.score, show_progress,
                                        label=f"methods: score seed {seed} samples", trim=cfg.score.trim_to_sentence)
    responses = [r for r in responses if r["user"] in users]
    prompts = {u: r["prompt"] for u, r in load_prompts(layout.root, 0).items()}
    negatives = max(1, gen.n - 1)

    def pairs_by(copy_penalty: float):
        rewards = pair_rewards(responses, scored, prompts, cfg.score.metric, copy_penalty)
        return build_pairs(responses, rewards, prompts, set(shared.base.dataset.splits["train"]), negatives,
                           cfg.score.min_margin, **finish_preference(cfg.score))

    pairs, stats = pairs_by(cfg.score.copy_penalty)
    meta = {"metric": cfg.score.metric, "copy_penalty": cfg.score.copy_penalty, **asdict(stats),
            "negatives": negatives, "summaries": len(responses)}
    if cfg.score.copy_penalty:
        meta["changed_by_copy_penalty"] = guard_changes(pairs, pairs_by(0.0)[0])
    meta.update(finish_preference(cfg.score))  # nothing unless set
    record = seed_folder(cfg, seed)
    # found done: what it took is what was recorded when it was made (None: made by `rlrf run`)
    seconds = add_wall_time(record, time.perf_counter() - started) if written else recorded_wall_time(record)
    return Samples(seed, layout, pairs, meta, seconds)


def _missing_samples(layout: RunLayout, users: set[str], n: int) -> bool:
    """Whether any of the users' n samples is not written yet (loading the policy is then worth it)."""
    from rlrf.core.io import read_jsonl

    path = layout.responses(0)
    have = {(r["user"], r["k"]) for r in read_jsonl(path)} if path.exists() else set()
    return any((u, k) not in have for u in users for k in range(n))


# ------------------------------------------------------------------------------ RosePO's ε and the online budget


def calibrated_tau(margins: list[float]) -> float:
    """τ that gives the median pair ε = eps_max / 2: eps_max · exp(−m / τ) = eps_max / 2 at the median
    margin m, so τ = m / ln 2 (pairs with a smaller margin get more smoothing, larger ones less)."""
    positive = [m for m in margins if m > 0]
    if not positive:
        raise UserError("RosePO: no pair with a positive reward margin to calibrate τ on")
    return float(np.median(positive)) / math.log(2)


def epsilon_distribution(margins: list[float], eps_max: float, tau: float) -> dict:
    """ε of every pair as the trainer computes it (`rlrf.alignment.losses.rosepo_epsilon`): mean,
    spread and a histogram over [0, eps_max]."""
    import torch

    from rlrf.alignment.losses import rosepo_epsilon

    e = rosepo_epsilon(torch.tensor(margins, dtype=torch.float64), eps_max=eps_max, tau=tau).numpy()
    return {"tau": tau, "eps_max": eps_max, "pairs": int(len(e)), "mean": float(e.mean()), "min": float(e.min()),
            "max": float(e.max()), "quantiles": {str(q): float(np.quantile(e, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
            "near_zero": float((e < 0.01 * eps_max).mean()),
            "histogram": np.histogram(e, bins=8, range=(0.0, eps_max))[0].tolist()}


def online_steps(trainer_args: dict, summaries: int) -> tuple[int, int]:
    """(optimizer steps, summaries they generate): the fewest steps whose generation batches hold at
    least `summaries` completions. trl generates a batch of per_device_train_batch_size ×
    steps_per_generation completions every steps_per_generation × num_iterations micro-steps
    (steps_per_generation defaults to gradient_accumulation_steps); one process."""
    per_device = int(trainer_args.get("per_device_train_batch_size", 8))
    accumulation = int(trainer_args.get("gradient_accumulation_steps", 1))
    reuse = int(trainer_args.get("num_iterations", 1))
    if trainer_args.get("generation_batch_size"):
        per_generation = int(trainer_args["generation_batch_size"]) // per_device
    else:
        per_generation = int(trainer_args.get("steps_per_generation") or accumulation)
    batch = per_device * per_generation
    generations = math.ceil(summaries / batch)
    steps = math.ceil(generations * per_generation * reuse / accumulation)
    return steps, math.ceil(steps * accumulation / (per_generation * reuse)) * batch


def online_args(cfg, n: int, summaries: int) -> tuple[dict, int]:
    """The online section's trainer args with groups of n = `generate.n` and the step budget that
    generates `summaries`; and the summaries it generates."""
    args = {**cfg.online.trainer_args, "num_generations": n}
    args.pop("max_steps", None)
    steps, generated = online_steps(args, summaries)
    batch = int(args.get("per_device_train_batch_size", 8))
    if batch % n:
        raise UserError(f"online.trainer_args.per_device_train_batch_size: {batch} is not a multiple of "
                        f"generate.n = {n} (the online methods sample groups of generate.n summaries)")
    return {**args, "max_steps": steps}, generated


# ------------------------------------------------------------------------------------------- one method


class ArmMethod(Method):
    """One method on the shared loop (`rlrf.methods.loop.Method`), one iteration from policy_0:
    `generate` is the seed's shared samples (offline) or the trainer's own (online), `score` writes
    the seed's pairs into the method's folder, `align` trains with the method's loss, `evaluate` is
    the shared evaluation."""

    def __init__(self, arm: str, shared: Shared, samples: Samples, online_summaries: int, label: str, *, align,
                 online, show_progress: bool = True):
        self.arm, self.spec, self.name = arm, ARMS[arm], label
        self.align_section, self.online_section = align, online  # the method's own loss / online trainer args
        self.shared, self.samples, self.online_summaries = shared, samples, online_summaries
        self.show_progress = show_progress
        self.scored_in_training: int | None = None  # online: summaries the reward function scored

    def prepare(self, cfg, layout: RunLayout, seed: int) -> Path | None:
        return self.shared.policy_0

    def generate(self, cfg, layout: RunLayout, seed: int, iteration: int, adapter: Path | None) -> None:
        """Nothing: the offline methods share the seed's samples (`sample`), the online ones sample their own."""

    def score(self, cfg, layout: RunLayout, seed: int, iteration: int) -> dict:
        if self.spec.online:
            return {"prompts": len(self.shared.prompts), "summaries": self.online_summaries}
        atomic_write_jsonl(layout.pairs(iteration), self.samples.pairs)
        atomic_write_json(layout.pairs_meta(iteration), self.samples.stats)
        return self.samples.stats

    def align(self, cfg, layout: RunLayout, seed: int, iteration: int, adapter: Path | None) -> Path:
        from rlrf.alignment.dpo import train_dpo
        from rlrf.alignment.online import train_online

        if not self.spec.online:
            train_dpo(layout, iteration, align=self.align_section, llm=cfg.llm, lora=cfg.lora, seed=seed,
                      start_adapter=adapter, show_progress=self.show_progress)
            return layout.adapter(iteration)
        scorer, metric = self.shared.base.scorer, cfg.score.metric
        self.scored_in_training = 0

        def reward(users, texts):
            self.scored_in_training += len(texts)
            return scorer.score(users, texts)[metric]

        records = [{"prompt": p.text, "user": p.key} for p in self.shared.prompts]
        summary = train_online(layout, iteration, records, reward, method=self.spec.method, online=self.online_section,
                               generate=cfg.generate, llm=cfg.llm, lora=cfg.lora, seed=seed, start_adapter=adapter,
                               show_progress=self.show_progress)
        if summary.get("skipped"):
            self.scored_in_training = None
        return layout.adapter(iteration)

    def evaluate(self, cfg, layout: RunLayout, seed: int, label: str, adapter: Path | None) -> dict:
        return self.shared.evaluate(adapter, f"{EXPERIMENT}.{self.name}")  # eval/methods.<method>@seed_<s>


# ------------------------------------------------------------------------------------------ the recipe


def training_seeds(first: int, seeds: int, named: list[int] | None = None) -> list[int]:
    """first, ..., first + seeds - 1, or exactly the seeds `named` (--training-seed)."""
    return sorted(set(named)) if named else [first + i for i in range(seeds)]


def check_online_seeds(seeds: int, online_seeds: int | None) -> None:
    """`seeds`: how many training seeds the command runs."""
    if online_seeds is not None and not 1 <= online_seeds <= seeds:
        raise UserError(f"--online-seeds: {online_seeds} must be between 1 and the number of training seeds ({seeds})")


def run_methods(cfg, arms: list[str] | None = None, seeds: int = 2, rosepo_tau: float | None = None,
                show_progress: bool = True, log=print, online_seeds: int | None = None,
                named: list[int] | None = None) -> dict:
    """Every method of `arms` (default all) for each training seed; returns and writes results.json.

    The training seeds are cfg.seed, ..., cfg.seed + seeds - 1, or exactly the seeds `named`: one seed
    can be added or redone alone (its samples and training are its own; policy_0 is shared), and the
    table then pools over the seeds of this command.

    `online_seeds` (default: all) limits GRPO and RLOO to the first training seeds: sampling their own
    summaries costs them about three times an offline method's training, so a table that pools the
    offline methods over more seeds need not wait for them. Each method pools over the seeds it ran."""
    arms = list(arms or ARMS)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise UserError(f"unknown method '{unknown[0]}' ({', '.join(ARMS)})")
    chosen = training_seeds(cfg.seed, seeds, named)
    check_online_seeds(len(chosen), online_seeds)
    online_seeds = len(chosen) if online_seeds is None else online_seeds
    if rosepo_tau is not None and rosepo_tau <= 0:
        raise UserError(f"--rosepo-tau: {rosepo_tau} must be > 0")
    if cfg.generate.n < 2:
        raise UserError(f"generate.n: {cfg.generate.n} summary per user makes no pair; the methods need 2 or more")
    root = RunLayout(cfg.run_dir)
    shared = prepare_shared(cfg, show_progress)
    log("[methods] policy_0 on the test users")
    policy_0 = shared.evaluate(shared.policy_0, "policy_0")
    runs: dict[int, dict] = {}
    samples_record, rosepo = {}, {}
    for index, seed in enumerate(chosen):
        log(f"[methods] seed {seed}: policy_0's samples")
        samples = sample(shared, seed, show_progress)
        target = samples.stats["summaries"]
        online, online_generated = online_args(cfg, cfg.generate.n, target)
        margins = [p["margin"] for p in samples.pairs]
        tau = rosepo_tau if rosepo_tau is not None else calibrated_tau(margins)
        samples_record[str(seed)] = {"seconds": samples.seconds, "summaries": target, "pairs": samples.stats,
                                     "reused_run_iteration": samples.layout.root == root.root}
        if "rosepo" in arms:
            rosepo[str(seed)] = {
                "rule": "fixed (--rosepo-tau)" if rosepo_tau is not None else "median margin / ln 2",
                "epsilon": epsilon_distribution(margins, cfg.align.rosepo_eps_max, tau),
                "at_config_tau": epsilon_distribution(margins, cfg.align.rosepo_eps_max, cfg.align.rosepo_tau)}
        runs[seed] = {}
        for arm in arms:
            if ARMS[arm].online and index >= online_seeds:
                continue
            spec, label = ARMS[arm], f"{arm}@seed_{seed}"
            log(f"[methods] {label}")
            align = cfg.align.model_copy(update={"method": spec.method, "loss": spec.loss or cfg.align.loss,
                                                 **({"rosepo_tau": tau} if arm == "rosepo" else {})})
            section = cfg.online.model_copy(update={"trainer_args": online}) if spec.online else cfg.online
            method = ArmMethod(arm, shared, samples, online_generated, label, align=align, online=section,
                               show_progress=show_progress)
            record = run_loop(cfg, method, 1, layout=seed_folder(cfg, seed).arm(arm), seed=seed, log=log)
            record["scored_in_training"] = method.scored_in_training
            runs[seed][arm] = record
    results = collect(cfg, arms, policy_0, runs, samples_record, rosepo, len(shared.prompts))
    atomic_write_json(root.experiment_results(EXPERIMENT), results)
    return results


# ------------------------------------------------------------------------------------------ the results


def collect(cfg, arms: list[str], policy_0: dict, runs: dict[int, dict], samples: dict, rosepo: dict,
            training_users: int) -> dict:
    """Each method's means (over the seeds it ran), its change against policy_0 and against DPO (on the
    seeds both ran) on every per-user measure, pooled over seeds with paired bootstrap 95% CIs, and what
    it cost."""
    from rlrf.evaluation.stats import mean_sd, pooled_difference

    all_seeds = sorted(runs)
    measures = [k for k in policy_0["per_user"] if k != "users" and policy_0["per_user"][k] is not None]
    after = {arm: {s: runs[s][arm]["evaluations"]["policy_1"] for s in all_seeds if arm in runs[s]} for arm in arms}
    rows = {}
    for arm in arms:
        seeds = sorted(after[arm])
        per_seed = {}
        for s in seeds:
            record = runs[s][arm]
            log = read_json(seed_folder(cfg, s).arm(arm).align_log(0)) or {}
            summary = log.get("summary", {})
            trained = [e["rosepo/epsilon"] for e in log.get("steps", []) if "rosepo/epsilon" in e]
            iteration = record["iterations"]["0"]
            per_seed[str(s)] = {
                "summaries": iteration["pairs"].get("summaries"), "scored_in_training": record.get("scored_in_training"),
                "train_seconds": iteration.get("seconds"), "steps": summary.get("steps"), "align": summary,
                **({"trained_epsilon_mean": float(np.mean(trained))} if trained else {}),
                "evaluation": {k: v for k, v in after[arm][s].items() if k not in ("per_user", "rewards")}}
        row = {"title": ARMS[arm].title, "method": ARMS[arm].method, "loss": ARMS[arm].loss, "seeds": seeds,
               "per_seed": per_seed}
        row["means"] = {k: mean_sd([after[arm][s][k] for s in seeds])  # an evaluation's mean sits under its per-user key
                        for k in measures if after[arm][seeds[0]].get(k) is not None}
        row["vs_policy_0"] = {k: pooled_difference([(policy_0["per_user"], after[arm][s]["per_user"]) for s in seeds],
                                                   k, seed=cfg.seed) for k in measures}
        if "dpo" in arms and arm != "dpo":
            row["vs_dpo"] = {k: pooled_difference([(after["dpo"][s]["per_user"], after[arm][s]["per_user"])
                                                   for s in seeds if s in after["dpo"]], k, seed=cfg.seed)
                             for k in measures}
        rows[arm] = row
    return {"experiment": EXPERIMENT, "seeds": all_seeds, "metric": policy_0["metric"], "test_users": policy_0["users"],
            "training_users": training_users,
            "n": cfg.generate.n, "negatives": max(1, cfg.generate.n - 1),
            "policy_0": {k: v for k, v in policy_0.items() if k not in ("per_user", "rewards")},
            "measures": measures, "samples": samples, "rosepo": rosepo, "methods": rows}

