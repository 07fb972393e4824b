"""KAR's hybrid-expert network (its "adaptor"; not a LoRA adapter): knowledge vectors → compact features for each list position.

Two towers, user knowledge (one summary vector per list) and item knowledge (one vector per item).
Each tower mixes its own specific experts with experts shared by both towers; its gate is a softmax
over (specific + shared) experts computed from its input, so the weights of one input sum to 1. An
expert is a small MLP. The user tower's output is broadcast over the list and joined with the item
tower's output at each position, together with their element-wise product (a cheap user × item
interaction, so "does this item match this summary" is linear in the features).
"""

from __future__ import annotations

import torch
from torch import nn


def _expert(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class HybridExperts(nn.Module):
    """shared + user-specific + item-specific experts; per-tower softmax gates."""

    def __init__(self, d_knowledge: int, d_out: int = 32, hidden: int = 64, n_shared: int = 2,
                 n_specific: int = 2, dropout: float = 0.0):
        super().__init__()
        if n_shared + n_specific < 1:
            raise ValueError("the adapter needs at least one expert per tower")
        self.d_out = d_out
        self.shared = nn.ModuleList(_expert(d_knowledge, hidden, d_out, dropout) for _ in range(n_shared))
        self.user_experts = nn.ModuleList(_expert(d_knowledge, hidden, d_out, dropout) for _ in range(n_specific))
        self.item_experts = nn.ModuleList(_expert(d_knowledge, hidden, d_out, dropout) for _ in range(n_specific))
        self.user_gate = nn.Linear(d_knowledge, n_specific + n_shared)
        self.item_gate = nn.Linear(d_knowledge, n_specific + n_shared)

    @staticmethod
    def _tower(x: torch.Tensor, specific: nn.ModuleList, shared: nn.ModuleList, gate: nn.Linear):
        outs = torch.stack([e(x) for e in (*specific, *shared)], dim=-2)  # [..., E, d_out]
        weights = torch.softmax(gate(x), dim=-1)  # [..., E]
        return (weights.unsqueeze(-1) * outs).sum(-2), weights

    def forward(self, user_k: torch.Tensor, item_k: torch.Tensor, return_gates: bool = False):
        """user_k [B, Dk], item_k [B, L, Dk] → [B, L, 3·d_out]: user part, item part, their product."""
        u, gu = self._tower(user_k, self.user_experts, self.shared, self.user_gate)
        i, gi = self._tower(item_k, self.item_experts, self.shared, self.item_gate)
        u = u.unsqueeze(1).expand(-1, item_k.shape[1], -1)
        out = torch.cat([u, i, u * i], dim=-1)
        return (out, gu, gi) if return_gates else out


class ListFeatures(nn.Module):
    """Per-position input features shared by DLCM and PRM.

    Each item is an id embedding joined with its attribute (genre) embedding (mean over its genres).
    The user's visible history reaches every position twice: as the masked mean of the history item
    embeddings (each with a liked/not-liked/unknown rating embedding added) and as target attention
    (each candidate attends over the history). With knowledge, the hybrid-expert adapter's output
    (user summary tower + item knowledge tower) is appended. A list whose user has no knowledge
    (empty summary) uses a learned "missing" user vector instead, which training also sees through
    knowledge dropout, so "no knowledge" is a state the model knows.

    Batch tensors: items [B, L] and hist [B, H] hold catalog index + 1 (0 = padding); hist_r [B, H]
    holds 0 = padding or no rating, 1 = below the positive threshold, 2 = positive; user_k [B, Dk];
    has_k [B] bool. Optional item statistics (`item_prior`, computed from TRAIN users' ratings only)
    join each position's features.
    """

    def __init__(self, n_items: int, genre_matrix: torch.Tensor, d_embed: int = 32,
                 item_knowledge: torch.Tensor | None = None, adapter_out: int = 32, adapter_hidden: int = 64,
                 n_shared: int = 2, n_specific: int = 2, dropout: float = 0.1, knowledge_dropout: float = 0.1,
                 use_history: bool = True, item_prior: torch.Tensor | None = None,
                 summary_match: bool = False, history_dropout: float = 0.0, match_rank: int = 16,
                 match_scale: float = 1.0):
        super().__init__()
        self.d_embed = d_embed
        self.use_history = use_history  # False (ablation): the user is known only through the summary
        self.item_emb = nn.Embedding(n_items + 1, d_embed, padding_idx=0)
        genres = torch.zeros(n_items + 1, genre_matrix.shape[1])
        genres[1:] = genre_matrix
        self.register_buffer("genres", genres)
        self.genre_emb = nn.Linear(genre_matrix.shape[1], d_embed, bias=False)
        self.rating_emb = nn.Embedding(3, 2 * d_embed)
        d_item = 2 * d_embed
        self.query = nn.Linear(d_item, d_item, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.knowledge = item_knowledge is not None
        self.knowledge_dropout = knowledge_dropout
        self.out_dim = 3 * d_item
        self.prior = item_prior is not None  # [n_items, P] item statistics from train users (e.g. positive share)
        if self.prior:
            table = torch.zeros(n_items + 1, item_prior.shape[1])
            table[1:] = item_prior
            self.register_buffer("item_prior", table)
            self.out_dim += item_prior.shape[1]
            self.prior_weight = nn.Parameter(torch.ones(()))  # wide path: score += w · logit(share)
        if self.knowledge:
            table = torch.zeros(n_items + 1, item_knowledge.shape[1])
            table[1:] = item_knowledge
            self.register_buffer("item_k", table)
            self.d_knowledge = item_knowledge.shape[1]
            self.missing_user = nn.Parameter(torch.zeros(self.d_knowledge))
            # "adapter": the attribute name is part of saved files' state-dict keys (features.adapter.*)
            self.adapter = HybridExperts(self.d_knowledge, adapter_out, adapter_hidden, n_shared, n_specific, dropout)
            self.out_dim += 3 * adapter_out
        self.history_dropout = history_dropout  # train-time: a list's whole history hidden with this probability
        self.summary_match = bool(summary_match) and self.knowledge
        if self.summary_match:  # summary × item-text match, added straight to the score (see match_logit)
            # Started at `match_scale`, not learnt up to it: AdamW moves w by about one learning rate a
            # step, so from 1 it barely leaves 1 in a few hundred steps (1.06 after the quickstart's
            # training), and a cosine spread of ~0.2 times that cannot lift a named item over the prior.
            self.match_weight = nn.Parameter(torch.tensor(float(match_scale)))
            self.match_p = nn.Linear(self.d_knowledge, match_rank, bias=False)
            self.match_q = nn.Linear(self.d_knowledge, match_rank, bias=False)
            nn.init.normal_(self.match_p.weight, std=0.02)
            nn.init.normal_(self.match_q.weight, std=0.02)

    def prior_logit(self, items: torch.Tensor) -> torch.Tensor | float:
        """The wide part of the score [B, L]: w · logit(positive share) of each item; 0 without a prior.

        Starts at the model-free item-prior ranking (w = 1), so the deep part learns a correction to it.
        """
        if not self.prior:
            return 0.0
        share = self.item_prior[items][..., 0].clamp(1e-4, 1 - 1e-4)
        return self.prior_weight * torch.logit(share)

    def match_logit(self, items: torch.Tensor, user_k=None, has_k=None) -> torch.Tensor | float:
        """The summary × item-text part of the score [B, L]: w · cos(summary, item text) + (P s)·(Q t)/√r.

        It joins the final logit directly (no hidden layer can route around it), so a summary that
        describes an item moves that item's score. 0 without `summary_match`, for lists without a
        summary (empty / has_k False), and for padding.
        """
        if not self.summary_match or user_k is None:
            return 0.0
        ik = self.item_k[items]  # [B, L, Dk]
        u = nn.functional.normalize(user_k, dim=-1)
        cos = torch.einsum("bd,bld->bl", u, nn.functional.normalize(ik, dim=-1))
        bil = torch.einsum("br,blr->bl", self.match_p(user_k), self.match_q(ik)) / (self.match_p.out_features ** 0.5)
        has = has_k if has_k is not None else torch.ones(items.shape[0], dtype=torch.bool, device=items.device)
        return (self.match_weight * cos + bil) * has.unsqueeze(-1).float() * (items > 0).float()

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item_emb(idx), self.genre_emb(self.genres[idx])], dim=-1)

    def forward(self, items, hist, hist_r, user_k=None, has_k=None) -> torch.Tensor:
        e = self.embed(items)  # [B, L, 2d]
        if not self.use_history:
            hist, hist_r = torch.zeros_like(hist[:, :1]), torch.zeros_like(hist_r[:, :1])
        elif self.training and self.history_dropout > 0:
            keep = (torch.rand(hist.shape[0], 1, device=hist.device) >= self.history_dropout).long()
            hist, hist_r = hist * keep, hist_r * keep
        h = self.embed(hist) + self.rating_emb(hist_r)  # [B, H, 2d]
        mask = (hist > 0).unsqueeze(-1).float()  # [B, H, 1]
        count = mask.sum(1).clamp_min(1.0)
        h_mean = (h * mask).sum(1) / count  # [B, 2d]
        att = torch.einsum("bld,bhd->blh", self.query(e), h) / (h.shape[-1] ** 0.5)
        att = att.masked_fill(hist.unsqueeze(1) == 0, float("-inf"))
        att = torch.nan_to_num(torch.softmax(att, dim=-1))  # a user with no history attends to nothing
        h_att = torch.einsum("blh,bhd->bld", att, h)
        parts = [e, h_mean.unsqueeze(1).expand_as(e), h_att]
        if self.prior:
            parts.append(self.item_prior[items])
        if self.knowledge:
            if user_k is None:
                user_k = self.missing_user.expand(items.shape[0], -1)
                has_k = torch.zeros(items.shape[0], dtype=torch.bool, device=items.device)
            has_k = has_k if has_k is not None else torch.ones(items.shape[0], dtype=torch.bool, device=items.device)
            if self.training and self.knowledge_dropout > 0:
                has_k = has_k & (torch.rand(has_k.shape, device=has_k.device) >= self.knowledge_dropout)
            user_k = torch.where(has_k.unsqueeze(-1), user_k, self.missing_user.expand_as(user_k))
            parts.append(self.adapter(user_k, self.item_k[items]))
        return self.dropout(torch.cat(parts, dim=-1))
