"""The candidate-ranking task's data: examples, prompts, answers grounded within the list, negatives.

LLaRA's protocol, which S-DPO follows: the prompt shows the user's last `rank.max_history` items
(titles, oldest first) and `rank.candidates` candidates -- the true next item and items the user
never interacted with, drawn uniformly with a seed fixed by the example (never by the training
seed), then shuffled -- and the answer is one candidate's "Title (year)". Every function here is a
pure function of the dataset and its arguments, so every arm of `rlrf rank` sees the same examples.

Candidates have pairwise distinct normalised titles (`normalise_title` key and year), so an answer
names at most one of them. Answers are grounded WITHIN the list (`ground_answer`): exact text,
then the normalised title, then LLaRA's rule (the answer contains exactly one candidate's
normalised title as whole words). Near-misses (a misspelt or truncated title) are not repaired:
they count as invalid answers, so ValidRatio is never inflated by fuzzy matching; an answer whose
normalised title is a catalogue item outside the list is counted as "outside".
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np

LEVELS = ("exact", "normalised", "contains", "outside", "none")
_QUOTED = re.compile(r'"([^"]+)"|\u201c([^\u201d]+)\u201d')


def seeded_rng(*parts) -> np.random.Generator:
    """A generator that depends on `parts` alone (process- and order-independent)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class RankExample:
    """One ranking question: `key` is "<user>" (evaluation) or "<user>@<t>" (training window t)."""

    key: str
    user: str
    history: tuple[int, ...]  # shown items, oldest first
    target: int
    candidates: tuple[int, ...]  # shuffled; holds the target exactly once


class TitleKeys:
    """Each catalogue item's answer text ("Title (year)") and normalised (title key, year)."""

    def __init__(self, catalog):
        from rlrf.generation.grounding import catalogue_text, normalise_title

        self.texts = [catalogue_text(t, y) for t, y in zip(catalog.titles, catalog.years)]
        self.keys = [(normalise_title(t)[0], y) for t, y in zip(catalog.titles, catalog.years)]
        self.by_key: dict[str, list[int]] = {}
        for i, (key, _) in enumerate(self.keys):
            self.by_key.setdefault(key, []).append(i)


def draw_candidates(rng: np.random.Generator, keys: TitleKeys, target: int, never: set[int], n: int) -> tuple[int, ...]:
    """The target and n - 1 items outside `never` (the user's items), uniformly without replacement,
    skipping an item whose normalised title and year repeat a drawn one's; shuffled."""
    n_items = len(keys.keys)
    seen = {keys.keys[target]}
    drawn = [target]
    for i in rng.permutation(n_items).tolist():
        if len(drawn) == n:
            break
        if i in never or i == target or keys.keys[i] in seen:
            continue
        seen.add(keys.keys[i])
        drawn.append(i)
    if len(drawn) < n:
        raise ValueError(f"only {len(drawn)} candidates with distinct titles outside the user's items; {n} wanted")
    rng.shuffle(drawn)
    return tuple(drawn)


def window_examples(ds, users, keys: TitleKeys, *, windows: int, max_history: int, n_candidates: int,
                    seed: int) -> list[RankExample]:
    """Sliding windows of training users: (the <= max_history items before t -> item t) at each
    user's last `windows` positions t >= 1; candidates exclude every item of the user."""
    out = []
    for u in users:
        items = ds.users[u].items
        never = set(items)
        for t in range(max(1, len(items) - windows), len(items)):
            rng = seeded_rng(seed, "rank-candidates", u, t)
            out.append(RankExample(f"{u}@{t}", u, tuple(items[:t][-max_history:]), items[t],
                                   draw_candidates(rng, keys, items[t], never, n_candidates)))
    return out


def heldout_examples(ds, users, keys: TitleKeys, *, max_history: int, n_candidates: int, seed: int) -> list[RankExample]:
    """Each held-out user's last item after the items before it (users with two or more items)."""
    out = []
    for u in users:
        items = ds.users[u].items
        if len(items) < 2:
            continue
        rng = seeded_rng(seed, "rank-candidates", u, len(items) - 1)
        out.append(RankExample(u, u, tuple(items[:-1][-max_history:]), items[-1],
                               draw_candidates(rng, keys, items[-1], set(items), n_candidates)))
    return out


def sample_examples(examples: list[RankExample], n: int | None, seed: int, tag: str) -> list[RankExample]:
    """A seeded subset of n examples in their original order (all of them when n is None or larger)."""
    if n is None or n >= len(examples):
        return list(examples)
    picked = seeded_rng(seed, tag).choice(len(examples), size=n, replace=False)
    return [examples[i] for i in sorted(picked.tolist())]


# ------------------------------------------------------------------------------------------ prompts


class RankPrompts:
    """The ranking prompt (prompts/rank.j2) and DMPO's pairwise prompt (prompts/rank_pair.j2)."""

    def __init__(self, tokenizer, catalog, *, max_prompt_tokens: int, domain: str):
        from rlrf.generation.generate import PromptBuilder

        self.catalog = catalog
        self.rank = PromptBuilder(tokenizer, "rank", max_prompt_tokens=max_prompt_tokens, domain=domain)
        self.pair = PromptBuilder(tokenizer, "rank_pair", max_prompt_tokens=max_prompt_tokens, domain=domain)

    def _item(self, builder, i: int) -> dict:
        return {"title": builder.safe(self.catalog.titles[i]), "year": self.catalog.years[i]}

    def ranking(self, ex: RankExample):
        """The ranking question (history trimmed to the token budget, every candidate kept)."""
        b = self.rank
        return b.history_prompt(ex.key, self.catalog, list(ex.history),
                                candidates=[self._item(b, i) for i in ex.candidates])

    def pairwise(self, ex: RankExample, first: int, second: int):
        """DMPO's instruction: rank the likelihood of the user watching `first` and `second`."""
        b = self.pair
        return b.history_prompt(ex.key, self.catalog, list(ex.history), first=self._item(b, first),
                                second=self._item(b, second))


