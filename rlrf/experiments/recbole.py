"""`rlrf experiment recbole`: a RecBole context-aware model on an `rlrf export`, with and without knowledge.

The task is RecBole's own CTR setting on the exported copy of the dataset: label = rating ≥
`data.positive_rating` (RecBole's `threshold`), each user's interactions ordered by time and split
80/10/10 (`eval_args: RS, TO, group_by user, labeled`), early stopping on validation AUC, test AUC
and LogLoss from RecBole's evaluator. The user knowledge is built from the visible history only
(the first min((n+1)//2, 30) interactions), which lies inside each user's first 80%; the experiment
counts validation/test interactions that fall inside it anyway and reports the count. The variants
(base, knowledge_stock, knowledge) are described in recmodels/context.py.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Callable

from recmodels.context import VARIANTS, float_seq_fields, recbole_config, train_eval
from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_json, atomic_write_text
from rlrf.core.layout import recbole_result_of
from rlrf.core.threads import use_threads
from rlrf.evaluation.stats import mean_sd

METRICS = ("auc", "logloss")


def history_overlap(lists: dict, ds, pairs) -> dict:
    """Validation/test interactions whose item is in the user's visible history (what knowledge sees)."""
    seen = {u: {ds.catalog.ids[i] for i in lst.history} for u, lst in lists.items()}
    inside = sum(1 for u, i in pairs if i in seen.get(u, ()))
    return {"eval_interactions": len(pairs), "inside_visible_history": inside}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for split in ("valid", "test"):
        for metric in METRICS:
            vals = [r[split][metric] for r in runs]
            mean, sd = mean_sd(vals)
            out[f"{split}_{metric}"] = {"mean": mean, "sd": sd}
    out["epochs_run"] = mean_sd([r["epochs_run"] for r in runs])[0]
    out["seconds"] = mean_sd([r["seconds"] for r in runs])[0]
    out["params"] = runs[0]["params"]
    return out


LABELS = {
    "base": "{model} (dataset features)",
    "knowledge_stock": "{model} + knowledge, RecBole 1.2.1 float_seq as shipped (vector mean only)",
    "knowledge": "{model} + knowledge (float_seq, one embedding per position)",
}


