"""Knowledge texts written by one policy of a run — the base model or an iteration's adapter.

`rlrf export` and `rlrf experiment rerank` both need "the summary policy P writes for user u" (and
"the description P writes for item i"). They share one resumable store per policy, so a summary is
generated once whichever command asks first: ``<run_dir>/knowledge/<tag>/iter_0/responses.jsonl``
(users) and ``.../item_knowledge.jsonl`` (items), with tag ``base`` or ``iter_<t>``. Knowledge is
decoded greedily, one text per user or item: it is a feature, not a sample to be judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rlrf.core.errors import UserError
from rlrf.core.layout import RunLayout, adapter_complete
from rlrf.core.threads import use_threads

if TYPE_CHECKING:
    from rlrf.core.config import GenerateConfig, LLMConfig

USER_SPLITS = ("train", "valid", "test", "all")


def policy_tag(iteration: int | None) -> str:
    """``base`` for the policy before alignment, ``iter_<t>`` for the adapter written by iteration t."""
    return "base" if iteration is None else f"iter_{iteration}"


def policy_adapter(run_dir: Path, iteration: int | None) -> Path | None:
    """The adapter of ``iter_<t>`` (None for the base policy); an error if that iteration has none."""
    if iteration is None:
        return None
    adapter = RunLayout(run_dir).adapter(iteration)
    if not adapter_complete(adapter):
        raise UserError(f"{adapter}: no complete adapter for iteration {iteration} (run `rlrf run` or `rlrf align` first)")
    return adapter


def knowledge_layout(run_dir: Path, iteration: int | None) -> RunLayout:
    return RunLayout(run_dir).knowledge(policy_tag(iteration))


def user_knowledge(gen: GenerateConfig, llm: LLMConfig, ds, run_dir: Path, iteration: int | None,
                   users: Sequence[str], *, max_history: int, seed: int, policy=None,
                   show_progress: bool = True) -> Path:
    """One greedy preference summary per user of `users`, by the policy of `iteration` (None: the
    base; `policy` when already loaded), from the history the reranker sees (the run's lists, else
    the KAR cut at `max_history`); `gen` and `llm` are the `generate:` and `llm:` sections.
    Resumable. Returns the responses-style JSONL path (``reward.user_knowledge`` reads it)."""
    from rlrf.generation.generate import generate_texts, make_prompts, policy_for, sampling_for, visible_histories

    mode = "user_preference"
    adapter = policy_adapter(run_dir, iteration)
    store = knowledge_layout(run_dir, iteration)
    policy = policy if policy is not None else policy_for(llm, gen.backend, adapter=adapter)
    histories = visible_histories(ds, RunLayout(run_dir).lists, max_history)
    prompts = make_prompts(gen, ds, policy.tokenizer, mode, users=users, max_history=max_history, histories=histories)
    generate_texts(gen, prompts, policy, store, mode=mode, iteration=0, seed=seed, n=1,
                   sampling=replace(sampling_for(gen, mode), temperature=0.0), show_progress=show_progress)
    return store.responses(0, mode)


def item_knowledge(gen: GenerateConfig, llm: LLMConfig, ds, run_dir: Path, iteration: int | None,
                   max_items: int | None = None, *, seed: int, policy=None, show_progress: bool = True) -> Path:
    """One greedy description per catalogue item (the `max_items` most popular, or all) by the
    policy of `iteration`; resumable. Returns the JSONL path (``reward.item_knowledge`` reads it)."""
    from rlrf.generation.generate import generate_texts, make_prompts, policy_for, sampling_for

    mode = "item_knowledge"
    adapter = policy_adapter(run_dir, iteration)
    store = knowledge_layout(run_dir, iteration)
    policy = policy if policy is not None else policy_for(llm, gen.backend, adapter=adapter)
    prompts = make_prompts(gen, ds, policy.tokenizer, mode, max_items=max_items)
    generate_texts(gen, prompts, policy, store, mode=mode, iteration=0, seed=seed, n=1,
                   sampling=replace(sampling_for(gen, mode), temperature=0.0), show_progress=show_progress)
    return store.responses(0, mode)


# the same two behind a whole RunConfig (rlrf export, rlrf experiment rerank)


def generate_user_knowledge(cfg, iteration: int | None, users: str = "all", *, dataset=None, policy=None,
                            show_progress: bool = True) -> Path:
    """`user_knowledge` for the users of split `users` ("all" or a split name), with the run's
    threads, dataset and sections."""
    from rlrf.data.dataset import load_dataset
    from rlrf.generation.generate import select_users

    if users not in USER_SPLITS:
        raise UserError(f"users: unknown split '{users}' ({', '.join(USER_SPLITS)})")
    run_dir = Path(cfg.run_dir)
    policy_adapter(run_dir, iteration)  # no complete adapter: an error before any loading
    use_threads(cfg)
    ds = dataset if dataset is not None else load_dataset(cfg.data, seed=cfg.seed)
    return user_knowledge(cfg.generate, cfg.llm, ds, run_dir, iteration, select_users(ds, users),
                          max_history=cfg.data.lists.max_history, seed=cfg.seed, policy=policy,
                          show_progress=show_progress)


def generate_item_knowledge(cfg, iteration: int | None, max_items: int | None = None, *, dataset=None, policy=None,
                            show_progress: bool = True) -> Path:
    """`item_knowledge` with the run's threads, dataset and sections."""
    from rlrf.data.dataset import load_dataset

    run_dir = Path(cfg.run_dir)
    policy_adapter(run_dir, iteration)  # no complete adapter: an error before any loading
    use_threads(cfg)
    ds = dataset if dataset is not None else load_dataset(cfg.data, seed=cfg.seed)
    return item_knowledge(cfg.generate, cfg.llm, ds, run_dir, iteration, max_items, seed=cfg.seed, policy=policy,
                          show_progress=show_progress)
