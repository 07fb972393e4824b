"""The `rlrf` command line: one typer command per pipeline stage.

Commands import their stage lazily so `rlrf --help` stays fast, and every stage error that is the
user's (a bad file, a bad key) ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable

import typer

from rlrf.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config: a path or a bundled name (quickstart).")]
RunDirOption = Annotated[Path | None, typer.Option("--run-dir", help="Override the config's run_dir.")]


@app.callback()
def main() -> None:
    """Align a language model with a recommender's own feedback (RLRF4Rec, SPRec)."""


def user_errors(fn: Callable) -> Callable:
    """Turn UserError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


def load_run_config(config: Path, run_dir: Path | None):
    from rlrf.config import load_config

    overrides = {"run_dir": str(run_dir)} if run_dir else None
    return load_config(config, overrides)


def _setup_threads(cfg) -> None:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)


@app.command()
@user_errors
def data(config: ConfigOption = Path("configs/quickstart.yaml"), run_dir: RunDirOption = None) -> None:
    """Dataset statistics; train SASRec; write candidates and reranking lists into the run directory."""
    from rich.console import Console
    from rich.table import Table

    from rlrf.prepare import prepare_data

    cfg = load_run_config(config, run_dir)
    _setup_threads(cfg)
    summary = prepare_data(cfg).summary
    stats, lists, sasrec = summary["stats"], summary["lists"], summary["sasrec"]
    table = Table(title=f"{summary['dataset']}  ({summary['path']})", show_header=False)
    rows = [
        ("users", stats["users"]),
        ("items", stats["items"]),
        ("interactions", stats["interactions"]),
        ("density", f"{stats['density']:.4f}"),
        ("users filtered (< data.min_interactions)", stats["users_filtered"]),
        ("interactions of filtered users", stats["interactions_filtered"]),
        ("items without .item row (kept as unknown)", stats["items_without_metadata"]),
        ("split train / valid / test", " / ".join(str(stats["split_sizes"][s]) for s in ("train", "valid", "test"))),
        (f"lists ({lists['source']}, length {lists['length']})", lists["count"]),
        ("mean positives per list", f"{lists['mean_positives']:.2f}"),
        ("lists without a positive", lists["without_positive"]),
        ("SASRec valid HR@10", f"{sasrec['valid_hr@10']:.4f}"),
        ("SASRec valid NDCG@10", f"{sasrec['valid_ndcg@10']:.4f}"),
    ]
    if stats["users_kept_by_max_users"] is not None:
        rows.insert(1, ("users kept (data.max_users)", stats["users_kept_by_max_users"]))
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
    print(f"wrote {cfg.run_dir}/lists.jsonl, candidates.jsonl, data.json")


# --- stage commands: each block below is owned by its stage; add new ones as separate blocks ---

# --- reward (issue 3, owned by rlrf/reward.py) ---
reward_app = typer.Typer(no_args_is_help=True, help="The knowledge-augmented DLCM / PRM reward model.")
app.add_typer(reward_app, name="reward")
SeedsOption = Annotated[int | None, typer.Option("--seeds", help="Seeds (cfg.seed, +1, ...); default reward.seeds.")]


@reward_app.command("train")
@user_errors
def reward_train(config: ConfigOption = Path("configs/quickstart.yaml"), run_dir: RunDirOption = None,
                 seeds: SeedsOption = None) -> None:
    """Train base and +knowledge DLCM/PRM on train users, early-stopped on valid users' MAP@5."""
    from rlrf import reward

    cfg = load_run_config(config, run_dir)
    reward.train(cfg, seeds)


@reward_app.command("eval")
@user_errors
def reward_eval(config: ConfigOption = Path("configs/quickstart.yaml"), run_dir: RunDirOption = None,
                seeds: SeedsOption = None) -> None:
    """NDCG@K / MAP@K (K = 1, 3, 5, 7) on test users, base vs +knowledge; writes reward/eval.json."""
    from rlrf import reward

    cfg = load_run_config(config, run_dir)
    reward.evaluate(cfg, seeds)


@reward_app.command("probe")
@user_errors
def reward_probe(config: ConfigOption = Path("configs/quickstart.yaml"), run_dir: RunDirOption = None,
                 seeds: SeedsOption = None,
                 model: Annotated[list[str] | None, typer.Option("--model", help="dlcm | prm (repeatable; default reward.model).")] = None,
                 responses: Annotated[Path | None, typer.Option("--responses", help="A responses.jsonl of real policy summaries.")] = None,
                 out: Annotated[Path | None, typer.Option("--out", help="JSON output (default <run_dir>/reward/probe.json).")] = None) -> None:
    """Does the +knowledge reward read the summary? Positives- vs negatives-summaries on valid+test users."""
    from rlrf.probe import run_probe

    cfg = load_run_config(config, run_dir)
    run_probe(cfg, model, seeds, responses, out)


