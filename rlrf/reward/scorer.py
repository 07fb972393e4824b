"""The scoring API of the next stages: a (user, summary) pair's reward from a trained reranker.

`RewardScorer.score(users, texts)` scores each pair as NDCG@K / MAP@K of the user's list reranked
with that summary as the user knowledge, batched over pairs (one forward pass per batch, embeddings
from the on-disk cache), plus the logit margin, a reward that moves even when the ranking does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from recmodels.encoder import CachedEncoder
from recmodels.train import load_reranker, tensorize
from rlrf.core.config import DataConfig, EncoderConfig, RewardConfig
from rlrf.core.errors import UserError
from rlrf.core.layout import RunLayout
from rlrf.data.dataset import Dataset, load_dataset
from rlrf.data.texts import load_encoder
from rlrf.evaluation.metrics import map_at_k, ndcg_at_k
from rlrf.reward.inputs import encode_summaries, run_lists
from rlrf.reward.training import KS, model_name


class RewardScorer:
    """Score (user, summary) pairs with a trained reranker: NDCG@K / MAP@K of the user's list.

    All lists of the run are tensorized once; a batch of pairs gathers its lists by row index, runs
    one forward pass with the summaries' embeddings as user knowledge, and computes the metrics with
    the vectorised `rlrf.evaluation.metrics` functions. An empty summary is scored as no knowledge (the model's
    learned "missing" user vector) and flagged `empty`.
    """

    def __init__(self, model, lists: Mapping, encoder: CachedEncoder, max_history: int = 30,
                 positive_rating: float = 4.0, ks: Sequence[int] = KS):
        self.model = model.eval()
        self.encoder = encoder
        self.ks = tuple(ks)
        records = list(lists.values())
        self.data = tensorize(records, max_history, positive_rating)
        self.row = {u: i for i, u in enumerate(self.data.users)}
        self.knowledge = bool(model.features.knowledge)

    @classmethod
    def from_run(cls, cfg, ds=None, lists=None, encoder=None, kind: str | None = None,
                 knowledge: bool | None = None, progress: bool = True, seed: int | None = None) -> "RewardScorer":
        """`for_run` for a whole run config (the recipes' adapter)."""
        return cls.for_run(cfg.data, cfg.reward, cfg.encoder, RunLayout(cfg.run_dir), cfg.seed, ds=ds, lists=lists,
                           text_encoder=encoder, kind=kind, knowledge=knowledge, progress=progress, model_seed=seed)

    @classmethod
    def for_run(cls, data: DataConfig, reward: RewardConfig, encoder: EncoderConfig, layout: RunLayout, seed: int, *,
                ds: Dataset | None = None, lists=None, text_encoder: CachedEncoder | None = None,
                kind: str | None = None, knowledge: bool | None = None, progress: bool = True,
                model_seed: int | None = None) -> "RewardScorer":
        """The run's reward model (`reward.model`, `reward.knowledge`) over the run's lists; `model_seed`
        loads that seed's model instead of the run's own (`model.pt`)."""
        ds = ds if ds is not None else load_dataset(data, seed=seed)
        lists = lists if lists is not None else run_lists(data, layout, seed, ds)
        text_encoder = text_encoder if text_encoder is not None else load_encoder(encoder, progress=progress)
        kind = kind or reward.model
        knowledge = reward.knowledge if knowledge is None else knowledge
        file = layout.reward_model_file(model_name(kind, knowledge), model_seed)
        model, _ = load_reranker(file.parent, ds.name, text_encoder.key, len(ds.catalog), ds.catalog.genre_matrix(),
                                 name=file.name)
        return cls(model, lists, text_encoder, data.lists.max_history, data.positive_rating)

    def rows(self, users: Sequence[str]) -> torch.Tensor:
        missing = [u for u in users if u not in self.row]
        if missing:
            raise UserError(f"{len(missing)} users have no reranking list (e.g. '{missing[0]}')")
        return torch.tensor([self.row[u] for u in users], dtype=torch.long)

    @torch.no_grad()
    def score_vectors(self, users: Sequence[str], user_k: torch.Tensor | None, has_k: torch.Tensor | None,
                      batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Encoding excluded: pairs given as summary embeddings [P, Dk] (+ has_k [P]). Arrays [P]."""
        rows = self.rows(users)
        out: dict[str, list] = {f"{m}@{k}": [] for k in self.ks for m in ("ndcg", "map")}
        out["margin"] = []
        for start in range(0, len(rows), batch_size):
            r = rows[start: start + batch_size]
            uk = hk = None
            if self.knowledge and user_k is not None:
                uk, hk = user_k[start: start + batch_size], has_k[start: start + batch_size] if has_k is not None else None
            scores = self._logits(r, uk, hk)
            labels = self.data.labels[r]
            for k in self.ks:
                out[f"ndcg@{k}"].append(ndcg_at_k(scores, labels, k))
                out[f"map@{k}"].append(map_at_k(scores, labels, k))
            out["margin"].append(logit_margin(scores, labels).numpy())
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}

    def _logits(self, rows: torch.Tensor, user_k, has_k) -> torch.Tensor:
        return self.model(self.data.items[rows], self.data.hist[rows], self.data.hist_r[rows], user_k, has_k)

    @torch.no_grad()
    def item_logits(self, users: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """Each pair's per-item logits [P, L]: for diagnostics that look below the list metrics
        (which items a summary moves)."""
        user_k, has_k = encode_summaries(self.encoder, texts) if self.knowledge else (None, None)
        return self._logits(self.rows(users), user_k, has_k)

    def score(self, users: Sequence[str], texts: Sequence[str], batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Pairs (users[i], texts[i]) → {"ndcg@K": [P], "map@K": [P], "margin": [P], "empty": [P] bool}."""
        if len(users) != len(texts):
            raise ValueError(f"{len(users)} users but {len(texts)} texts")
        user_k, has_k = encode_summaries(self.encoder, texts) if self.knowledge else (None, None)
        result = self.score_vectors(users, user_k, has_k, batch_size)
        result["empty"] = np.array([not (t and t.strip()) for t in texts])
        return result


def logit_margin(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per list: mean logit of its positive items − mean logit of its negatives (0 if it lacks either).

    A continuous reward: it moves with the summary even when the ranking (and so NDCG/MAP) does not.
    """
    pos = labels > 0
    n_pos, n_neg = pos.sum(-1), (~pos).sum(-1)
    mean_pos = (scores * pos).sum(-1) / n_pos.clamp_min(1)
    mean_neg = (scores * ~pos).sum(-1) / n_neg.clamp_min(1)
    return torch.where((n_pos > 0) & (n_neg > 0), mean_pos - mean_neg, torch.zeros_like(mean_pos))


def score_summaries(scorer: RewardScorer, summaries: Mapping[str, Sequence[str]],
                    batch_size: int = 4096) -> dict[str, list[dict]]:
    """{user: [summary, ...]} → {user: [{"ndcg@K": .., "map@K": .., "margin": .., "empty": bool}, ...]} in input order."""
    users = [u for u, texts in summaries.items() for _ in texts]
    texts = [t for ts in summaries.values() for t in ts]
    scored = scorer.score(users, texts, batch_size)
    out: dict[str, list[dict]] = {u: [] for u in summaries}
    for i, u in enumerate(users):
        out[u].append({k: (bool(v[i]) if k == "empty" else float(v[i])) for k, v in scored.items()})
    return out
