"""Training summaries that teach the +knowledge reranker to read a summary (`reward.train_summaries: pool`).

With the fixed "self" text (built from the visible history the model already sees) the summary
carries nothing new, so the model learns to ignore it. Here each TRAIN list gets, every epoch, one
summary drawn from a pool (weights `reward.pool_weights`):

* ``history`` — the "self" text from the visible history (what a policy summary mostly is),
* ``future``  — one of `reward.pool_size` texts written from a random subset of that TRAIN user's
  future liked items (the list's positives and the next liked items after the list), with genres
  and titles, in one of several phrasings; each title is swapped for a random catalogue item with
  probability `reward.pool_noise`,
* ``empty``   — no summary (the model's "missing user" vector).

Leakage: future texts are built for TRAIN users only; validation lists (model selection) keep the
"self" text, and test users are never read here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from rlrf.core.errors import UserError
from rlrf.reward.inputs import RerankerInputs, encode_summaries

PHRASINGS = (
    "Likes {genres} movies. Favourites: {titles}.",
    "Enjoys {genres}; would happily watch {titles}.",
    "Into {genres}. Movies they love: {titles}.",
    "Favourite genres: {genres}.",
    "Would rate highly: {titles}.",
)


def future_liked(ds, lst, source: str, positive_rating: float, extra: int = 5) -> list[int]:
    """The list's positives, then up to `extra` further future items the user liked (not in the list)."""
    user = ds.users[lst.user]
    cut = len(lst.history)
    in_list = set(lst.items)
    pos = [i for i, y in zip(lst.items, lst.labels) if y > 0]
    more = []
    for i, r in zip(user.items[cut:], user.ratings[cut:]):
        liked = source != "kar" or r is None or r >= positive_rating
        if liked and i not in in_list and i not in more:
            more.append(i)
        if len(more) >= extra:
            break
    return pos + more


def future_text(catalog, liked: Sequence[int], rng: np.random.Generator, noise: float, exclude=()) -> str:
    """One text from a random non-empty subset (≤ 5) of `liked`; titles swapped for random items with prob `noise`."""
    if not liked:
        return ""
    k = int(rng.integers(1, min(5, len(liked)) + 1))
    chosen = [int(i) for i in rng.choice(np.asarray(liked), size=k, replace=False)]
    exclude = set(exclude)
    items = []
    for i in chosen:
        if rng.random() < noise:
            j = int(rng.integers(len(catalog)))
            while j in exclude:
                j = int(rng.integers(len(catalog)))
            i = j
        items.append(i)
    weights: Counter[str] = Counter()
    for i in items:
        for g in catalog.genres[i]:
            weights[g] += 1.0 / len(catalog.genres[i])
    top = [g for g, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[: int(rng.integers(1, 4))]]
    phrasing = PHRASINGS[int(rng.integers(len(PHRASINGS)))] if top else PHRASINGS[-1]
    return phrasing.format(genres=", ".join(top), titles="; ".join(catalog.titles[i] for i in items))


class PoolSampler:
    """`epoch -> (user_k [N, Dk], has_k [N])` for the training lists, one pool draw per list and epoch."""

    def __init__(self, inputs: RerankerInputs, lists: Sequence, seed: int, self_k: tuple | None = None):
        rcfg = inputs.reward
        rng = np.random.default_rng(inputs.seed)  # the texts depend on the data seed only (encoded once, cached)
        cat = inputs.ds.catalog
        texts: list[str] = []
        self.n = len(lists)
        self.size = rcfg.pool_size
        for lst in lists:
            liked = future_liked(inputs.ds, lst, inputs.data.lists.source, inputs.data.positive_rating)
            exclude = set(lst.items) | set(inputs.ds.users[lst.user].items)
            texts += [future_text(cat, liked, rng, rcfg.pool_noise, exclude) for _ in range(self.size)]
        self.future_k, self.future_has = encode_summaries(inputs.encoder, texts)  # [N * size, Dk]
        self.texts = texts
        self.self_k, self.self_has = self_k if self_k is not None else inputs.user_knowledge([lst.user for lst in lists])
        w = np.asarray(rcfg.pool_weights, dtype=float)
        if w.sum() <= 0:
            raise UserError("reward.pool_weights must have a positive sum")
        self.weights = torch.tensor(w / w.sum())
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        kind = torch.multinomial(self.weights, self.n, replacement=True, generator=self.gen)  # 0 self, 1 future, 2 empty
        pick = torch.randint(self.size, (self.n,), generator=self.gen) + torch.arange(self.n) * self.size
        uk = torch.where((kind == 1).unsqueeze(-1), self.future_k[pick], self.self_k)
        hk = torch.where(kind == 1, self.future_has[pick], self.self_has) & (kind != 2)
        return uk, hk