def markdown_table(result: dict) -> str:
    model = result["model"]
    n = len(result["seeds"])
    lines = [
        f"Test interactions, RecBole evaluator, mean ± sd over {n} seed{'s' if n > 1 else ''} "
        f"(selected on validation AUC). Export: {result['export']['folder']} "
        f"(user: {result['export']['user_source']}, item: {result['export']['item_source']}, "
        f"encoder {result['export']['encoder']}, policy {result['export']['policy']}).",
        "",
        "| variant | test AUC | test LogLoss | valid AUC | epochs | s / run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant, summary in result["summary"].items():
        def cell(key, s=summary, one_seed=len(result["seeds"]) < 2):
            return f"{s[key]['mean']:.4f}" + ("" if one_seed else f" ± {s[key]['sd']:.4f}")
        lines.append(f"| {LABELS[variant].format(model=model)} | {cell('test_auc')} | {cell('test_logloss')} | "
                     f"{cell('valid_auc')} | {summary['epochs_run']:.1f} | {summary['seconds']:.0f} |")
    overlap = result.get("overlap")
    if overlap:
        lines += ["", f"Validation/test interactions inside the user's visible history (the text the knowledge is "
                      f"built from): {overlap['inside_visible_history']} of {overlap['eval_interactions']}."]
    return "\n".join(lines) + "\n"


FIELD_SETS = ("raw", "adapter", "all")


def select_fields(fields: tuple[list, list], which: str) -> tuple[list, list]:
    """raw = the encoder's vectors, adapter = the reranker adapter's outputs (`--adapter-outputs`), all = both."""
    from rlrf.export.vectors import ADAPTER_SUFFIX

    if which not in FIELD_SETS:
        raise UserError(f"knowledge fields: unknown '{which}' ({', '.join(FIELD_SETS)})")
    keep = {"raw": lambda f: not f.endswith(ADAPTER_SUFFIX), "adapter": lambda f: f.endswith(ADAPTER_SUFFIX),
            "all": lambda f: True}[which]
    return [f for f in fields[0] if keep(f)], [f for f in fields[1] if keep(f)]


def run_context_experiment(cfg, export_dir: Path, model: str = "DeepFM", epochs: int = 20,
                           seeds=(0, 1, 2), variants=VARIANTS, knowledge_fields: str = "raw",
                           show_progress: bool = True, extra_config: dict | None = None, log=print) -> dict:
    """The CLI's adapter: the run's dataset and lists, then `context_experiment` on the export."""
    from rlrf.data.dataset import load_dataset
    from rlrf.reward.inputs import load_lists_for

    use_threads(cfg)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    return context_experiment(ds, lambda: load_lists_for(cfg, ds), export_dir, cfg.data.positive_rating, model=model,
                              epochs=epochs, seeds=seeds, variants=variants, knowledge_fields=knowledge_fields,
                              show_progress=show_progress, extra_config=extra_config, log=log)


def context_experiment(ds, lists: Callable[[], dict], export_dir: Path, positive_rating: float, *,
                       model: str = "DeepFM", epochs: int = 20, seeds=(0, 1, 2), variants=VARIANTS,
                       knowledge_fields: str = "raw", show_progress: bool = True, extra_config: dict | None = None,
                       log=print) -> dict:
    """Train and test `model` on the export's RecBole dataset (of `ds`) for each variant and seed.

    `lists()` gives the run's reranking lists (their histories are what the knowledge saw), read only
    once the models are trained; `positive_rating` is RecBole's label threshold.
    Writes `<export_dir>/recbole_<model>.json` (every run + mean ± sd) and `recbole_<model>.md`
    (the table); with `knowledge_fields` other than "raw" the names get `_<fields>`.
    `extra_config`: more RecBole settings (e.g. {"embedding_size": 16}).
    """
    from rlrf.export.vectors import load_export

    export_dir = Path(export_dir)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"variant: unknown '{unknown[0]}' ({', '.join(VARIANTS)})")
    *_, meta = load_export(export_dir, ds)  # refuses an export of another dataset
    data_path = export_dir / meta["recbole"]["data_path"]
    name = meta["recbole"]["dataset"]
    fields = select_fields(float_seq_fields(data_path, name), knowledge_fields)
    if not fields[0] and not fields[1] and any(v != "base" for v in variants):
        raise UserError(f"{data_path / name}: no {knowledge_fields} float_seq field in the .user or .item file")
    work = export_dir.parent / f".recbole-{export_dir.name}-{model}-{uuid.uuid4().hex[:8]}"
    result = {
        "model": model, "epochs": epochs, "seeds": list(seeds), "variants": list(variants),
        "task": "label = rating >= %g; per-user time order 80/10/10; RecBole labeled evaluation" % positive_rating,
        "export": {"folder": str(export_dir), "user_source": meta["sources"]["user"], "item_source": meta["sources"]["item"],
                   "encoder": meta["encoder"]["key"], "policy": meta["policy"]["tag"] if meta["policy"]["used"] else "none",
                   "fields": {"user": fields[0], "item": fields[1]}},
        "knowledge_fields": knowledge_fields, "extra_config": extra_config or {},
        "runs": {}, "summary": {},
    }
    pairs = None
    for variant in variants:
        runs = []
        for seed in seeds:
            config = recbole_config(data_path, name, model, variant, knowledge_fields=fields, seed=seed, epochs=epochs,
                                    checkpoint_dir=work, positive_rating=positive_rating, extra=extra_config)
            run = train_eval(config, variant, fields, work)
            pairs = run.pop("eval_pairs")
            runs.append(run)
            if show_progress and log:
                log(f"{model} {variant} seed {seed}: test AUC {run['test']['auc']:.4f} LogLoss {run['test']['logloss']:.4f} "
                    f"(valid AUC {run['valid']['auc']:.4f}, best epoch {run['best_epoch']}/{run['epochs_run']}, {run['seconds']:.0f} s)")
        result["runs"][variant] = runs
        result["summary"][variant] = summarise(runs)
    result["overlap"] = history_overlap(lists(), ds, pairs) if pairs is not None else None
    shutil.rmtree(work, ignore_errors=True)
    stem = f"recbole_{model}" + ("" if knowledge_fields == "raw" else f"_{knowledge_fields}")
    result_json, result_table = recbole_result_of(export_dir, stem)
    atomic_write_json(result_json, result)
    atomic_write_text(result_table, markdown_table(result))
    return result
