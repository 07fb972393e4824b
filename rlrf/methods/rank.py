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
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json, read_jsonl
from rlrf.core.layout import RunLayout, adapter_complete
from rlrf.methods.loop import Method, run_loop
from rlrf.methods.rank_examples import (
    LEVELS, RankExample, RankPrompts, TitleKeys, dmpo_pairwise, ground_answer, hallucination_negative,
    heldout_examples, margin_for_epsilon, oracle_epsilon, popular_negative, sample_examples, seeded_rng,
    self_hard_negative, uniform_negatives, window_examples,
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
BASELINES = {"random": "random", "popularity": "popularity among the candidates", "sasrec": "SASRec",
             "base": "untuned policy"}


def train_popularity(ds) -> np.ndarray:
    """Interactions per item over TRAIN users only (held-out users' items never count)."""
    counts = np.zeros(len(ds.catalog), dtype=np.int64)
    for u in ds.splits["train"]:
        np.add.at(counts, np.asarray(ds.users[u].items, dtype=np.int64), 1)
    return counts


def policy_slug(root: Path, adapter: Path | None) -> str:
    """A folder name for a policy: ``base`` or its adapter's path under `root` (``sft__adapter``)."""
    if adapter is None:
        return "base"
    adapter = Path(adapter)
    try:
        return "__".join(adapter.resolve().relative_to(Path(root).resolve()).parts)
    except ValueError:
        return "adapter_" + hashlib.sha256(str(adapter.resolve()).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------- the context


@dataclass
class RankContext:
    """What every arm and seed shares: the dataset, its examples (fixed by `seed`, the data seed),
    train-only popularity, and the SASRec oracle's scores."""

    ds: object
    keys: TitleKeys
    popularity: np.ndarray
    sft_examples: list[RankExample]
    pair_examples: list[RankExample]
    eval_examples: list[RankExample]
    sasrec_dir: Path
    sasrec_cfg: object
    seed: int
    _scores: dict = field(default_factory=dict)

    def oracle_scores(self, examples: list[RankExample]) -> dict[str, np.ndarray]:
        """SASRec's catalogue scores per example key, from every item of the user before the
        example's target (it trains once, on train users' sequences and held-out users' items but
        their last)."""
        missing = [ex for ex in examples if ex.key not in self._scores]
        if missing:
            from recmodels.sequential import score_histories, train_sasrec

            model, dataset = self._sasrec(train_sasrec)
            histories = {ex.key: self._before(ex) for ex in missing}
            users, scores = score_histories(model, dataset, len(self.ds.catalog), histories)
            self._scores.update({u: scores[row] for row, u in enumerate(users)})
        return {ex.key: self._scores[ex.key] for ex in examples}

    def _before(self, ex: RankExample) -> list[int]:
        items = self.ds.users[ex.user].items
        t = int(ex.key.rsplit("@", 1)[1]) if "@" in ex.key else len(items) - 1
        return items[:t]

    def _sasrec(self, train_sasrec):
        from rlrf.data.candidates import sasrec_settings

        if not hasattr(self, "_model"):
            held_out = {u for split in ("valid", "test") for u in self.ds.splits[split]}
            sequences = {u: (user.items[:-1] if u in held_out else user.items) for u, user in self.ds.users.items()}
            sequences = {u: s for u, s in sequences.items() if s}
            self._model = train_sasrec(sequences, sasrec_settings(self.sasrec_cfg), self.sasrec_dir, self.seed)
        return self._model


def build_context(cfg, ds=None) -> RankContext:
    from rlrf.data.dataset import load_dataset

    r = cfg.rank
    ds = ds if ds is not None else load_dataset(cfg.data, seed=cfg.seed)
    keys = TitleKeys(ds.catalog)
    train_users = [u for u in ds.splits["train"] if len(ds.users[u].items) >= 2]
    windows = window_examples(ds, train_users, keys, windows=r.windows, max_history=r.max_history,
                              n_candidates=r.candidates, seed=cfg.seed)
    if not windows:
        raise UserError("rank: no train user with two or more items")
    held_out = [u for split in r.eval_splits for u in ds.splits[split]]
    evaluation = heldout_examples(ds, held_out, keys, max_history=r.max_history, n_candidates=r.candidates,
                                  seed=cfg.seed)
    evaluation = evaluation[: r.eval_users] if r.eval_users else evaluation
    if not evaluation:
        raise UserError(f"rank.eval_splits {r.eval_splits}: no held-out user with two or more items")
    return RankContext(ds, keys, train_popularity(ds), sample_examples(windows, r.sft_examples, cfg.seed, "rank-sft"),
                       sample_examples(windows, r.pair_examples, cfg.seed, "rank-pairs"), evaluation,
                       RunLayout(cfg.run_dir).sasrec, cfg.sasrec, cfg.seed)


# ------------------------------------------------------------------------------------ generation


def greedy_answers(cfg, prompts, adapter: Path | None) -> list[str]:
    """The greedy answer of the policy with `adapter` (None: the base model) to each prompt (the rlrf
    generation backends)."""
    from rlrf.core.threads import use_threads
    from rlrf.generation.backends import Request, SamplingParams, make_backend, sample_seed
    from rlrf.generation.policy import load_policy

    use_threads(cfg)
    policy = load_policy(cfg.llm, adapter=adapter)
    engine = make_backend(cfg.generate.backend, policy, batch_size=cfg.generate.batch_size)
    params = SamplingParams(max_new_tokens=cfg.generate.max_new_tokens, temperature=0.0, top_p=1.0, top_k=0)
    requests = [Request(prompt_ids=p.ids, seeds=[sample_seed(cfg.seed, "rank", p.key)]) for p in prompts]
    texts: list[str | None] = [None] * len(prompts)
    for batch in engine.generate(requests, params):
        for s in batch:
            texts[s.request] = policy.tokenizer.decode(s.token_ids, skip_special_tokens=True).strip()
    return [t or "" for t in texts]


# ------------------------------------------------------------------------------------ evaluation


def score_answers(examples: list[RankExample], answers: list) -> dict:
    """HR@1, ValidRatio, out-of-list share and grounding levels of grounded answers (`Answer`s or
    candidate indices with -1 for none), with the per-user values the paired CIs resample."""
    from rlrf.evaluation import metrics as m

    picked = np.array([a if isinstance(a, (int, np.integer)) else (-1 if a.item is None else a.item) for a in answers],
                      dtype=np.int64)
    outside = np.array([not isinstance(a, (int, np.integer)) and a.outside is not None for a in answers])
    hits = m.hit_at_1(picked, [ex.target for ex in examples])
    levels = Counter(a.level for a in answers if not isinstance(a, (int, np.integer)))
    return {
        "users": len(examples), "hr@1": float(hits.mean()), "valid_ratio": m.valid_ratio(picked),
        "out_of_list": m.out_of_list_share(outside),
        "grounding": {lv: levels[lv] / len(answers) for lv in LEVELS} if levels else None,
        "per_user": {"users": [ex.key for ex in examples], "hr@1": hits.tolist(),
                     "valid": (picked >= 0).astype(float).tolist(), "outside": outside.astype(float).tolist()},
    }


def evaluate_policy(cfg, adapter: Path | None, root: Path, ctx: RankContext, prompts: RankPrompts) -> dict:
    """The policy with `adapter` (None: the base model) on the held-out examples; cached in
    ``<root>/eval/<policy>/`` (a policy shared by several arms, the SFT, is evaluated once)."""
    slug = policy_slug(root, adapter)
    out = RunLayout(root).evaluation(slug)
    keys = [ex.key for ex in ctx.eval_examples]
    cached = read_json(out.eval_result)
    if cached is not None and cached.get("per_user", {}).get("users") == keys:
        return cached
    started = time.perf_counter()
    texts = greedy_answers(cfg, [prompts.ranking(ex) for ex in ctx.eval_examples], adapter)
    grounded = [ground_answer(t, ex.candidates, ctx.keys) for t, ex in zip(texts, ctx.eval_examples)]
    cat = ctx.ds.catalog
    atomic_write_jsonl(out.recommendations(0), (
        {"user": ex.key, "target": cat.ids[ex.target], "text": t, "item": None if g.item is None else cat.ids[g.item],
         "level": g.level, "outside": None if g.outside is None else cat.ids[g.outside]}
        for ex, t, g in zip(ctx.eval_examples, texts, grounded)))
    result = {"policy": str(adapter) if adapter else "base", "slug": slug,
              **score_answers(ctx.eval_examples, grounded), "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_json(out.eval_result, result)
    return result


def evaluate_baseline(name: str, cfg, ctx: RankContext) -> dict:
    """random / popularity / sasrec on the held-out examples (the untuned policy is `evaluate_policy`)."""
    out = RunLayout(cfg.run_dir).evaluation(name)
    keys = [ex.key for ex in ctx.eval_examples]
    cached = read_json(out.eval_result)
    if cached is not None and cached.get("per_user", {}).get("users") == keys:
        return cached
    exs = ctx.eval_examples
    if name == "random":  # its expectation per user: exact, no draw to be lucky with
        n = [len(ex.candidates) for ex in exs]
        result = {"users": len(exs), "hr@1": float(np.mean([1 / k for k in n])), "valid_ratio": 1.0, "out_of_list": 0.0,
                  "per_user": {"users": keys, "hr@1": [1 / k for k in n], "valid": [1.0] * len(exs),
                               "outside": [0.0] * len(exs)}}
    elif name == "popularity":
        result = score_answers(exs, [popular_pick(ex, ctx.popularity) for ex in exs])
    elif name == "sasrec":
        scores = ctx.oracle_scores(exs)
        result = score_answers(exs, [int(max(ex.candidates, key=lambda i: (scores[ex.key][i], -ex.candidates.index(i))))
                                     for ex in exs])
    else:
        raise ValueError(name)
    result["baseline"] = BASELINES[name]
    atomic_write_json(out.eval_result, result)
    return result


def popular_pick(ex: RankExample, popularity) -> int:
    """The most popular candidate (train users' counts; ties: the one shown first)."""
    return int(max(ex.candidates, key=lambda i: (popularity[i], -ex.candidates.index(i))))


# --------------------------------------------------------------------------------------- the arms


class RankArm(Method):
    """One arm on the shared loop: `prepare` is the SFT every arm shares (trained once, found done by
    the others), `generate` the SFT policy's answers (self-hard negatives only), `score` the arm's
    preference data, `align` `run_align` with the arm's loss, `evaluate` HR@1 / ValidRatio."""

    def __init__(self, name: str, root: Path, ctx: RankContext, prompts: RankPrompts, show_progress: bool = True,
                 label: str | None = None):
        if name not in ARMS:
            raise UserError(f"rank.arms: unknown arm '{name}' ({', '.join(ARMS)})")
        self.arm, self.spec, self.name = name, ARMS[name], label or name
        self.root, self.ctx, self.prompts, self.show_progress = RunLayout(root), ctx, prompts, show_progress

    def prepare(self, cfg) -> Path:
        from rlrf.alignment.sft import run_sft

        if not adapter_complete(self.root.sft):
            records = [{"prompt": self.prompts.ranking(ex).text, "completion": self.ctx.keys.texts[ex.target]}
                       for ex in self.ctx.sft_examples]
            run_sft(cfg, records, cfg.llm.adapter, self.root.sft, self.root.sft_log, self.show_progress)
        return self.root.sft

    def generate(self, cfg, iteration: int, adapter: Path | None) -> None:
        """Self-hard: the SFT policy's greedy answer to each preference example."""
        layout = RunLayout(cfg.run_dir)
        if self.spec.negatives != "self" or layout.responses(iteration, "next_item").exists():
            return
        exs = self.ctx.pair_examples
        texts = greedy_answers(cfg, [self.prompts.ranking(ex) for ex in exs], adapter)
        atomic_write_jsonl(layout.responses(iteration, "next_item"),
                           ({"user": ex.key, "iter": iteration, "k": 0, "text": t} for ex, t in zip(exs, texts)))

    def score(self, cfg, iteration: int) -> dict:
        layout = RunLayout(cfg.run_dir)
        if layout.pairs(iteration).exists() and layout.pairs_meta(iteration).exists():
            return read_json(layout.pairs_meta(iteration))
        answers = None
        if self.spec.negatives == "self":
            texts = {r["user"]: r["text"] for r in read_jsonl(layout.responses(iteration, "next_item"))}
            answers = {ex.key: ground_answer(texts[ex.key], ex.candidates, self.ctx.keys) for ex in self.ctx.pair_examples}
        pairs, stats = build_pairs(self.arm, cfg, self.ctx, self.prompts, answers, iteration)
        atomic_write_jsonl(layout.pairs(iteration), pairs)
        atomic_write_json(layout.pairs_meta(iteration), stats)
        return stats

    def align(self, cfg, iteration: int, adapter: Path | None) -> Path:
        from rlrf.alignment.dpo import run_align

        run_align(cfg, iteration, show_progress=self.show_progress, adapter=adapter)
        return RunLayout(cfg.run_dir).adapter(iteration)

    def evaluate(self, cfg, label: str, adapter: Path | None) -> dict:
        return evaluate_policy(cfg, adapter, self.root.root, self.ctx, self.prompts)


def negatives_of(arm: str, cfg, ctx: RankContext, ex: RankExample, answer=None) -> tuple[list[int], str]:
    """The arm's rejected items for one example and where they came from."""
    spec, k = ARMS[arm], cfg.rank.negatives
    uniform = uniform_negatives(seeded_rng(cfg.seed, "rank-negatives", ex.key), ex, k)  # shared by the uniform arms
    if spec.negatives == "uniform":
        return (uniform if spec.multi else uniform[:1]), "uniform"
    if spec.negatives == "popularity":
        return [popular_negative(ex, ctx.popularity)], "popularity"
    if spec.negatives == "hallucination":
        never = set(ctx.ds.users[ex.user].items)
        return [hallucination_negative(seeded_rng(cfg.seed, "rank-hallucination", ex.key), ex, ctx.keys, never)], "hallucination"
    hard = self_hard_negative(answer, ex) if answer is not None else None
    return ([hard], "self") if hard is not None else (uniform[:1], "uniform_fallback")


def build_pairs(arm: str, cfg, ctx: RankContext, prompts: RankPrompts, answers: dict | None, iteration: int = 0):
    """The arm's records in the align stage's format, and their statistics (pairs.meta.json)."""
    spec, texts = ARMS[arm], ctx.keys.texts
    exs = ctx.pair_examples
    scores = ctx.oracle_scores(exs) if spec.smoothing else {}
    pairs, sources, eps_all = [], Counter(), []
    a = cfg.align
    for ex in exs:
        negs, source = negatives_of(arm, cfg, ctx, ex, (answers or {}).get(ex.key))
        sources[source] += 1
        if ex.target in negs:
            raise AssertionError(f"{ex.key}: the target was drawn as its own negative")
        base = {"user": ex.key, "iter": iteration, "rejected_items": [ctx.ds.catalog.ids[i] for i in negs],
                "source": source}
        if spec.pairwise:  # DMPO's own form: one "rank these two" instruction per negative
            for first, second, neg in dmpo_pairwise(seeded_rng(cfg.seed, "rank-dmpo-order", ex.key), ex, negs):
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


def arm_config(cfg, arm: str, run_dir: Path, seed: int):
    """The arm's run config: its loss, the shared step budget (align.trainer_args.max_steps = rank.steps),
    ε read through the margin with eps_max = rank.eps_cap."""
    spec = ARMS[arm]
    loss = cfg.rank.trl_loss if arm == "trl" else spec.loss
    align = cfg.align.model_copy(update={
        "loss": loss or cfg.align.loss, "rosepo_eps_max": cfg.rank.eps_cap,
        "trainer_args": {**cfg.align.trainer_args, "max_steps": cfg.rank.steps}})
    # the arm's folder, seed and align section: run_loop and run_align read all three from the whole config only
    return cfg.model_copy(update={"run_dir": Path(run_dir), "seed": seed, "align": align})


# ------------------------------------------------------------------------------------ orchestration


def training_seeds(cfg) -> list[int]:
    return list(cfg.rank.seeds) if cfg.rank.seeds else [cfg.seed]


def seed_root(cfg, seed: int) -> RunLayout:
    root = RunLayout(cfg.run_dir)
    return root if cfg.rank.seeds is None else root.arm(f"seed_{seed}")


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
    baselines["base"] = evaluate_policy(cfg, None, root.root, ctx, prompts)
    seconds["base"] = round(time.perf_counter() - started, 1)
    runs: dict[int, dict] = {}
    for seed in training_seeds(cfg):
        sroot = seed_root(cfg, seed)
        runs[seed] = {}
        for arm in ["sft"] + [a for a in cfg.rank.arms if a != "sft"]:  # the SFT (every CI's reference) first
            label = arm if cfg.rank.seeds is None else f"{arm}@seed_{seed}"
            log(f"[rank] {label}")
            method = RankArm(arm, sroot.root, ctx, prompts, show_progress, label=label)
            started = time.perf_counter()
            record = run_loop(arm_config(cfg, arm, sroot.arm(arm).root, seed), method, 0 if arm == "sft" else 1, log=log)
            record["wall_seconds"] = round(time.perf_counter() - started, 1)
            runs[seed][arm] = record
    metrics = collect(cfg, ctx, baselines, seconds, runs)
    atomic_write_json(root.metrics, metrics)
    atomic_write_text(root.report, report_table(cfg, metrics))
    return metrics


def chosen_logps(run_dir: Path) -> list[dict]:
    """[{"step", "logps/chosen"}] over the arm's training (trl's log_history, every logging step)."""
    log = read_json(RunLayout(run_dir).align_log(0)) or {}
    return [{"step": s.get("step"), "logps/chosen": s["logps/chosen"]} for s in log.get("steps", []) if "logps/chosen" in s]


def collect(cfg, ctx: RankContext, baselines: dict, seconds: dict, runs: dict[int, dict]) -> dict:
    """Each row's HR@1 / ValidRatio / out-of-list (mean and sd over seeds), its difference from the
    same seed's SFT with a paired bootstrap 95% CI pooled over seeds, and wall time."""
    from rlrf.evaluation.stats import mean_sd, pooled_difference

    seeds = sorted(runs)
    sft = {s: runs[s]["sft"]["evaluations"]["policy_0"] for s in seeds}
    rows: dict[str, dict] = {}

    def row(label: str, evals: dict[int, dict], wall: list[float], extra: dict | None = None) -> None:
        cell = {"seeds": sorted(evals), "users": next(iter(evals.values()))["users"], "wall_seconds": wall}
        for key, unit in (("hr@1", "hr@1"), ("valid_ratio", "valid"), ("out_of_list", "outside")):
            mean, sd = mean_sd([evals[s][key] for s in sorted(evals)])
            cell[key] = {"mean": mean, "sd": sd, "per_seed": [evals[s][key] for s in sorted(evals)]}
            if label != "SFT":
                cell[key]["vs_sft"] = pooled_difference([(sft[s]["per_user"], evals[s]["per_user"]) for s in evals],
                                                        unit, seed=cfg.seed, n_boot=cfg.rank.bootstrap)
        rows[label] = {**cell, **(extra or {})}

    for name, ev in baselines.items():
        row(BASELINES[name], {s: ev for s in seeds}, [seconds[name]])
    for arm in ["sft"] + [a for a in cfg.rank.arms if a != "sft"]:
        title = f"trl {cfg.rank.trl_loss}" if arm == "trl" else ARMS[arm].title
        label = "policy_0" if arm == "sft" else "policy_1"
        evals = {s: runs[s][arm]["evaluations"][label] for s in seeds if label in runs[s][arm]["evaluations"]}
        if not evals:
            continue
        extra = {"arm": arm}
        if arm != "sft":
            extra["pairs"] = {s: runs[s][arm]["iterations"]["0"]["pairs"] for s in seeds}
            extra["chosen_logps"] = {s: chosen_logps(seed_root(cfg, s).arm(arm).root) for s in seeds}
        row(title, evals, [runs[s][arm]["wall_seconds"] for s in seeds], extra)
    return {"method": "rank", "seeds": seeds, "candidates": cfg.rank.candidates, "split": "rlrf user split",
            "examples": {"sft": len(ctx.sft_examples), "pairs": len(ctx.pair_examples), "eval": len(ctx.eval_examples)},
            "steps": cfg.rank.steps, "rows": rows}


def _fmt(cell: dict) -> str:
    text = f"{cell['mean']:.4f}" + (f" ± {cell['sd']:.4f}" if len(cell["per_seed"]) > 1 else "")
    diff = cell.get("vs_sft")
    if diff:
        text += f" ({diff['mean']:+.4f} [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}])"
    return text


def report_table(cfg, metrics: dict) -> str:
    """report.md: the table (HR@1 and ValidRatio with differences from SFT and their 95% CIs), the
    out-of-list share, wall time, RosePO's ε, and the chosen answer's log-prob over training."""
    lines = [f"# Candidate ranking ({metrics['candidates']} candidates): {len(metrics['seeds'])} seed(s) "
             f"{metrics['seeds']}", "",
             f"Examples: SFT {metrics['examples']['sft']}, preference {metrics['examples']['pairs']} "
             f"({metrics['steps']} steps per arm), held-out {metrics['examples']['eval']} users. "
             "Differences from SFT: paired bootstrap 95% CI over users, pooled over seeds.", "",
             "| row | HR@1 (vs SFT [95% CI]) | ValidRatio (vs SFT [95% CI]) | out of list | wall s |",
             "|---|---|---|---|---|"]
    for label, r in metrics["rows"].items():
        wall = np.mean(r["wall_seconds"]) if r["wall_seconds"] else float("nan")
        lines.append(f"| {label} | {_fmt(r['hr@1'])} | {_fmt(r['valid_ratio'])} | {r['out_of_list']['mean']:.4f} "
                     f"| {wall:.0f} |")
    eps_rows = [(label, s, p["epsilon"]) for label, r in metrics["rows"].items()
                for s, p in (r.get("pairs") or {}).items() if "epsilon" in p]
    if eps_rows:
        lines += ["", "RosePO's personalised ε (SASRec oracle):", "", "| arm | seed | mean | min | median | max | at cap |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {label} | {s} | {e['mean']:.4f} | {e['min']:.4f} | {e['quantiles']['0.5']:.4f} | {e['max']:.4f} "
                  f"| {e['at_cap']:.3f} |" for label, s, e in eps_rows]
    curves = [(label, s, c) for label, r in metrics["rows"].items() if r.get("arm") in ("dpo", "sdpo")
              for s, c in r["chosen_logps"].items() if c]
    if curves:
        lines += ["", "Chosen answer's log-probability over training (trl's logps/chosen, first → last logged step):", ""]
        lines += [f"- {label}, seed {s}: {c[0]['logps/chosen']:.3f} → {c[-1]['logps/chosen']:.3f} "
                  f"({len(c)} logged steps; min {min(x['logps/chosen'] for x in c):.3f})" for label, s, c in curves]
    return "\n".join(lines) + "\n"
