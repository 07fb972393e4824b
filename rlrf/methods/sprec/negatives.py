"""Where each arm's rejected answers come from, and the pairs they make with the real next item.

Faithful to SPRec: the self-play negative is the policy's own words (its greedy answer first, then
sampled fallbacks), dropped only when empty or when it names the target, by item or by normalised
title (a twin title counts as the target). The baselines draw catalogue items outside the user's
history, uniformly (DPO-random) or by train-only popularity (DPO-popularity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlrf.methods.sprec.examples import answer_text


@dataclass(frozen=True)
class Negative:
    """One rejected answer: its text (the policy's own words for self-play), the catalogue item it
    names when known (popularity statistics, RosePO's margin) and where it came from."""

    text: str
    item: int | None
    source: str  # greedy | sampled | catalogue (self-play fallback) | random | popularity


@dataclass(frozen=True)
class Sampler:
    """Where an arm's negatives come from: the policy's own predictions (`from_policy`: the arm
    generates them each iteration), or catalogue items drawn uniformly or by popularity."""

    title: str
    from_policy: bool = False
    by_popularity: bool = False


SAMPLERS = {
    "sprec": Sampler("SPRec", from_policy=True),
    "dpo_random": Sampler("DPO-random"),
    "dpo_popularity": Sampler("DPO-popularity", by_popularity=True),
}


def usable_guess(grounder, text: str, grounding, target: int) -> bool:
    """A policy answer can be a negative unless it is empty or names the target: grounded to the
    target or its twin, or its normalised title equals the target's."""
    from rlrf.generation.grounding import extract_title

    if not extract_title(text or ""):
        return False
    if grounding.item is not None and grounder.same_title(grounding.item, target):
        return False
    return not grounder.names_item(text, target)


def self_play_negatives(grounder, target: int, candidates, k: int) -> list[Negative]:
    """Up to k usable, distinct (by normalised title) policy answers, in order: `candidates` are
    (k, text, grounding) with k=0 the greedy answer and k>=1 sampled fallbacks."""
    from rlrf.generation.grounding import extract_title, normalise_title

    out, seen = [], set()
    for kk, text, g in candidates:
        if not usable_guess(grounder, text, g, target):
            continue
        key = normalise_title(extract_title(text))[0] or text.strip()
        if key in seen:
            continue
        seen.add(key)
        out.append(Negative(text.strip(), g.item, "greedy" if kk == 0 else "sampled"))
    return out[:k]


def sampled_negatives(rng: np.random.Generator, n_items: int, k: int, exclude: set[int],
                      popularity: np.ndarray | None = None) -> list[int]:
    """k distinct catalogue items outside `exclude`, uniformly or in proportion to popularity."""
    weights = np.ones(n_items) if popularity is None else np.asarray(popularity, dtype=np.float64) + 1e-9
    weights = weights.copy()
    weights[list(exclude)] = 0.0
    k = min(k, int((weights > 0).sum()))
    return rng.choice(n_items, size=k, replace=False, p=weights / weights.sum()).tolist() if k else []


def build_pairs(ds, prompts, negatives: dict[str, list[Negative]], similarity=None, iteration: int = 0) -> list[dict]:
    """Pairs in the align stage's format: chosen = the real next item, rejected = the negatives' texts.

    `margin` (RosePO's oracle) = 1 − cos(target, first negative's item) when `similarity` is given and
    that item is known: a negative that reads like the target is a less certain "worse" answer.
    """
    cat = ds.catalog
    pairs = []
    for p in prompts:
        negs = negatives.get(p.key, [])
        if not negs:
            continue
        target = cat.index(p.meta["target"])
        chosen = answer_text(cat, target)
        texts = [n.text for n in negs]
        if any(n.item == target for n in negs) or chosen in texts:
            raise AssertionError(f"user {p.key}: the target was drawn as its own negative")
        first = negs[0].item
        margin = 1.0 - float(similarity(target, first)) if similarity is not None and first is not None else 1.0
        pairs.append({"user": p.key, "iter": iteration, "prompt": p.text, "chosen": chosen,
                      "rejected": texts[0], "rejected_list": texts, "rejected_sources": [n.source for n in negs],
                      "margin": round(max(margin, 1e-6), 6)})
    return pairs