# --- generate (issue 4, owned by rlrf/generate.py) ---
@app.command()
@user_errors
def generate(
    config: ConfigOption = Path("configs/quickstart.yaml"),
    run_dir: RunDirOption = None,
    iteration: Annotated[int, typer.Option("--iter", help="Iteration folder iter_<t> to write into.")] = 0,
    mode: Annotated[str | None, typer.Option("--mode", help="user_preference | item_knowledge | next_item (default: generate.mode).")] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="Override llm.adapter (a peft LoRA directory).")] = None,
    max_users: Annotated[int | None, typer.Option("--max-users", help="Override generate.max_users.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Override generate.batch_size (rows per batch).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Sample N texts per user (or one per item) from the policy into iter_<t>/responses.jsonl; resumable."""
    from rlrf.generate import run_generate

    cfg = load_run_config(config, run_dir)
    if adapter is not None:
        cfg.llm.adapter = adapter
    if max_users is not None:
        cfg.generate.max_users = max_users
    if batch_size is not None:
        cfg.generate.batch_size = batch_size
    result = run_generate(cfg, iteration=iteration, mode=mode, show_progress=not quiet)
    flags = ", ".join(f"{k} {v}" for k, v in sorted(result.flagged.items())) or "none"
    print(
        f"wrote {result.written} new records to {result.path} ({result.skipped} already there); "
        f"{result.tokens} tokens in {result.seconds:.1f} s = {result.tokens_per_s:.1f} tok/s; flagged: {flags}"
    )


@app.command()
@user_errors
def score(
    config: ConfigOption = Path("configs/quickstart.yaml"),
    run_dir: RunDirOption = None,
    iteration: Annotated[int, typer.Option("--iter", help="Iteration whose responses to score.")] = 0,
) -> None:
    """Score each response with the reward model; write scores.jsonl and best-vs-worst pairs.jsonl."""
    from rlrf.score import run_score

    cfg = load_run_config(config, run_dir)
    _setup_threads(cfg)
    stats = run_score(cfg, iteration)
    print(
        f"iter {iteration}: {stats.pairs} pairs from {stats.users} users "
        f"(skipped: {stats.skipped_tie} tied, {stats.skipped_margin} below score.min_margin, "
        f"{stats.skipped_empty_best} empty best, {stats.skipped_not_train} not in train split)"
    )


@app.command("run")
@user_errors
def run_command(
    config: ConfigOption = Path("configs/quickstart.yaml"),
    run_dir: RunDirOption = None,
    iterations: Annotated[int | None, typer.Option(help="Override loop.iterations.")] = None,
) -> None:
    """RLRF4Rec end to end: data, reward model, then T x (generate -> score -> align), evaluated each time."""
    from rlrf.loop import run_loop
    from rlrf.report import write_report
    from rlrf.rlrf4rec import RLRF4Rec

    cfg = load_run_config(config, run_dir)
    _setup_threads(cfg)
    metrics = run_loop(cfg, RLRF4Rec(), iterations or cfg.loop.iterations)
    print(f"wrote {write_report(cfg.run_dir, metrics)}")


@app.command()
@user_errors
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory with metrics.json.")]) -> None:
    """Write report.md and its plots from a run directory's metrics.json."""
    from rlrf.report import write_report
    from rlrf.runs import read_json

    metrics = read_json(run_dir / "metrics.json")
    if metrics is None:
        raise UserError(f"{run_dir / 'metrics.json'}: not found; run `rlrf run` first")
    print(f"wrote {write_report(run_dir, metrics)}")


# --- align (issue 5, owned by rlrf/align.py) ---
@app.command()
@user_errors
def align(
    config: ConfigOption = Path("configs/quickstart.yaml"),
    run_dir: RunDirOption = None,
    iteration: Annotated[int, typer.Option("--iter", help="Iteration folder iter_<t> with pairs.jsonl.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Preference-align the policy (LoRA) on iter_<t>/pairs.jsonl; writes iter_<t>/adapter and align_log.json."""
    from rlrf.align import run_align

    cfg = load_run_config(config, run_dir)
    _setup_threads(cfg)
    s = run_align(cfg, iteration, show_progress=not quiet)
    if s.get("skipped"):
        print(f"{s.get('adapter')} already complete; skipped")
        return
    print(
        f"wrote {s['adapter']}: loss {s['loss']}, {s['pairs_trained']} pairs x {s['negatives']} negative(s), "
        f"{s['steps']} steps, loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}, "
        f"{s['seconds_per_step']} s/step, {s['seconds']} s in all"
    )


# --- sprec (issue 6, owned by rlrf/sprec.py) ---
@app.command()
@user_errors
def sprec(
    config: ConfigOption = Path("configs/sprec.yaml"),
    run_dir: RunDirOption = None,
    iterations: Annotated[int | None, typer.Option(help="Override loop.iterations.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """SPRec: SFT on next items, then T self-play rounds beside the DPO-random / DPO-popularity baselines."""
    from rlrf.sprec import run_sprec
    from rlrf.sprec_report import write_sprec_report

    cfg = load_run_config(config, run_dir)
    if iterations is not None:
        cfg.loop.iterations = iterations
    _setup_threads(cfg)
    metrics = run_sprec(cfg, show_progress=not quiet)
    print(f"wrote {write_sprec_report(cfg.run_dir, metrics)}")


# --- experiments (issue 7, owned by rlrf/experiment.py and recmodels/context.py) ---
experiment_app = typer.Typer(no_args_is_help=True, help="Offline experiments: does the LLM's knowledge help conventional recommenders?")
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("rerank")
@user_errors
def experiment_rerank(
    config: ConfigOption = Path("configs/quickstart.yaml"),
    run_dir: RunDirOption = None,
    iteration: Annotated[list[int] | None, typer.Option("--iteration", "-i", help="Aligned iterations to compare (default: all).")] = None,
    seeds: SeedsOption = None,
    protocol: Annotated[str | None, typer.Option("--protocol", help="swap (CPU default) | retrain (CUDA default).")] = None,
) -> None:
    """DLCM / PRM on test users: base, +knowledge (self text, no text, base policy, each aligned policy); mean ± sd over seeds."""
    from rlrf.experiment import run_rerank_experiment

    cfg = load_run_config(config, run_dir)
    _setup_threads(cfg)
    run_rerank_experiment(cfg, iteration or None, seeds, protocol=protocol)


@experiment_app.command("recbole")
@user_errors
def experiment_recbole(
    config: ConfigOption = Path("configs/quickstart.yaml"),
    run_dir: RunDirOption = None,
    export: Annotated[Path | None, typer.Option("--export", help="An `rlrf export` folder (default: the last aligned iteration's).")] = None,
    model: Annotated[str, typer.Option("--model", help="A RecBole context-aware model that reads float_seq fields.")] = "DeepFM",
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum epochs (early stopping on validation AUC).")] = 20,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds cfg.seed, +1, ...")] = 1,
    fields: Annotated[str, typer.Option("--fields", help="Knowledge fields: raw | adapter | all.")] = "raw",
    variant: Annotated[list[str] | None, typer.Option("--variant", help="base | knowledge_stock | knowledge (default: all).")] = None,
) -> None:
    """A RecBole context-aware model (DeepFM) on the exported dataset, with and without the knowledge features."""
    from recmodels.context import VARIANTS, markdown_table, run_context_experiment
    from rlrf.export import export_dir
    from rlrf.policy_knowledge import aligned_iterations

    cfg = load_run_config(config, run_dir)
    _setup_threads(cfg)
    if export is None:
        done = aligned_iterations(cfg.run_dir)
        export = export_dir(cfg, done[-1] if done else None)
        if not (export / "meta.json").is_file():
            raise UserError(f"{export}: no export here; run `rlrf export` first or pass --export")
    result = run_context_experiment(cfg, export, model=model, epochs=epochs,
                                    seeds=tuple(cfg.seed + i for i in range(seeds)),
                                    variants=tuple(variant or VARIANTS), knowledge_fields=fields)
    print(markdown_table(result))


# --- export (issue 7, owned by rlrf/export.py) ---
@app.command()
@user_errors
def export(
    config: ConfigOption = Path("configs/quickstart.yaml"),
    run_dir: RunDirOption = None,
    iteration: Annotated[int | None, typer.Option("--iteration", "-i", help="Aligned policy iter_<t> (default: the last one).")] = None,
    base: Annotated[bool, typer.Option("--base", help="The base policy instead of an aligned one.")] = False,
    user_source: Annotated[str, typer.Option("--user-source", help="policy (one greedy summary per user) | self (text from the history).")] = "policy",
    item_source: Annotated[str, typer.Option("--item-source", help="self (the item's own text) | policy (one description per item).")] = "self",
    adapter_outputs: Annotated[bool, typer.Option("--adapter-outputs", help="Also the +knowledge reranker's adapter outputs.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: <run_dir>/export/<policy>).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Knowledge vectors of every user and item: RecBole atomic files (float_seq), .npy + ids, meta.json."""
    from rlrf.export import run_export
    from rlrf.policy_knowledge import aligned_iterations

    cfg = load_run_config(config, run_dir)
    _setup_threads(cfg)
    if base and iteration is not None:
        raise UserError("--base and --iteration name two different policies; give one")
    if not base and iteration is None:
        done = aligned_iterations(cfg.run_dir)
        iteration = done[-1] if done else None
    result = run_export(cfg, iteration, user_source=user_source, item_source=item_source,
                        adapter_outputs=adapter_outputs, out_dir=out, show_progress=not quiet)
    print("\n".join(result.lines()))


if __name__ == "__main__":
    app()
