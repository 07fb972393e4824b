"""What the rerankers read: the run's lists and knowledge, and the tensors built from them.

`RerankerInputs` gathers, once per process, the dataset, the reranking lists, the sentence encoder,
the item knowledge vectors and the user knowledge texts (`reward.user_knowledge` /
`reward.item_knowledge`: "self" texts or a knowledge file). `training_data` turns them into the
TRAIN tables (several history cuts per user with `reward.train_cuts`) and the VALID tables that
select epochs; `encode_summaries` is how any summary becomes the (vector, present) pair a
+knowledge reranker reads, in training and in scoring alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recmodels.encoder import CachedEncoder
from recmodels.train import ListTensors, item_prior_features, tensorize
from rlrf.core.config import DataConfig, EncoderConfig, RewardConfig, SASRecConfig
from rlrf.core.errors import UserError
from rlrf.core.layout import RunLayout
from rlrf.data import texts as kt
from rlrf.data.dataset import Dataset, load_dataset
from rlrf.data.lists import RerankList, build_lists, load_lists


@dataclass
class RerankerInputs:
    """The run's rerankers' inputs and the sections that shaped them (`seed`: the run's data seed)."""

    data: DataConfig
    reward: RewardConfig
    sasrec: SASRecConfig
    layout: RunLayout
    seed: int
    ds: Dataset
    lists: dict[str, RerankList]
    encoder: CachedEncoder
    item_vecs: np.ndarray | None = None  # [n_items, Dk]
    user_texts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def genre_matrix(self) -> np.ndarray:
        return self.ds.catalog.genre_matrix()

    def split_lists(self, split: str) -> list[RerankList]:
        return [self.lists[u] for u in self.ds.splits[split] if u in self.lists]

    def tensors(self, split: str) -> ListTensors:
        return tensorize(self.split_lists(split), self.data.lists.max_history, self.data.positive_rating)

    def user_knowledge(self, users: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_summaries(self.encoder, [self.user_texts.get(u, "") for u in users])


def encode_summaries(encoder: CachedEncoder, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(user_k [N, Dk], has_k [N]); an empty or blank summary has has_k False (scored as no knowledge)."""
    has = np.array([bool(t and t.strip()) for t in texts])
    vecs = np.zeros((len(texts), encoder.dim), np.float32)
    if has.any():
        vecs[has] = encoder.encode([t for t, h in zip(texts, has) if h])
    return torch.from_numpy(vecs), torch.from_numpy(has)


def run_lists(data: DataConfig, layout: RunLayout, seed: int, ds: Dataset) -> dict[str, RerankList]:
    """`lists.jsonl` when `rlrf data` wrote it, else built here from the `data:` section (same seed)."""
    path = layout.lists
    if path.exists():
        lists = load_lists(path)
        unknown = [u for u in lists if u not in ds.users]
        if unknown:
            raise UserError(f"{path}: {len(unknown)} users not in dataset '{ds.name}' (e.g. {unknown[0]}); "
                            "re-run `rlrf data` for this config")
        return lists
    return build_lists(ds, data.lists, seed=seed, positive_rating=data.positive_rating)


def load_lists_for(cfg, ds: Dataset) -> dict[str, RerankList]:
    """`run_lists` for a whole run config (the recipes' adapter)."""
    return run_lists(cfg.data, RunLayout(cfg.run_dir), cfg.seed, ds)


def item_knowledge_texts(source: str, ds: Dataset, notes: list[str]) -> list[str]:
    """One text per catalogue item: its own text ("self") or the knowledge file's, noted in `notes`."""
    if source == "self":
        return kt.item_self_texts(ds.catalog)
    texts, missing, kf = kt.item_texts_from_file(ds.catalog, Path(source))
    notes.append("item knowledge: " + kf.report())
    if missing:
        notes.append(f"item knowledge: {missing} items without a text in {source} use their own text")
    return texts


def user_knowledge_texts(source: str, ds: Dataset, lists: Mapping[str, RerankList], positive_rating: float,
                         notes: list[str]) -> dict[str, str]:
    """One summary per listed user: the "self" text of the visible history, or the knowledge file's."""
    if source == "self":
        return kt.user_self_texts(ds.catalog, lists, positive_rating)
    kf = kt.load_knowledge_file(Path(source), ds.users.keys(), field_name="user")
    notes.append("user knowledge: " + kf.report())
    first = kf.first()
    absent = [u for u in lists if not first.get(u, "").strip()]
    if absent:
        notes.append(f"user knowledge: {len(absent)} users without a summary in {source} (scored as no knowledge)")
    return {u: first.get(u, "") for u in lists}


def prepare_inputs(data: DataConfig, reward: RewardConfig, encoder: EncoderConfig, sasrec: SASRecConfig,
                   layout: RunLayout, seed: int, *, progress: bool = True, ds: Dataset | None = None,
                   lists: dict[str, RerankList] | None = None, text_encoder: CachedEncoder | None = None,
                   with_knowledge: bool = True) -> RerankerInputs:
    """The inputs of a run's rerankers; `ds`, `lists` and `text_encoder` reuse what a caller holds."""
    ds = ds if ds is not None else load_dataset(data, seed=seed)
    lists = lists if lists is not None else run_lists(data, layout, seed, ds)
    text_encoder = text_encoder if text_encoder is not None else kt.load_encoder(encoder, progress=progress)
    inputs = RerankerInputs(data, reward, sasrec, layout, seed, ds, lists, text_encoder)
    if with_knowledge:
        inputs.item_vecs = text_encoder.encode(item_knowledge_texts(reward.item_knowledge, ds, inputs.notes))
        inputs.user_texts = user_knowledge_texts(reward.user_knowledge, ds, lists, data.positive_rating, inputs.notes)
    return inputs


def prepare(cfg, progress: bool = True, ds=None, lists=None, encoder=None, with_knowledge: bool = True) -> RerankerInputs:
    """`prepare_inputs` for a whole run config, with the run's torch threads (the recipes' adapter)."""
    from rlrf.core.threads import use_threads

    use_threads(cfg)
    return prepare_inputs(cfg.data, cfg.reward, cfg.encoder, cfg.sasrec, RunLayout(cfg.run_dir), cfg.seed,
                          progress=progress, ds=ds, lists=lists, text_encoder=encoder, with_knowledge=with_knowledge)


@dataclass
class TrainingData:
    """What a run's rerankers train on: TRAIN lists (several cuts per user with `reward.train_cuts`),
    VALID lists for model selection, the user knowledge of each, and the optional item prior."""

    lists: list[RerankList]
    train: ListTensors
    valid: ListTensors
    train_k: tuple
    valid_k: tuple
    prior: np.ndarray | None


def training_data(inputs: RerankerInputs, user_texts: Mapping[str, str] | None = None, console=None) -> TrainingData:
    """`user_texts` replaces the run's user knowledge (the rerank experiment's retrain protocol)."""
    texts = inputs.user_texts if user_texts is None else user_texts
    train_t, valid_t = inputs.tensors("train"), inputs.tensors("valid")
    train_k = encode_summaries(inputs.encoder, [texts.get(u, "") for u in train_t.users])
    valid_k = encode_summaries(inputs.encoder, [texts.get(u, "") for u in valid_t.users])
    lists = inputs.split_lists("train")
    if inputs.reward.train_cuts > 1:  # more training lists per TRAIN user (rlrf/reward/train_cuts.py)
        lists, train_t, train_k = _more_cuts(inputs, lists)
        if console is not None:
            console.print(f"training on {len(lists)} lists ({inputs.reward.train_cuts} cuts per train user at most)")
    prior = (item_prior_features(inputs.ds, inputs.ds.splits["train"], inputs.data.positive_rating)
             if inputs.reward.item_prior else None)
    return TrainingData(lists, train_t, valid_t, train_k, valid_k, prior)


def _more_cuts(inputs: RerankerInputs, train_lists: list) -> tuple[list, ListTensors, tuple]:
    """The train lists plus lists at other cuts; "self" texts from each list's own history."""
    from rlrf.reward.train_cuts import extra_sasrec_train_lists, extra_train_lists

    data, reward = inputs.data, inputs.reward
    if reward.user_knowledge != "self":
        raise UserError("reward.train_cuts > 1 needs reward.user_knowledge: self (texts from each cut's own history)")
    users = [lst.user for lst in train_lists]
    if data.lists.source in ("kar", "future"):
        extra = extra_train_lists(inputs.ds, users, data.lists, data.positive_rating, reward.train_cuts, inputs.seed)
    else:
        extra = extra_sasrec_train_lists(inputs.ds, users, data.lists, inputs.sasrec, inputs.layout.sasrec,
                                         inputs.seed, reward.train_cuts)
    lists = train_lists + extra
    texts = [kt.user_self_text(inputs.ds.catalog, lst.history, lst.history_ratings, data.positive_rating)
             for lst in lists]
    tables = tensorize(lists, data.lists.max_history, data.positive_rating)
    return lists, tables, encode_summaries(inputs.encoder, texts)
