"""The stage calls SPRec steers: generation, SFT and DPO, each behind one function.

Generation takes its sections and explicit values (the adapter, the output layout, n and the
temperature), so nothing is copied to steer it. The training stages (`run_sft`, `run_align`) still
read everything from the whole run config, so one SFT epoch or the adapter DPO starts from is a copy
of it with that field changed; those copies live here and nowhere else in SPRec, so when a training
stage takes its own section and explicit values, its function here is the one place that changes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rlrf.core.layout import RunLayout

_KEEP = ...


def generate_next_items(cfg, *, iteration: int, dataset, users, n: int, temperature: float, run_dir: Path | None = None,
                        adapter=_KEEP, show_progress: bool = True, label: str | None = None) -> None:
    """`n` next-item answers per user at `temperature` (0 = greedy) into `run_dir` (default the
    run's), from the policy with `adapter` (left out: the one cfg.llm names)."""
    from rlrf.core.threads import use_threads
    from rlrf.generation.backends import resolve_backend
    from rlrf.generation.generate import generate_texts, make_prompts, policy_for, sampling_for

    mode, gen = "next_item", cfg.generate
    use_threads(cfg)
    backend = resolve_backend(gen.backend)
    policy = policy_for(cfg.llm, backend, adapter=adapter)
    prompts = make_prompts(gen, dataset, policy.tokenizer, mode, users=users, max_history=cfg.data.lists.max_history)
    generate_texts(gen, prompts, policy, RunLayout(run_dir if run_dir is not None else cfg.run_dir), mode=mode,
                   iteration=iteration, seed=cfg.seed, sampling=replace(sampling_for(gen, mode), temperature=temperature),
                   n=n, backend=backend, show_progress=show_progress, label=label)


def train_sft(cfg, records: list[dict], start_adapter: Path | None, adapter_dir: Path, log_path: Path,
              show_progress: bool = True, trainer_args: dict | None = None) -> dict:
    """SFT on `records` (the alignment stage's `run_sft`), with `trainer_args` in place of
    `sft.trainer_args` when given."""
    from rlrf.alignment.sft import run_sft

    return run_sft(cfg, records, start_adapter, adapter_dir, log_path, show_progress, trainer_args_override=trainer_args)


def train_dpo(cfg, iteration: int, start_adapter: Path, show_progress: bool = True) -> dict:
    """DPO on the iteration's pairs (the alignment stage's `run_align`), starting from and referenced
    to `start_adapter`."""
    from rlrf.alignment.dpo import run_align
    return run_align(cfg, iteration, show_progress=show_progress, adapter=start_adapter)


def seed_config(cfg, run_dir: Path, seed: int):
    """The config one arm (or one seed's comparison folder) runs under: the run's, in `run_dir`, with
    training seed `seed` (the loop and every stage read both from the config)."""
    return cfg.model_copy(update={"run_dir": run_dir, "seed": seed})
