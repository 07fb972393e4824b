"""The `rlrf` command line: one typer command per pipeline stage.

Every command reads `-c CONFIG` (a path or a bundled name) and takes dotted `key=value` overrides
after it, typed and checked by the same schema as the YAML (`rlrf run -c quickstart
align.beta=0.2`). Commands import their stage lazily so `rlrf --help` stays fast, and
every error that is the user's (a bad file, key or value) ends as one line on stderr and exit 2.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import sys
from pathlib import Path
from typing import Annotated, Callable

import typer

from rlrf.core.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])

ConfigOption = Annotated[str | None, typer.Option(
    "--config", "-c", help="YAML config: a path or a bundled name (`rlrf config list`). Default: <run-dir>/config.yaml.")]
RunDirOption = Annotated[Path | None, typer.Option("--run-dir", help="The run directory (overrides the config's run_dir).")]
Overrides = Annotated[list[str] | None, typer.Argument(
    metavar="[KEY=VALUE]...", help="Config overrides with dotted keys, e.g. align.beta=0.2 loop.iterations=3.",
    show_default=False)]
IterationOption = Annotated[int, typer.Option("--iteration", "-i", help="The loop iteration (folder iter_<t>).")]
QuietOption = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
SeedsOption = Annotated[int | None, typer.Option("--seeds", help="Seeds cfg.seed, cfg.seed + 1, ... (default: reward.seeds).")]


class Mode(str, enum.Enum):
    user_preference = "user_preference"
    item_knowledge = "item_knowledge"
    next_item = "next_item"


class Protocol(str, enum.Enum):
    swap = "swap"
    retrain = "retrain"


class PreferenceMethod(str, enum.Enum):
    """`rlrf experiment methods`' methods (rlrf.experiments.methods.ARMS)."""

    dpo = "dpo"
    sdpo = "sdpo"
    dmpo = "dmpo"
    rosepo = "rosepo"
    grpo = "grpo"
    rloo = "rloo"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"rlrf {version('rlrf')}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print rlrf's version and exit.")] = False,
         verbose: Annotated[bool, typer.Option("--verbose", help="Show the libraries' warnings and progress bars.")] = False) -> None:
    """Align a language model with a recommender's own feedback (RLRF4Rec, SPRec)."""
    if not verbose:
        quiet_libraries()


def quiet_libraries() -> None:
    """transformers, trl, datasets and RecBole print deprecation notices and their own bars on every
    step; rlrf's progress lines say what is happening, so theirs are kept for --verbose."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # plain tqdm bars too (transformers' GGUF conversion); read at tqdm's import
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*torch.cuda.amp.*")


# paths the OS refused to write or create: the user's to fix (permissions, a file where a folder
# should be, a full disk), so one line naming the path instead of a library's traceback
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR,
                errno.ENOSPC, errno.EDQUOT}
_command_scope: contextlib.ExitStack | None = None  # what a command holds until it returns (the writer lock)


def user_errors(fn: Callable) -> Callable:
    """Turn the user's errors into one line on stderr and exit code 2 (no traceback): UserError,
    a path the OS refuses; Ctrl-C is one line and exit 130. Whatever the command holds (the run
    directory's writer lock) is released on the way out."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _command_scope
        with contextlib.ExitStack() as scope:
            _command_scope = scope
            try:
                return fn(*args, **kwargs)
            except UserError as err:
                print(f"error: {err}", file=sys.stderr)
                raise typer.Exit(2) from None
            except OSError as err:
                if err.errno not in _PATH_ERRNOS or err.filename is None:
                    raise
                paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
                print(f"error: cannot write {paths}: {err.strerror}", file=sys.stderr)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                print("interrupted: rerun the same command to continue where it stopped", file=sys.stderr)
                raise typer.Exit(130) from None
            finally:
                _command_scope = None

    return wrapper


def checked_iteration(iteration: int | None) -> int | None:
    """Iterations count from 0 (typer's own range check would print a usage panel, not one line)."""
    if iteration is not None and iteration < 0:
        raise UserError(f"--iteration {iteration}: iterations count from 0")
    return iteration


def parse_overrides(items: list[str] | None) -> dict:
    """`key=value` words into {dotted key: value}; values are read as YAML scalars or lists, numbers as
    numbers (`1e-4` too, which PyYAML alone leaves a string)."""
    import yaml

    from rlrf.core.config import read_yaml

    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"override '{item}': expected KEY=VALUE with a dotted key (e.g. loop.iterations=3)")
        try:
            out[key] = read_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key] = raw
    return out


