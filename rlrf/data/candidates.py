"""SASRec candidate lists: what the sequential model may see, and its top-M for every user.

SASRec is trained on what no evaluation may see: the full sequences of training users and only the
visible history (before the list cut) of validation and test users. Its validation metric is the
next item after the cut for validation users, with seen items masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rlrf.core.config import SASRecConfig
from rlrf.data.dataset import Dataset
from rlrf.data.lists import history_cut, visible_sequences

if TYPE_CHECKING:  # recmodels.sequential imports RecBole: only when SASRec runs
    from recmodels.sequential import SASRecSettings


@dataclass
class Candidates:
    """Top-M catalog indices per user (seen history masked) and SASRec's validation quality."""

    items: dict[str, list[int]]
    valid_hr10: float
    valid_ndcg10: float


def sasrec_settings(cfg: SASRecConfig) -> SASRecSettings:
    """The `sasrec:` section as recmodels' settings (`enabled` and `top_m` are rlrf's own)."""
    from recmodels.sequential import SASRecSettings

    return SASRecSettings(epochs=cfg.epochs, hidden_size=cfg.hidden_size, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                          max_seq_length=cfg.max_seq_length, batch_size=cfg.batch_size,
                          learning_rate=cfg.learning_rate, eval_step=cfg.eval_step,
                          stopping_step=cfg.stopping_step, show_progress=cfg.show_progress)


def heldout_sasrec(ds: Dataset, cfg: SASRecConfig, out_dir: Path, seed: int = 0):
    """(model, RecBole dataset) of a SASRec that may see everything but held-out users' last items:
    train users' full sequences and valid/test users' items before their last, so it can be judged on
    (or rank candidates for) exactly the item the LLM policies are judged on. Cached by fingerprint."""
    from recmodels.sequential import train_sasrec

    held_out = {u for split in ("valid", "test") for u in ds.splits[split]}
    sequences = {u: (user.items[:-1] if u in held_out else user.items) for u, user in ds.users.items()}
    return train_sasrec({u: s for u, s in sequences.items() if s}, sasrec_settings(cfg), out_dir, seed)


def generate_candidates(ds: Dataset, cfg: SASRecConfig, max_history: int, out_dir: Path, seed: int = 0) -> Candidates:
    """Train/reuse SASRec, then top-M for every user from the history before the list cut."""
    from recmodels.sequential import score_histories, top_m, train_sasrec
    from rlrf.evaluation.metrics import hit_ndcg_at_k, target_ranks

    out_dir.mkdir(parents=True, exist_ok=True)
    model, dataset = train_sasrec(visible_sequences(ds, max_history), sasrec_settings(cfg), out_dir, seed)
    cuts = {uid: history_cut(len(u.items), max_history) for uid, u in ds.users.items()}
    histories = {uid: u.items[: cuts[uid]] for uid, u in ds.users.items()}
    users, scores = score_histories(model, dataset, len(ds.catalog), histories)
    top = top_m(scores, [histories[u] for u in users], max(cfg.top_m, 10))
    items = {u: top[row, : cfg.top_m].tolist() for row, u in enumerate(users)}

    valid_rows = [row for row, u in enumerate(users) if u in set(ds.splits["valid"]) and cuts[u] < len(ds.users[u].items)]
    targets = np.array([ds.users[users[row]].items[cuts[users[row]]] for row in valid_rows])
    hr, ndcg = hit_ndcg_at_k(target_ranks(top[valid_rows, :10], targets), 10)
    return Candidates(items, float(np.mean(hr)) if len(hr) else 0.0, float(np.mean(ndcg)) if len(ndcg) else 0.0)
