"""Reranking lists: per user, the visible history before KAR's cut and L labelled candidates.

Three sources (`data.lists.source`): KAR's items after the cut labelled by rating, the user's future
against unseen items of matched popularity, or SASRec's candidates. `visible_sequences` is the
other side of the cut: what a model may train on without seeing a held-out user's future.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlrf.core.config import ListsConfig
from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_text
from rlrf.core.records import ListRecord
from rlrf.data.dataset import Dataset

# One user's reranking task is the lists.jsonl record itself (one definition, in rlrf/core/records.py).
RerankList = ListRecord


def history_cut(n: int, max_history: int) -> int:
    """KAR's cut: the first min((n+1)//2, max_history) interactions are the visible history."""
    return min((n + 1) // 2, max_history)


def check_unseen(uid: str, unseen: int, need: int, length: int) -> None:
    """Padding draws unseen items until the list is full: too few of them would never finish."""
    if unseen < need:
        raise UserError(f"data.lists.length: {length} needs {need} items user '{uid}' has not seen; "
                        f"the catalog has {unseen}")


def kar_lists(ds: Dataset, cfg: ListsConfig, positive_rating: float, seed: int) -> dict[str, RerankList]:
    """Per user: items right after the cut labelled by rating, padded with sampled unseen items (label 0), shuffled."""
    rng = np.random.default_rng(seed)
    n_items = len(ds.catalog)
    lists = {}
    for uid, user in ds.users.items():
        cut = history_cut(len(user.items), cfg.max_history)
        future = user.items[cut : cut + cfg.length]
        labels = [int(r is not None and r >= positive_rating) for r in user.ratings[cut : cut + len(future)]]
        seen = set(user.items)
        check_unseen(uid, n_items - len(seen), cfg.length - len(future), cfg.length)
        pad: list[int] = []
        while len(future) + len(pad) < cfg.length:
            candidate = int(rng.integers(n_items))
            if candidate not in seen and candidate not in pad:
                pad.append(candidate)
        items = future + pad
        labels = labels + [0] * len(pad)
        order = rng.permutation(len(items))
        lists[uid] = RerankList(
            uid,
            user.items[:cut],
            user.ratings[:cut],
            [items[i] for i in order],
            [labels[i] for i in order],
        )
    return lists


def visible_sequences(ds: Dataset, max_history: int) -> dict[str, list[int]]:
    """What a model may train on: train users' full sequences, only the history before the cut for valid/test users."""
    held_out = set(ds.splits["valid"]) | set(ds.splits["test"])
    return {
        uid: (user.items[: history_cut(len(user.items), max_history)] if uid in held_out else user.items)
        for uid, user in ds.users.items()
    }


def visible_popularity(ds: Dataset, max_history: int) -> np.ndarray:
    """Interaction counts per catalog item over `visible_sequences` (no held-out future is counted)."""
    counts = np.zeros(len(ds.catalog))
    for items in visible_sequences(ds, max_history).values():
        np.add.at(counts, items, 1.0)
    return counts


def future_list_at(ds: Dataset, uid: str, cut: int, length: int, popularity: np.ndarray,
                   rng: np.random.Generator) -> RerankList:
    """The user's next `length // 2` items after `cut` (label 1) and unseen items drawn in proportion to
    popularity + 1 (label 0) up to `length`, shuffled."""
    user = ds.users[uid]
    positives = user.items[cut: cut + length // 2]
    weights = popularity + 1.0
    weights[user.items] = 0.0
    need = length - len(positives)
    if np.count_nonzero(weights) < need:
        raise UserError(f"data.lists.length: {length} needs {need} items user '{uid}' has not seen; "
                        f"the catalog has {int(np.count_nonzero(weights))}")
    negatives = rng.choice(len(weights), size=need, replace=False, p=weights / weights.sum()).tolist()
    items, labels = positives + negatives, [1] * len(positives) + [0] * need
    order = rng.permutation(length)
    return RerankList(uid, user.items[:cut], user.ratings[:cut], [items[i] for i in order], [labels[i] for i in order])


def future_lists(ds: Dataset, cfg: ListsConfig, seed: int) -> dict[str, RerankList]:
    """Per user: what they went on to watch after the cut against unseen items of matched popularity.

    Why this source exists (issue 12, docs/reward.md): a KAR list labels the rating of items the
    user did watch, which is mostly item quality, and with 10 items a summary's reward depends on
    which items happen to be in the list, not on the user. Here the label is the user's taste
    (watched vs. equally popular, unwatched) and the list is long, so a summary that describes the
    user wins on any half of it.
    """
    rng = np.random.default_rng(seed)
    popularity = visible_popularity(ds, cfg.max_history)
    return {uid: future_list_at(ds, uid, history_cut(len(user.items), cfg.max_history), cfg.length, popularity, rng)
            for uid, user in ds.users.items()}


def candidate_lists(ds: Dataset, cfg: ListsConfig, candidates: dict[str, list[int]]) -> dict[str, RerankList]:
    """Per user: SASRec's top-L for the history before the cut; label 1 = a held-out future item."""
    lists = {}
    for uid, user in ds.users.items():
        cut = history_cut(len(user.items), cfg.max_history)
        future = set(user.items[cut:])
        items = candidates[uid][: cfg.length]
        lists[uid] = RerankList(uid, user.items[:cut], user.ratings[:cut], items, [int(i in future) for i in items])
    return lists


def save_lists(lists: dict[str, RerankList], path: Path) -> None:
    atomic_write_text(path, "".join(lst.to_json() + "\n" for lst in lists.values()))


def load_lists(path: Path) -> dict[str, RerankList]:
    if not path.exists():
        raise UserError(f"{path}: lists not found; run `rlrf data` first")
    from rlrf.core.io import read_jsonl

    out = {}
    for record in read_jsonl(path):
        record = RerankList(**record)
        out[record.user] = record
    return out


def check_source(ds: Dataset, cfg: ListsConfig) -> None:
    """A list source the data cannot feed is refused before anything is trained or written: KAR's
    labels are ratings, and without them every list would be all negatives."""
    if cfg.source == "kar" and not ds.rated:
        raise UserError(f"{ds.path / (ds.name + '.inter')}: data.lists.source 'kar' labels list items by their "
                        "rating, but the interactions have no rating field; use data.lists.source: future")


def build_lists(
    ds: Dataset, cfg: ListsConfig, seed: int = 0, positive_rating: float = 4.0,
    candidates: dict[str, list[int]] | None = None,
) -> dict[str, RerankList]:
    check_source(ds, cfg)
    if cfg.source == "kar":
        return kar_lists(ds, cfg, positive_rating, seed)
    if cfg.source == "future":
        return future_lists(ds, cfg, seed)
    if candidates is None:
        raise UserError("data.lists.source is 'sasrec' but no SASRec candidates were given")
    return candidate_lists(ds, cfg, candidates)
