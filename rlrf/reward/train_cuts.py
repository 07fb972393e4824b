"""More training lists per TRAIN user at several history cuts (`reward.train_cuts`): KAR, future or SASRec lists.

The run's lists (one per user, cut `history_cut(n, max_history)`) stay as they are for validation,
test and scoring. For training only, each TRAIN user with enough interactions also gets lists at
other cuts: half the main cut, then one list length after the main list, two lengths, ... (up to
`train_cuts` lists per user in all). Each is built like a KAR list (the next `length` items labelled
rating >= positive_rating, padded with sampled unseen items, shuffled) with its own history, so its
"self" text is built from that history only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlrf.core.config import ListsConfig, SASRecConfig
from rlrf.data.lists import RerankList, check_unseen, future_list_at, history_cut, visible_popularity


def extra_cuts(n: int, main: int, length: int, count: int) -> list[int]:
    """Up to `count` cuts other than `main`, each leaving at least one future item."""
    out = []
    for c in [max(1, main // 2)] + [main + j * length for j in range(1, count + 1)]:
        if len(out) >= count:
            break
        if c != main and 1 <= c < n and c not in out:
            out.append(c)
    return out


def kar_list_at(ds, uid: str, cut: int, length: int, positive_rating: float, rng: np.random.Generator) -> RerankList:
    user = ds.users[uid]
    future = user.items[cut: cut + length]
    labels = [int(r is not None and r >= positive_rating) for r in user.ratings[cut: cut + len(future)]]
    seen = set(user.items)
    check_unseen(uid, len(ds.catalog) - len(seen), length - len(future), length)
    pad: list[int] = []
    while len(future) + len(pad) < length:
        c = int(rng.integers(len(ds.catalog)))
        if c not in seen and c not in pad:
            pad.append(c)
    items, labels = future + pad, labels + [0] * len(pad)
    order = rng.permutation(len(items))
    return RerankList(uid, user.items[:cut], user.ratings[:cut], [items[i] for i in order], [labels[i] for i in order])


def extra_train_lists(ds, users, lists_cfg, positive_rating: float, train_cuts: int, seed: int) -> list[RerankList]:
    """(train_cuts − 1) more KAR or future lists per user of `users` (TRAIN users only: they read the users' future)."""
    rng = np.random.default_rng(seed + 7919)
    popularity = visible_popularity(ds, lists_cfg.max_history) if lists_cfg.source == "future" else None
    out = []
    for uid in users:
        n = len(ds.users[uid].items)
        main = history_cut(n, lists_cfg.max_history)
        for cut in extra_cuts(n, main, lists_cfg.length, train_cuts - 1):
            out.append(kar_list_at(ds, uid, cut, lists_cfg.length, positive_rating, rng) if popularity is None
                       else future_list_at(ds, uid, cut, lists_cfg.length, popularity, rng))
    return out


def extra_sasrec_train_lists(ds, users, lists_cfg: ListsConfig, sasrec: SASRecConfig, sasrec_dir: Path, seed: int,
                             train_cuts: int) -> list[RerankList]:
    """(train_cuts − 1) more SASRec candidate lists per TRAIN user at other cuts (label = watched after the cut).

    Reuses the run's SASRec (`sasrec_dir`, trained by `rlrf data`; retrained only if missing).
    """
    from recmodels.sequential import score_histories, top_m, train_sasrec
    from rlrf.data.candidates import sasrec_settings
    from rlrf.data.lists import visible_sequences

    model, dataset = train_sasrec(visible_sequences(ds, lists_cfg.max_history), sasrec_settings(sasrec), sasrec_dir, seed)
    length = lists_cfg.length
    keys, histories, futures = [], {}, {}
    for uid in users:
        items = ds.users[uid].items
        main = history_cut(len(items), lists_cfg.max_history)
        for cut in extra_cuts(len(items), main, length, train_cuts - 1):
            key = f"{uid}\t{cut}"
            keys.append((uid, cut))
            histories[key] = items[:cut]
            futures[key] = set(items[cut:])
    if not keys:
        return []
    order, scores = score_histories(model, dataset, len(ds.catalog), histories)
    top = top_m(scores, [histories[k] for k in order], length)
    out = []
    for row, key in enumerate(order):
        uid, cut = key.split("\t")
        cand = top[row, :length].tolist()
        user = ds.users[uid]
        out.append(RerankList(uid, user.items[: int(cut)], user.ratings[: int(cut)], cand,
                              [int(i in futures[key]) for i in cand]))
    return out