# ------------------------------------------------------------------------------------------ answers


@dataclass(frozen=True)
class Answer:
    """An answer grounded within its list: `item` is the candidate it names (None: invalid);
    `outside` the catalogue item it names when that item is not in the list."""

    item: int | None
    level: str  # one of LEVELS
    outside: int | None = None


def ground_answer(text: str, candidates, keys: TitleKeys) -> Answer:
    """Exact "Title (year)", then normalised title (year must agree when given; the title line, then
    each quoted span of the answer), then LLaRA's rule:
    exactly one candidate's normalised title occurs in the normalised answer as whole words (not a
    candidate the answer names with another year)."""
    from rlrf.generation.grounding import extract_title, normalise_title

    title = extract_title(text or "").strip()
    for i in candidates:
        if title == keys.texts[i]:
            return Answer(i, "exact")
    # the title line, then any quoted span ('The user will watch "Fargo" (1996).')
    forms = [title] + [a or b for a, b in _QUOTED.findall(text or "")]
    for form in forms:
        key, year = normalise_title(form)
        named = [i for i in candidates if key and keys.keys[i][0] == key and (year is None or keys.keys[i][1] in (None, year))]
        if len(named) == 1:
            return Answer(named[0], "normalised")
    key, year = normalise_title(title)
    whole = f" {normalise_title(text or '')[0]} "
    # a candidate whose title the answer names with another year was judged (and refused) above
    inside = [i for i in candidates if keys.keys[i][0] and keys.keys[i][0] != key and f" {keys.keys[i][0]} " in whole]
    if len(inside) == 1:
        return Answer(inside[0], "contains")
    for form in forms:
        key, year = normalise_title(form)
        outside = [i for i in keys.by_key.get(key, []) if i not in set(candidates)] if key else []
        if outside:
            same_year = [i for i in outside if year is None or keys.keys[i][1] == year]
            return Answer(None, "outside", (same_year or outside)[0])
    return Answer(None, "none")


# ---------------------------------------------------------------------------------------- negatives


def uniform_negatives(rng: np.random.Generator, ex: RankExample, k: int) -> list[int]:
    """k distinct non-target candidates, uniformly."""
    others = [i for i in ex.candidates if i != ex.target]
    return [others[j] for j in rng.choice(len(others), size=min(k, len(others)), replace=False).tolist()]


def popular_negative(ex: RankExample, popularity) -> int:
    """RosePO's popularity strategy: the most popular non-target candidate (ties: shown first)."""
    others = [i for i in ex.candidates if i != ex.target]
    return max(others, key=lambda i: (popularity[i], -others.index(i)))


def self_hard_negative(answer: Answer, ex: RankExample) -> int | None:
    """RosePO's helpfulness strategy: the SFT policy's own answer when it names a wrong candidate."""
    return answer.item if answer.item is not None and answer.item != ex.target else None


def hallucination_negative(rng: np.random.Generator, ex: RankExample, keys: TitleKeys, never: set[int]) -> int:
    """RosePO's hallucination strategy: a catalogue title NOT in the list (and not the user's, nor
    sharing a candidate's normalised title), uniformly."""
    listed = {keys.keys[i][0] for i in ex.candidates}
    exclude = set(ex.candidates) | never
    for i in rng.permutation(len(keys.keys)).tolist():
        if i not in exclude and keys.keys[i][0] not in listed:
            return i
    raise ValueError(f"{ex.key}: no catalogue item outside the list")


def dmpo_pairwise(rng: np.random.Generator, ex: RankExample, negatives: list[int]) -> list[tuple[int, int, int]]:
    """DMPO's own data form: one pairwise instruction per negative, (first, second, negative) with
    the target and the negative shown in a random order; the chosen answer orders the target first."""
    out = []
    for neg in negatives:
        first, second = (ex.target, neg) if rng.random() < 0.5 else (neg, ex.target)
        out.append((first, second, neg))
    return out


# ---------------------------------------------------------------------------------- RosePO's oracle


def oracle_epsilon(chosen_score: float, rejected_score: float, *, temperature: float, cap: float) -> float:
    """The personalised smoothing factor: the oracle's probability that the rejected item is the
    better one, σ((s_rejected − s_chosen) / T), capped at `cap` (< 0.5: the label keeps the larger
    weight) and floored at 1e-6 (an oracle that never saw an item scores it −inf)."""
    if not 0.0 < cap < 0.5:
        raise ValueError(f"epsilon cap must lie in (0, 0.5), got {cap}")
    gap = (rejected_score - chosen_score) / temperature
    p = 1.0 / (1.0 + math.exp(-gap)) if gap > -700 else 0.0
    return float(min(max(p, 1e-6), cap))


def margin_for_epsilon(eps: float, *, eps_max: float, tau: float) -> float:
    """The pair `margin` for which the trainer's ε = eps_max · exp(−margin / tau) equals `eps`: the
    alignment stage reads ε through the margin only, so a personalised ε travels in that field."""
    if not 0.0 < eps <= eps_max:
        raise ValueError(f"epsilon {eps} must lie in (0, eps_max = {eps_max}]")
    return -tau * math.log(eps / eps_max)
