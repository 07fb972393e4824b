"""Knowledge texts written by one policy of a run — the base model or an iteration's adapter.

`rlrf export` and `rlrf experiment rerank` both need "the summary policy P writes for user u" (and
"the description P writes for item i"). They share one resumable store per policy, so a summary is
generated once whichever command asks first: ``<run_dir>/knowledge/<tag>/iter_0/responses.jsonl``
(users) and ``.../item_knowledge.jsonl`` (items), with tag ``base`` or ``iter_<t>``. Knowledge is
decoded greedily, one text per user or item: it is a feature, not a sample to be judged.
"""

from __future__ import annotations

from pathlib import Path

from rlrf.core.errors import UserError
from rlrf.core.layout import RunLayout, adapter_complete

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


def _knowledge_config(cfg, iteration: int | None, **generate):
    run_dir = Path(cfg.run_dir)
    return cfg.model_copy(update={
        "run_dir": knowledge_layout(run_dir, iteration).root,
        "llm": cfg.llm.model_copy(update={"adapter": policy_adapter(run_dir, iteration)}),
        "generate": cfg.generate.model_copy(update={"n": 1, "temperature": 0.0, **generate}),
    })


def generate_user_knowledge(cfg, iteration: int | None, users: str = "all", *, dataset=None, policy=None,
                            show_progress: bool = True) -> Path:
    """One greedy preference summary per user of `users` (a split or "all"), from the history the
    reranker sees; resumable. Returns the responses-style JSONL path (``reward.user_knowledge`` reads it)."""
    from rlrf.generation.generate import run_generate

    if users not in USER_SPLITS:
        raise UserError(f"users: unknown split '{users}' ({', '.join(USER_SPLITS)})")
    kcfg = _knowledge_config(cfg, iteration, users=users, max_users=None, mode="user_preference")
    run_generate(kcfg, iteration=0, mode="user_preference", policy=policy, dataset=dataset,
                 show_progress=show_progress, lists_dir=Path(cfg.run_dir))
    return RunLayout(kcfg.run_dir).responses(0, "user_preference")


def generate_item_knowledge(cfg, iteration: int | None, max_items: int | None = None, *, dataset=None, policy=None,
                            show_progress: bool = True) -> Path:
    """One greedy description per catalogue item (the `max_items` most popular, or all); resumable.
    Returns the JSONL path (``reward.item_knowledge`` reads it)."""
    from rlrf.generation.generate import run_generate

    kcfg = _knowledge_config(cfg, iteration, max_items=max_items, item_temperature=0.0, mode="item_knowledge")
    run_generate(kcfg, iteration=0, mode="item_knowledge", policy=policy, dataset=dataset,
                 show_progress=show_progress, lists_dir=Path(cfg.run_dir))
    return RunLayout(kcfg.run_dir).responses(0, "item_knowledge")
