"""The records stages hand each other, one definition each (docs/architecture.md, "Record formats").

Every stage writes JSON objects and another stage reads them back, often a run later: the field
names and their order are the contract. Each record here is a dataclass whose `to_dict()` gives the
JSON object exactly as rlrf writes it (keys in the order below, so files stay byte-identical), and
whose `from_dict()` reads one back. Fields whose JSON key is not a Python name (`ndcg@5`) carry it
in their metadata; optional fields (`optional(...)`) are left out of the object when unset, as the
writers always did, while a field that is merely `None` is written as `null`.

A neutral module: no rlrf import, so every layer (and recmodels/) may use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

def optional(key: str | None = None) -> Any:
    """A field left out of the JSON object when it is None (the writers add it only when it applies);
    `key`: its JSON key when that is not the field's name."""
    return field(default=None, metadata={"optional": True, **({"key": key} if key else {})})


def named(key: str, **kwargs) -> Any:
    """A field whose JSON key is not a Python name (`ndcg@5`)."""
    return field(metadata={"key": key}, **kwargs)


def _key(f) -> str:
    return f.metadata.get("key", f.name)


class Record:
    """The shared behaviour: JSON object out (`to_dict`, `to_json`) and back in (`from_dict`)."""

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            out[_key(f)] = value
        return out

    def to_json(self) -> str:
        """One line of a JSONL file, as `rlrf.core.io` writes it."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, record: dict):
        """The record's fields from a JSON object; a missing optional field reads as its default, and
        a key the record does not define is not read."""
        return cls(**{f.name: record[_key(f)] for f in fields(cls) if _key(f) in record})


# ---------------------------------------------------------------------------------------------
# the data stage


@dataclass
class ListRecord(Record):
    """lists.jsonl: one user's reranking task. Item numbers are catalogue indices (`Catalog.ids[i]`
    is the dataset's own id). `history` is everything a stage may show about the user: the items
    before the list cut, oldest first, with their ratings (null without one); `items` are the
    candidates to rerank and `labels` their relevance (1 = liked / watched after the cut)."""

    user: str
    history: list[int]
    history_ratings: list[float | None]
    items: list[int]
    labels: list[int]

    def to_json(self) -> str:
        """lists.jsonl escapes non-ASCII characters (`\\u00e9`), as it always has."""
        return json.dumps(self.to_dict())


# ---------------------------------------------------------------------------------------------
# the generation stage


@dataclass(kw_only=True)
class ResponseRecord(Record):
    """responses.jsonl (and item_knowledge.jsonl, next_item.jsonl): sample k of one prompt.

    The key is `user` (user_preference, next_item) or `item` (item_knowledge): exactly one is set.
    Sample k of user u in iteration t is seeded by (seed, mode, t, u, k) alone. `finished` is false
    for a text cut at `generate.max_new_tokens`; `target` (next_item: the real next item's id) and
    `flag` ("empty" or "repetitive", kept in the file) appear only when they apply."""

    user: str | None = optional()
    item: str | None = optional()
    iter: int
    k: int
    text: str
    n_tokens: int
    prompt_hash: str
    finished: bool = True  # (a record from before the flag existed reads as finished)
    target: str | None = optional()
    flag: str | None = optional()

    @property
    def key(self) -> str:
        return self.user if self.user is not None else self.item


# ---------------------------------------------------------------------------------------------
# the score stage


@dataclass(kw_only=True)
class ScoreRecord(Record):
    """scores.jsonl: the reward model's metrics of the user's list reranked with response k as the
    user's knowledge. `margin` = mean logit of the list's positives − mean logit of its negatives;
    `empty`: the response was empty (scored as no knowledge); `flag` copies the response's flag."""

    user: str
    iter: int
    k: int
    ndcg_1: float = named("ndcg@1")
    map_1: float = named("map@1")
    ndcg_3: float = named("ndcg@3")
    map_3: float = named("map@3")
    ndcg_5: float = named("ndcg@5")
    map_5: float = named("map@5")
    ndcg_7: float = named("ndcg@7")
    map_7: float = named("map@7")
    margin: float
    empty: bool
    flag: str | None = optional()

    def reward(self, metric: str) -> float:
        """The value `score.metric` names (`ndcg@5`, `map@3`, `margin`, ...)."""
        return self.to_dict()[metric]


@dataclass(kw_only=True)
class PairRecord(Record):
    """pairs.jsonl (RLRF4Rec): one training user's best vs worst response (only training users
    make pairs).

    `prompt` is the exact prompt text of the responses; `margin` the reward of chosen − rejected.
    `*_finished` false marks a text cut at `generate.max_new_tokens`, trained without the EOS trl
    appends; a missing flag (None here) reads true. With `score.negatives` > 1 the k worst
    responses, worst first, come in `rejected_list` with their margins and flags."""

    user: str
    iter: int
    prompt: str
    chosen: str
    rejected: str
    margin: float
    chosen_k: int | None = optional()
    rejected_k: int | None = optional()
    chosen_finished: bool | None = optional()
    rejected_finished: bool | None = optional()
    rejected_list: list[str] | None = optional()
    rejected_finished_list: list[bool] | None = optional()
    rejected_margins: list[float] | None = optional()


@dataclass(kw_only=True)
class SPRecPairRecord(Record):
    """pairs.jsonl (SPRec): the real next item's title as `chosen`, the sampler's negatives as
    `rejected` / `rejected_list` with where each came from (`rejected_sources`: greedy, sampled or
    catalogue), and `margin` = RosePO's oracle (1 − cosine of the two titles)."""

    user: str
    iter: int
    prompt: str
    chosen: str
    rejected: str
    rejected_list: list[str]
    rejected_sources: list[str]
    margin: float


# ---------------------------------------------------------------------------------------------
# the align stage


@dataclass(kw_only=True)
class AlignResult(Record):
    """What `rlrf align` (DPO, `rlrf.alignment.dpo.run_align`) returns, and (without `skipped`)
    align_log.json's "summary". The online trainers (`align.method: grpo | rloo`) log their own.

    A step skipped because its adapter is complete returns the summary it logged then, with
    `skipped` true; every field but `adapter` may then be missing (a log from an older rlrf)."""

    iteration: int | None = None
    loss: str | None = None  # the loss's name (dpo, sdpo, ...)
    beta: float | None = None
    negatives: int | None = None
    pairs: int | None = None  # pairs in pairs.jsonl
    pairs_trained: int | None = None  # pairs that fit `max_length` and were trained on
    steps: int | None = None
    train_loss: float | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    last_reward_accuracy: float | None = None
    last_reward_margin: float | None = None
    seconds_per_step: float | None = None
    reference_seconds: float | None = None  # precomputing the reference log-probs
    start_adapter: str | None = None
    reference: str | None = None
    device: str | None = None
    dtype: str | None = None
    adapter: str
    resumed_from: str | None = None  # the trainer checkpoint a killed step resumed from
    seconds: float | None = None
    skipped: bool | None = optional()


# ---------------------------------------------------------------------------------------------
# the loop: metrics.json (RLRF4Rec)

@dataclass(kw_only=True)
class PerUser(Record):
    """One evaluation's values per test user, in `users` order: the report pairs them with policy_0.

    reward_mean / reward_best: the user's N sampled summaries under the reward model; ndcg_5 / map_5:
    the greedy summary as the user's knowledge; tokens: its length; copied: the share of its word
    5-grams found in its prompt; independent_*: the greedy summary under the independent evaluator;
    ended / repeated: 1 when the greedy summary ends on its own or repeats itself, else 0
    (rlrf/evaluation/text.py)."""

    users: list[str]
    reward_mean: list[float]
    reward_best: list[float]
    ndcg_5: list[float] = named("ndcg@5")
    map_5: list[float] = named("map@5")
    tokens: list[int]
    copied: list[float] | None = optional()
    independent_ndcg_5: list[float] | None = optional("independent_ndcg@5")
    independent_map_5: list[float] | None = optional("independent_map@5")
    ended: list[int] | None = optional()
    repeated: list[int] | None = optional()


@dataclass(kw_only=True)
class Evaluation(Record):
    """metrics.json's `evaluations.policy_<t>`: one policy on the held-out test users. The means are
    over users of the per-user values (`PerUser`); `rewards` holds every sampled summary's reward,
    `empty` / `flagged` count empty scored summaries and flagged responses."""

    users: int
    responses: int
    metric: str  # the reward's name (`score.metric`)
    reward_mean: float
    reward_best: float
    ndcg_5: float = named("ndcg@5")
    map_5: float = named("map@5")
    tokens: float
    copied: float | None = optional()
    independent_ndcg_5: float | None = optional("independent_ndcg@5")
    independent_map_5: float | None = optional("independent_map@5")
    ended: float | None = optional()  # share of greedy summaries that end on their own
    repeated: float | None = optional()  # share of greedy summaries that repeat themselves
    empty: int
    flagged: int
    rewards: list[float]
    per_user: PerUser

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["per_user"] = self.per_user.to_dict()
        return out

    @classmethod
    def from_dict(cls, record: dict) -> "Evaluation":
        return super().from_dict({**record, "per_user": PerUser.from_dict(record["per_user"])})


@dataclass(kw_only=True)
class IterationRecord(Record):
    """metrics.json's `iterations.<t>`: what iteration t trained on and what it wrote. `pairs` is
    the score stage's pair statistics ({"users", "pairs", "skipped_*", ...}), or {"prompts": n}
    for online RL, whose trainer samples and scores itself; `adapter` is null when no pair was
    made (the policy stays as it was)."""

    pairs: dict
    adapter: str | None
    seconds: float | None = optional()

    @property
    def trained_on(self) -> int:
        """Pairs (DPO) or prompts (online RL): 0 means there was nothing to learn."""
        return self.pairs.get("pairs", 0) or self.pairs.get("prompts", 0)


def metrics_record(method: str) -> dict:
    """An empty metrics.json: `{"method", "evaluations": {label: Evaluation}, "iterations": {"<t>":
    IterationRecord}}`, filled as the loop goes (kept as plain JSON so a rerun resumes from it)."""
    return {"method": method, "evaluations": {}, "iterations": {}}