def load_run_config(config: str | None, run_dir: Path | None, overrides: list[str] | None = None):
    """The config named by -c (or the run directory's own config.yaml), with the overrides applied."""
    return _load(config, run_dir, parse_overrides(overrides))


def _load(config: str | None, run_dir: Path | None, values: dict):
    from rlrf.core.config import load_config
    from rlrf.core.layout import RunLayout

    values = dict(values)
    if run_dir is not None:
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--run-dir {run_dir}: not a directory")
        values["run_dir"] = str(run_dir)
    if config is None:
        saved = RunLayout(run_dir).config if run_dir is not None else None
        if saved is None or not saved.is_file():
            raise UserError("-c/--config is required (a path or a bundled name; `rlrf config list` shows them)")
        config = str(saved)
    return load_config(config, values)


def _prepared(config: str | None, run_dir: Path | None, overrides: list[str] | None, iteration: int | None = None):
    """The config of a command that writes into the run directory, once the directory is its own:
    the config agrees with the run's saved one (rlrf/core/rundir.py), and this process holds the
    directory's writer lock until the command returns, its console lines going to run.log too. With `iteration`, `llm.adapter` is the
    policy that iteration starts from, as `rlrf run` threads it, unless an override names one."""
    from rlrf.core.distributed import is_main
    from rlrf.core.layout import RunLayout
    from rlrf.core.progress import run_log
    from rlrf.core.rundir import check_same_run, writer_lock
    from rlrf.core.threads import use_threads

    values = parse_overrides(overrides)
    cfg = _load(config, run_dir, values)
    use_threads(cfg)
    if cfg.run_dir.exists() and not cfg.run_dir.is_dir():
        raise UserError(f"run_dir {cfg.run_dir}: not a directory")
    check_same_run(cfg)
    if is_main() and _command_scope is not None:  # under torchrun the ranks of one command share the lock
        command = " ".join(["rlrf", *sys.argv[1:]])
        _command_scope.enter_context(writer_lock(cfg.run_dir, command))
        layout = RunLayout(cfg.run_dir)
        _command_scope.enter_context(run_log(layout.run_log, command, companions=(layout.writer_lock.name,)))
    if iteration is not None and "llm.adapter" not in values:
        cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"adapter": _policy_adapter(cfg, iteration)})})
    return cfg


def _policy_adapter(cfg, iteration: int) -> Path | None:
    """The adapter iteration t starts from: the newest earlier iteration's, else the config's
    `llm.adapter` (what the loop in rlrf/methods/loop.py does). An iteration whose pairs were never
    aligned is an error, not a silent fall back to an older policy."""
    from rlrf.core.layout import RunLayout, adapter_complete

    layout = RunLayout(cfg.run_dir)
    before = iteration - 1
    if before >= 0 and not adapter_complete(layout.adapter(before)) and layout.pairs(before).is_file() \
            and layout.pairs(before).stat().st_size > 0:
        raise UserError(f"iteration {before} has pairs but no adapter: run `rlrf align -i {before}` first "
                        f"(or name the policy with llm.adapter=...)")
    return layout.policy_adapter(iteration) or cfg.llm.adapter


# --- config -------------------------------------------------------------------------------------
config_app = typer.Typer(no_args_is_help=True, help="Bundled configs and the resolved config of a command.")
app.add_typer(config_app, name="config")


@config_app.command("list")
@user_errors
def config_list() -> None:
    """The bundled configs, each with its first comment line."""
    from rlrf.core.resources import bundled_configs

    for path in bundled_configs():
        first = path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
        print(f"{path.stem:<14} {first.lstrip('# ').strip()}")


@config_app.command("show")
@user_errors
def config_show(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None,
                explain: Annotated[bool, typer.Option("--explain", help="Each key with its value and what it means.")] = False) -> None:
    """Print the resolved config (YAML) a command given the same -c and overrides would run with."""
    import yaml

    cfg = load_run_config(config, run_dir, overrides)
    from rlrf.core.config import explain as explained, write_yaml

    if not explain:
        print(write_yaml(cfg.model_dump(mode="json")), end="")
        return

    for key, value, meaning in explained(cfg):
        print(f"{key}: {yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix(chr(10) + '...')}")
        if meaning:
            print(f"    {meaning}")


