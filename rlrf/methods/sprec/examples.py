"""SPRec's training examples: which train users each stage sees, and the SFT records made of them.

Every user sample is seeded by (training seed, what it is for), so all arms of a comparison see the
same users and a rerun sees the same ones again. Popularity counts TRAINING users' interactions only
(`train_popularity`): a held-out user's items never make an item look popular.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rlrf.core.config import SPRecConfig, SupervisedConfig


def seeded_rng(seed: int, *parts) -> np.random.Generator:
    """A generator for one named draw (e.g. ("iteration", 2)): independent of every other draw's order."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def answer_text(catalog, i: int) -> str:
    """The completion the policy is taught for item i: "Title (year)", as the prompt asks (and as grounding embeds it)."""
    from rlrf.generation.grounding import catalogue_text

    return catalogue_text(catalog.titles[i], catalog.years[i])


def eligible_train_users(ds) -> list[str]:
    return [u for u in ds.splits["train"] if len(ds.users[u].items) >= 2]


def iteration_users(ds, sprec: SPRecConfig, seed: int, iteration: int) -> list[str]:
    """`sprec.users_per_iteration` train users sampled afresh for iteration t under training seed
    `seed` (the same for every method, so they compare fairly)."""
    users = eligible_train_users(ds)
    n = min(sprec.users_per_iteration, len(users))
    picked = seeded_rng(seed, "iteration", iteration).choice(len(users), size=n, replace=False)
    return [users[i] for i in sorted(picked)]


def sft_users(ds, sft: SupervisedConfig, seed: int) -> list[str]:
    """The train users of the initial SFT: every eligible one, or a sample of `sft.users` under `seed`."""
    users = eligible_train_users(ds)
    if sft.users is None or sft.users >= len(users):
        return users
    picked = seeded_rng(seed, "sft").choice(len(users), size=sft.users, replace=False)
    return [users[i] for i in sorted(picked)]


def next_item_prompts(cfg, ds, tokenizer, users) -> list:
    """Prompts over each user's items before the last one; `meta["target"]` = the last item's id."""
    from rlrf.generation.generate import build_prompts

    return build_prompts(cfg, ds, tokenizer, "next_item", users=users)


def sft_records(cfg, ds, tokenizer, users) -> list[dict]:
    """One example per user: its last item after the items before it (an iteration's fresh positives)."""
    cat = ds.catalog
    return [{"prompt": p.text, "completion": answer_text(cat, cat.index(p.meta["target"]))}
            for p in next_item_prompts(cfg, ds, tokenizer, users)]


def sft_windows(ds, sprec: SPRecConfig, seed: int, users) -> list[tuple[str, int]]:
    """(user, t): predict item t from the items before it, at each user's last `sprec.sft_windows`
    positions (t >= 1); a sample (under `seed`) of `sprec.sft_max_examples` when there are more."""
    out = []
    for u in users:
        n = len(ds.users[u].items)
        out += [(u, t) for t in range(max(1, n - sprec.sft_windows), n)]
    cap = sprec.sft_max_examples
    if cap is not None and len(out) > cap:
        picked = seeded_rng(seed, "sft_windows").choice(len(out), size=cap, replace=False)
        out = [out[i] for i in sorted(picked)]
    return out


def window_records(cfg, ds, tokenizer, windows) -> list[dict]:
    """SFT records of sliding windows: the prompt shows the `data.lists.max_history` items before t
    (the same template as generation; the window at the last position is the generation prompt)."""
    from rlrf.generation.generate import PromptBuilder

    g = cfg.generate
    builder = PromptBuilder(tokenizer, g.templates.get("next_item", "next_item"), max_prompt_tokens=g.max_prompt_tokens,
                            domain=g.domain)
    cat = ds.catalog
    records = []
    for u, t in windows:
        user = ds.users[u]
        p = builder.history_prompt(u, cat, user.items[:t][-cfg.data.lists.max_history:], None,
                                   user.profile if g.profile else None)
        records.append({"prompt": p.text, "completion": answer_text(cat, user.items[t])})
    return records
