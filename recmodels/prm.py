"""PRM (Pei et al., RecSys 2019): position encoding + multi-head self-attention over the list + MLP.

Input features come from `ListFeatures`; as in PRM, a personalised part joins each item (here the
user's pooled history, and with knowledge the adapter's user and item vectors) before a learned
position embedding is added and a stack of Transformer encoder layers models the list.
"""

from __future__ import annotations

import torch
from torch import nn

from recmodels.experts import ListFeatures


class PRM(nn.Module):
    name = "prm"

    def __init__(self, features: ListFeatures, list_length: int, d_model: int = 64, n_heads: int = 2,
                 n_layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.features = features
        self.inp = nn.Linear(features.out_dim, d_model)
        self.position = nn.Embedding(list_length, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=2 * d_model, dropout=dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 1))

    def forward(self, items, hist, hist_r, user_k=None, has_k=None) -> torch.Tensor:
        """Logits [B, L] (higher = ranked earlier)."""
        x = self.inp(self.features(items, hist, hist_r, user_k, has_k))
        pos = torch.arange(items.shape[1], device=items.device).clamp_max(self.position.num_embeddings - 1)
        return self.head(self.encoder(x + self.position(pos))).squeeze(-1) + self.features.prior_logit(items) + self.features.match_logit(items, user_k, has_k)
