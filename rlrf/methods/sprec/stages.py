"""The generation call SPRec steers: next-item answers from one policy into one place, behind one function.

Generation takes its sections and explicit values (the adapter, the output layout, the seed, n and
the temperature), so nothing is copied to steer it. The training stages are called directly with
their sections (`rlrf.alignment.sft.train_sft`, `rlrf.alignment.dpo.train_dpo`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rlrf.core.layout import RunLayout


def generate_next_items(cfg, *, layout: RunLayout, seed: int, iteration: int, dataset, users, n: int, temperature: float,
                        adapter: Path | None, show_progress: bool = True, label: str | None = None) -> None:
    """`n` next-item answers per user at `temperature` (0 = greedy) into `layout`, from the policy with
    `adapter` (None: the base model), sampled under `seed`; `cfg` gives the sections (generate, llm, data)."""
    from rlrf.core.threads import use_threads
    from rlrf.generation.backends import resolve_backend
    from rlrf.generation.generate import generate_texts, make_prompts, policy_for, sampling_for

    mode, gen = "next_item", cfg.generate
    use_threads(cfg)
    backend = resolve_backend(gen.backend)
    policy = policy_for(cfg.llm, backend, adapter=adapter)
    prompts = make_prompts(gen, dataset, policy.tokenizer, mode, users=users, max_history=cfg.data.lists.max_history)
    generate_texts(gen, prompts, policy, layout, mode=mode, iteration=iteration, seed=seed,
                   sampling=replace(sampling_for(gen, mode), temperature=temperature), n=n, backend=backend,
                   show_progress=show_progress, label=label)
