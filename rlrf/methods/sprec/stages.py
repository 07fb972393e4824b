"""The stage calls SPRec steers: generation, SFT and DPO, each behind one function.

The generation and alignment stages still take the whole run config, so steering one of their
fields (greedy decoding, one SFT epoch, the adapter DPO starts from) means a copy of it with that
field changed. Those copies live here and nowhere else in SPRec: when a stage takes its own config
section and explicit values, the function of that stage is the one place that changes.
"""

from __future__ import annotations

from pathlib import Path

_KEEP = object()


def generate_next_items(cfg, *, iteration: int, dataset, users, n: int, temperature: float, run_dir: Path | None = None,
                        adapter=_KEEP, show_progress: bool = True, label: str | None = None) -> None:
    """`n` next-item answers per user at `temperature` (0 = greedy) into `run_dir` (default the
    run's), from the policy with `adapter` (default the one cfg.llm names)."""
    from rlrf.generation.generate import run_generate

    update: dict = {}
    if run_dir is not None:
        update["run_dir"] = run_dir
    if adapter is not _KEEP:
        update["llm"] = cfg.llm.model_copy(update={"adapter": adapter})
    update["generate"] = cfg.generate.model_copy(update={"n": n, "temperature": temperature})
    run_generate(cfg.model_copy(update=update), iteration=iteration, mode="next_item", dataset=dataset, users=users,
                 show_progress=show_progress, label=label)


def train_sft(cfg, records: list[dict], start_adapter: Path | None, adapter_dir: Path, log_path: Path,
              show_progress: bool = True, trainer_args: dict | None = None) -> dict:
    """SFT on `records` (the alignment stage's `run_sft`), with `trainer_args` in place of
    `sft.trainer_args` when given."""
    from rlrf.alignment.sft import run_sft

    if trainer_args is not None:
        cfg = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"trainer_args": trainer_args})})
    return run_sft(cfg, records, start_adapter, adapter_dir, log_path, show_progress)


def train_dpo(cfg, iteration: int, start_adapter: Path, show_progress: bool = True) -> dict:
    """DPO on the iteration's pairs (the alignment stage's `run_align`), starting from and referenced
    to `start_adapter`."""
    from rlrf.alignment.dpo import run_align
    from rlrf.methods.loop import with_adapter

    return run_align(with_adapter(cfg, start_adapter), iteration, show_progress=show_progress)


def seed_config(cfg, run_dir: Path, seed: int):
    """The config one arm (or one seed's comparison folder) runs under: the run's, in `run_dir`, with
    training seed `seed` (the loop and every stage read both from the config)."""
    return cfg.model_copy(update={"run_dir": run_dir, "seed": seed})