# --- data ---------------------------------------------------------------------------------------
@app.command()
@user_errors
def data(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None) -> None:
    """Dataset statistics; train SASRec (unless sasrec.enabled is false); write candidates and reranking lists into the run directory."""
    from rich.console import Console
    from rich.table import Table

    from rlrf.data.prepare import prepare_data

    cfg = _prepared(config, run_dir, overrides)
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
        ("repeated (user, item) rows dropped (latest kept)", stats.get("duplicate_interactions", 0)),
        ("rows with a blank id skipped", stats.get("blank_id_rows", 0)),
        ("repeated .item rows dropped (first kept)", stats.get("duplicate_item_rows", 0)),
        ("split train / valid / test", " / ".join(str(stats["split_sizes"][s]) for s in ("train", "valid", "test"))),
        (f"lists ({lists['source']}, length {lists['length']})", lists["count"]),
        ("mean positives per list", f"{lists['mean_positives']:.2f}"),
        ("lists without a positive", lists["without_positive"]),
    ]
    if sasrec is not None:
        rows += [("SASRec valid HR@10", f"{sasrec['valid_hr@10']:.4f}"), ("SASRec valid NDCG@10", f"{sasrec['valid_ndcg@10']:.4f}")]
    else:
        rows.append(("SASRec", "not trained (sasrec.enabled: false)"))
    if stats["users_kept_by_max_users"] is not None:
        rows.insert(1, ("users kept (data.max_users)", stats["users_kept_by_max_users"]))
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
    print(f"wrote {cfg.run_dir}/lists.jsonl, {'candidates.jsonl, ' if sasrec is not None else ''}data.json")


# --- reward model -------------------------------------------------------------------------------
reward_app = typer.Typer(no_args_is_help=True, help="The knowledge-augmented DLCM / PRM reward model.")
app.add_typer(reward_app, name="reward")


@reward_app.command("train")
@user_errors
def reward_train(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None,
                 seeds: SeedsOption = None) -> None:
    """Train base and +knowledge DLCM/PRM on train users, early-stopped on valid users' MAP@5."""
    from rlrf.reward import training as reward

    reward.train(_prepared(config, run_dir, overrides), seeds)


@reward_app.command("eval")
@user_errors
def reward_eval(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None,
                seeds: SeedsOption = None) -> None:
    """NDCG@K / MAP@K (K = 1, 3, 5, 7) on test users, base vs +knowledge; writes reward/eval.json."""
    from rlrf.reward import training as reward

    reward.evaluate(_prepared(config, run_dir, overrides), seeds)


@reward_app.command("probe")
@user_errors
def reward_probe(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None,
                 seeds: SeedsOption = None,
                 model: Annotated[list[str] | None, typer.Option("--model", help="dlcm | prm (repeatable; default reward.model).")] = None,
                 responses: Annotated[Path | None, typer.Option("--responses", help="A responses.jsonl of real policy summaries.")] = None,
                 out: Annotated[Path | None, typer.Option("--out", help="JSON output (default <run_dir>/reward/probe.json).")] = None) -> None:
    """Does the +knowledge reward read the summary? Positives- vs negatives-summaries on valid+test users."""
    from rlrf.reward.probe import run_probe

    run_probe(_prepared(config, run_dir, overrides), model, seeds, responses, out)


