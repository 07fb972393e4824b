"""How `rlrf rank` judges a policy and the baselines on the held-out examples: the greedy answer,
grounded within its list, scored by HR@1, ValidRatio and the out-of-list share (with the per-user
values the paired CIs resample); random, popularity and SASRec ranking the same candidates.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

import numpy as np

from rlrf.core.io import atomic_write_json, atomic_write_jsonl, read_json
from rlrf.core.layout import RunLayout
from rlrf.methods.rank_context import RankContext
from rlrf.methods.rank_examples import LEVELS, RankExample, RankPrompts, ground_answer

BASELINES = {"random": "random", "popularity": "popularity among the candidates", "sasrec": "SASRec",
             "base": "untuned policy"}


def policy_slug(root: Path, adapter: Path | None) -> str:
    """A folder name for a policy: ``base`` or its adapter's path under `root` (``sft__adapter``)."""
    if adapter is None:
        return "base"
    adapter = Path(adapter)
    try:
        return "__".join(adapter.resolve().relative_to(Path(root).resolve()).parts)
    except ValueError:
        return "adapter_" + hashlib.sha256(str(adapter.resolve()).encode()).hexdigest()[:12]


def greedy_answers(cfg, prompts, adapter: Path | None, seed: int) -> list[str]:
    """The greedy answer of the policy with `adapter` (None: the base model) to each prompt (the rlrf
    generation backends; each request seeded by `seed` and its example)."""
    from rlrf.core.threads import use_threads
    from rlrf.generation.backends import Request, SamplingParams, make_backend, sample_seed
    from rlrf.generation.policy import load_policy

    use_threads(cfg)
    policy = load_policy(cfg.llm, adapter=adapter)
    engine = make_backend(cfg.generate.backend, policy, batch_size=cfg.generate.batch_size)
    params = SamplingParams(max_new_tokens=cfg.generate.max_new_tokens, temperature=0.0, top_p=1.0, top_k=0)
    requests = [Request(prompt_ids=p.ids, seeds=[sample_seed(seed, "rank", p.key)]) for p in prompts]
    texts: list[str | None] = [None] * len(prompts)
    for batch in engine.generate(requests, params):
        for s in batch:
            texts[s.request] = policy.tokenizer.decode(s.token_ids, skip_special_tokens=True).strip()
    return [t or "" for t in texts]


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


def evaluate_policy(cfg, adapter: Path | None, root: Path, ctx: RankContext, prompts: RankPrompts, seed: int) -> dict:
    """The policy with `adapter` (None: the base model) on the held-out examples, answering under
    `seed`; cached in ``<root>/eval/<policy>/`` (a policy shared by several arms, the SFT, is
    evaluated once)."""
    slug = policy_slug(root, adapter)
    out = RunLayout(root).evaluation(slug)
    keys = [ex.key for ex in ctx.eval_examples]
    cached = read_json(out.eval_result)
    if cached is not None and cached.get("per_user", {}).get("users") == keys:
        return cached
    started = time.perf_counter()
    texts = greedy_answers(cfg, [prompts.ranking(ex) for ex in ctx.eval_examples], adapter, seed)
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
