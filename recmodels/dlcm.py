"""DLCM (Ai et al., SIGIR 2018): a GRU reads the list, a local ranking head scores each position.

Following the paper, the GRU runs over the candidates in their given order, and the score of
position i is  φ(o_n, o_i) = V · (o_i ⊙ tanh(W o_n + b)),  where o_i is the GRU output at i and o_n
the final state (the list context). Inputs come from `ListFeatures` (id + genre embeddings, the
user's history pooled in, and, with knowledge, the hybrid-expert adapter's output).
"""

from __future__ import annotations

import torch
from torch import nn

from recmodels.experts import ListFeatures


class DLCM(nn.Module):
    name = "dlcm"

    def __init__(self, features: ListFeatures, hidden: int = 64):
        super().__init__()
        self.features = features
        self.gru = nn.GRU(features.out_dim, hidden, batch_first=True)
        self.context = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, items, hist, hist_r, user_k=None, has_k=None) -> torch.Tensor:
        """Logits [B, L] (higher = ranked earlier)."""
        x = self.features(items, hist, hist_r, user_k, has_k)
        o, last = self.gru(x)  # o [B, L, H], last [1, B, H]
        ctx = torch.tanh(self.context(last[-1])).unsqueeze(1)  # [B, 1, H]
        return self.v(o * ctx).squeeze(-1) + self.features.prior_logit(items) + self.features.match_logit(items, user_k, has_k)
