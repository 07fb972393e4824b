"""What every arm and training seed of `rlrf rank` shares: the dataset, its examples, train-only
popularity and the SASRec oracle (`RankContext`), and where each training seed's runs live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlrf.core.errors import UserError
from rlrf.core.layout import RunLayout
from rlrf.data.dataset import train_popularity
from rlrf.methods.rank_examples import RankExample, TitleKeys, heldout_examples, sample_examples, window_examples


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
            from recmodels.sequential import score_histories

            model, dataset = self._sasrec()
            histories = {ex.key: self._before(ex) for ex in missing}
            users, scores = score_histories(model, dataset, len(self.ds.catalog), histories)
            self._scores.update({u: scores[row] for row, u in enumerate(users)})
        return {ex.key: self._scores[ex.key] for ex in examples}

    def _before(self, ex: RankExample) -> list[int]:
        items = self.ds.users[ex.user].items
        t = int(ex.key.rsplit("@", 1)[1]) if "@" in ex.key else len(items) - 1
        return items[:t]

    def _sasrec(self):
        from rlrf.data.candidates import heldout_sasrec

        if not hasattr(self, "_model"):
            self._model = heldout_sasrec(self.ds, self.sasrec_cfg, self.sasrec_dir, self.seed)
        return self._model


def build_context(cfg, ds=None) -> RankContext:
    """The run's shared context, from its data seed `seed` and the `rank:` section; the SASRec oracle
    trains (once, when first asked) in the run directory."""
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


def training_seeds(cfg) -> list[int]:
    """`rank.seeds`, else the run's one seed."""
    return list(cfg.rank.seeds) if cfg.rank.seeds else [cfg.seed]


def seed_root(cfg, seed: int) -> RunLayout:
    """The folder of one training seed's SFT and arms: the run itself, or ``seed_<s>/`` with `rank.seeds`."""
    root = RunLayout(cfg.run_dir)
    return root if cfg.rank.seeds is None else root.arm(f"seed_{seed}")