# --- the loop's stages --------------------------------------------------------------------------
@app.command()
@user_errors
def generate(
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
    overrides: Overrides = None,
    iteration: IterationOption = 0,
    mode: Annotated[Mode | None, typer.Option("--mode", help="What to write (default: generate.mode).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Sample N texts per user (or one per item) from the policy into iter_<t>/responses.jsonl; resumable."""
    from rlrf.generation.generate import run_generate

    cfg = _prepared(config, run_dir, overrides, checked_iteration(iteration))
    result = run_generate(cfg, iteration=iteration, mode=mode.value if mode else None, show_progress=not quiet)
    flags = ", ".join(f"{k} {v}" for k, v in sorted(result.flagged.items())) or "none"
    print(
        f"wrote {result.written} new records to {result.path} ({result.skipped} already there); "
        f"{result.tokens} tokens in {result.seconds:.1f} s = {result.tokens_per_s:.1f} tok/s; flagged: {flags}"
    )


@app.command()
@user_errors
def score(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None,
          iteration: IterationOption = 0) -> None:
    """Score each response with the reward model; write scores.jsonl and best-vs-worst pairs.jsonl."""
    from rlrf.reward.score import run_score

    stats = run_score(_prepared(config, run_dir, overrides, checked_iteration(iteration)), iteration)
    print(
        f"iter {iteration}: {stats.pairs} pairs from {stats.users} users "
        f"(skipped: {stats.skipped_tie} tied, {stats.skipped_margin} below score.min_margin, "
        f"{stats.skipped_empty_best} empty best, {stats.skipped_not_train} not in train split)"
    )


@app.command()
@user_errors
def align(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None,
          iteration: IterationOption = 0, quiet: QuietOption = False) -> None:
    """Preference-align the policy (LoRA) on iter_<t>/pairs.jsonl; writes iter_<t>/adapter and align_log.json."""
    from rlrf.alignment.dpo import run_align

    from rlrf.core.distributed import is_main

    s = run_align(_prepared(config, run_dir, overrides, checked_iteration(iteration)), iteration, show_progress=not quiet)
    if not is_main():
        return
    if s.get("skipped"):
        print(f"{s.get('adapter')} already complete; skipped")
        return
    print(
        f"wrote {s['adapter']}: loss {s['loss']}, {s['pairs_trained']} pairs x {s['negatives']} negative(s), "
        f"{s['steps']} steps, loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}, "
        f"{s['seconds_per_step']} s/step, {s['seconds']} s in all"
    )


# --- methods ------------------------------------------------------------------------------------
@app.command("run")
@user_errors
def run_command(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None,
                quiet: QuietOption = False) -> None:
    """RLRF4Rec end to end: data, reward model, then loop.iterations x (generate -> score -> align), evaluated each time."""
    from rlrf.core.layout import RunLayout
    from rlrf.core.progress import stage
    from rlrf.methods.loop import run_loop
    from rlrf.methods.rlrf4rec import RLRF4Rec
    from rlrf.report import write_report
    from rlrf.report.rlrf4rec import headline

    cfg = _prepared(config, run_dir, overrides)
    metrics = run_loop(cfg, RLRF4Rec(show_progress=not quiet), cfg.loop.iterations, layout=RunLayout(cfg.run_dir),
                       seed=cfg.seed, log=stage)
    print(f"wrote {write_report(cfg.run_dir, metrics)}")
    if (result := headline(metrics)) is not None:
        stage(result)


@app.command()
@user_errors
def sprec(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None,
          quiet: QuietOption = False) -> None:
    """SPRec: SFT on next items, then loop.iterations self-play rounds beside the DPO-random / DPO-popularity baselines (and popularity / SASRec references)."""
    from rlrf.methods.loop import run_loop
    from rlrf.methods.sprec import arms, collect, evaluate_references
    from rlrf.report import write_report

    cfg = _prepared(config, run_dir, overrides)
    arm_metrics = {method.name: run_loop(cfg, method, cfg.loop.iterations, layout=layout, seed=seed)
                   for method, layout, seed in arms(cfg, not quiet)}
    evaluate_references(cfg)
    print(f"wrote {write_report(cfg.run_dir, collect(cfg, arm_metrics))}")


@app.command()
@user_errors
def report(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None) -> None:
    """Write report.md and its plots from a run directory's metrics.json (RLRF4Rec or SPRec)."""
    from rlrf.core.io import read_json
    from rlrf.core.layout import RunLayout
    from rlrf.report import write_report

    cfg = load_run_config(config, run_dir, overrides)
    layout = RunLayout(cfg.run_dir)
    metrics = read_json(layout.metrics)
    if metrics is None:
        raise UserError(f"{layout.metrics}: not found; run `rlrf run` (or `rlrf sprec`) first")
    print(f"wrote {write_report(layout.root, metrics)}")


@app.command()
@user_errors
def pool(run_dirs: Annotated[list[Path], typer.Argument(help="RLRF4Rec run directories of one config, different seeds.")],
         out: Annotated[Path | None, typer.Option("--out", help="Also write the table here (markdown).")] = None) -> None:
    """The change against policy_0 in each run and pooled over the runs' test users (several seeds, one table)."""
    from rlrf.core.io import atomic_write_text, read_json
    from rlrf.core.layout import RunLayout
    from rlrf.report.rlrf4rec import pooled_markdown

    runs = {}
    for d in run_dirs:
        path = RunLayout(d).metrics
        metrics = read_json(path)
        if metrics is None or metrics.get("method") != "rlrf4rec":
            raise UserError(f"{path}: no RLRF4Rec metrics; run `rlrf run` there first")
        if len(metrics.get("evaluations", {})) < 2:
            raise UserError(f"{path}: no aligned policy evaluated yet")
        runs[str(d)] = metrics
    table = pooled_markdown(runs)
    print(table, end="")
    if out is not None:
        atomic_write_text(out, table)
        print(f"wrote {out}")


# --- knowledge for conventional recommenders ----------------------------------------------------
experiment_app = typer.Typer(no_args_is_help=True, help="Offline experiments: does the LLM's knowledge help conventional recommenders?")
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("rerank")
@user_errors
def experiment_rerank(
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
    overrides: Overrides = None,
    iteration: Annotated[list[int] | None, typer.Option("--iteration", "-i", help="Aligned iterations to compare (default: all).")] = None,
    seeds: SeedsOption = None,
    protocol: Annotated[Protocol | None, typer.Option("--protocol", help="Default: swap on CPU, retrain with CUDA.")] = None,
) -> None:
    """DLCM / PRM on test users: base, +knowledge (self text, no text, base policy, each aligned policy); mean ± sd over seeds."""
    from rlrf.experiments.rerank import run_rerank_experiment

    for t in iteration or []:
        checked_iteration(t)
    cfg = _prepared(config, run_dir, overrides)
    run_rerank_experiment(cfg, iteration or None, seeds, protocol=protocol.value if protocol else None)


@experiment_app.command("methods")
@user_errors
def experiment_methods(
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
    overrides: Overrides = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Training seeds cfg.seed, +1, ... (pooled: each seed's samples and training).")] = 2,
    method: Annotated[list[PreferenceMethod] | None, typer.Option("--method", help="dpo | sdpo | dmpo | rosepo | grpo | rloo (repeatable; default: all).")] = None,
    online_seeds: Annotated[int | None, typer.Option("--online-seeds", min=1, help="Run GRPO and RLOO on the first this many training seeds only (default: every seed); each method pools over the seeds it ran.")] = None,
    training_seed: Annotated[list[int] | None, typer.Option("--training-seed", help="Run exactly this training seed (repeatable; replaces --seeds), e.g. --training-seed 1 adds or redoes seed 1 alone.")] = None,
    rosepo_tau: Annotated[float | None, typer.Option("--rosepo-tau", help="RosePO's τ, > 0 (default: calibrated so the median pair gets ε = align.rosepo_eps_max / 2).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Every preference method from the same policy_0: DPO, S-DPO, DMPO, RosePO, GRPO, RLOO at the same number of summaries; pooled over seeds with paired CIs."""
    from rlrf.core.io import atomic_write_text
    from rlrf.core.layout import RunLayout
    from rlrf.core.progress import stage
    from rlrf.experiments.methods import EXPERIMENT, check_online_seeds, run_methods, training_seeds
    from rlrf.report.methods import markdown

    # before the run directory is made (how many seeds does not depend on the first)
    check_online_seeds(len(training_seeds(0, seeds, training_seed)), online_seeds)
    cfg = _prepared(config, run_dir, overrides)
    results = run_methods(cfg, [m.value for m in method] if method else None, seeds, rosepo_tau,
                          show_progress=not quiet, log=stage, online_seeds=online_seeds, named=training_seed)
    table = RunLayout(cfg.run_dir).experiment_table(EXPERIMENT)
    atomic_write_text(table, markdown(results))
    print(table.read_text(encoding="utf-8"), end="")
    print(f"wrote {table}")


@experiment_app.command("recbole")
@user_errors
def experiment_recbole(
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
    overrides: Overrides = None,
    export: Annotated[Path | None, typer.Option("--export", help="An `rlrf export` folder (default: the last aligned iteration's).")] = None,
    model: Annotated[str, typer.Option("--model", help="A RecBole context-aware model that reads float_seq fields.")] = "DeepFM",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Maximum epochs (early stopping on validation AUC).")] = 20,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds cfg.seed, +1, ...")] = 1,
    fields: Annotated[str, typer.Option("--fields", help="Knowledge fields: raw | adapter | all.")] = "raw",
    variant: Annotated[list[str] | None, typer.Option("--variant", help="base | knowledge_stock | knowledge (default: all).")] = None,
) -> None:
    """A RecBole context-aware model (DeepFM) on the exported dataset, with and without the knowledge features."""
    from rlrf.core.layout import RunLayout, export_meta_of
    from rlrf.experiments.recbole import VARIANTS, markdown_table, run_context_experiment
    from rlrf.export.vectors import export_dir

    cfg = _prepared(config, run_dir, overrides)
    if export is None:
        done = RunLayout(cfg.run_dir).aligned_iterations()
        export = export_dir(cfg, done[-1] if done else None)
        if not export_meta_of(export).is_file():
            raise UserError(f"{export}: no export here; run `rlrf export` first or pass --export")
    result = run_context_experiment(cfg, export, model=model, epochs=epochs,
                                    seeds=tuple(cfg.seed + i for i in range(seeds)),
                                    variants=tuple(variant or VARIANTS), knowledge_fields=fields)
    print(markdown_table(result))


@app.command()
@user_errors
def export(
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
    overrides: Overrides = None,
    iteration: Annotated[int | None, typer.Option("--iteration", "-i", help="Aligned policy iter_<t> (default: the last one).")] = None,
    base: Annotated[bool, typer.Option("--base", help="The base policy instead of an aligned one.")] = False,
    user_source: Annotated[str, typer.Option("--user-source", help="policy (one greedy summary per user) | self (text from the history).")] = "policy",
    item_source: Annotated[str, typer.Option("--item-source", help="self (the item's own text) | policy (one description per item).")] = "self",
    adapter_outputs: Annotated[bool, typer.Option("--adapter-outputs", help="Also the +knowledge reranker's adapter outputs.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: <run_dir>/export/<policy>).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Knowledge vectors of every user and item: RecBole atomic files (float_seq), .npy + ids, meta.json."""
    from rlrf.core.layout import RunLayout
    from rlrf.export.vectors import run_export

    if base and iteration is not None:
        raise UserError("--base and --iteration name two different policies; give one")
    checked_iteration(iteration)
    cfg = _prepared(config, run_dir, overrides)
    if not base and iteration is None:
        done = RunLayout(cfg.run_dir).aligned_iterations()
        iteration = done[-1] if done else None
    result = run_export(cfg, iteration, user_source=user_source, item_source=item_source,
                        adapter_outputs=adapter_outputs, out_dir=out, show_progress=not quiet)
    print("\n".join(result.lines()))


@app.command()
@user_errors
def merge(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None,
          iteration: Annotated[int | None, typer.Option("--iteration", "-i",
                                                        help="The aligned policy iter_<t> (default: the last one).")] = None,
          out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: <run_dir>/export/merged/iter_<t>).")] = None
          ) -> None:
    """The aligned policy as a plain Hugging Face model (LoRA merged, tokenizer saved) that transformers or vLLM load."""
    from rlrf.core.layout import RunLayout
    from rlrf.export.merged import run_export_merged

    cfg = _prepared(config, run_dir, overrides)
    if iteration is None:
        done = RunLayout(cfg.run_dir).aligned_iterations()
        if not done:
            raise UserError(f"{cfg.run_dir}: no aligned iteration yet; run `rlrf run` or `rlrf align` first")
        iteration = done[-1]
    print(f"wrote {run_export_merged(cfg, checked_iteration(iteration), out)}")


@app.command()
@user_errors
def rank(config: ConfigOption = None, run_dir: RunDirOption = None, overrides: Overrides = None,
         quiet: QuietOption = False) -> None:
    """Candidate ranking (LLaRA / S-DPO protocol): SFT, then DPO, S-DPO, DMPO, RosePO, a trl loss, beside baselines."""
    from rlrf.core.layout import RunLayout
    from rlrf.methods.rank import run_rank

    cfg = _prepared(config, run_dir, overrides)
    run_rank(cfg, show_progress=not quiet)
    print(f"wrote {RunLayout(cfg.run_dir).report}")


if __name__ == "__main__":
    app()
