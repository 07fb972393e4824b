"""A RecBole context-aware model (DeepFM by default) on an `rlrf export`, with and without knowledge.

The task is RecBole's own CTR setting on the exported copy of the dataset: label = rating ≥
`data.positive_rating` (RecBole's `threshold`), each user's interactions ordered by time and split
80/10/10 (`eval_args: RS, TO, group_by user, labeled`), early stopping on validation AUC, test AUC
and LogLoss from RecBole's evaluator. The user knowledge is built from the visible history only
(the first min((n+1)//2, 30) interactions), which lies inside each user's first 80%; the experiment
counts validation/test interactions that fall inside it anyway and reports the count.

Variants (rows of the table), all with the dataset's own features (user: age, gender, occupation;
item: release_year, class) and the user and item id:

* ``base`` — no knowledge.
* ``knowledge_stock`` — + the float_seq knowledge fields, listed in `numerical_features`, RecBole
  1.2.1 as shipped. Read in its source (data/dataset/dataset.py `_discretization`, the branch without
  discretisation): a float_seq becomes ``[value, index]`` pairs whose index is 1 at EVERY position,
  and `ContextRecommender.embed_float_seq_fields` embeds ``mean_j(value_j · E[index_j])`` — so the
  D-dim vector reaches the model only as its mean, one scalar times one learned vector.
  (Without `numerical_features`, the field is skipped by `ContextRecommender.__init__` altogether.)
* ``knowledge`` — the same fields with the index set to the position (1..D, `float_seq_positions`)
  and the values scaled by D: the model then embeds ``Σ_j v_j · E[j]``, a learned linear map of the
  whole vector into the field embedding, which FM and the deep part use like any other field.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from recmodels.recbole_env import load_checkpoint, make_config, prepare_recbole, run_settings
from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_json, atomic_write_text

VARIANTS = ("base", "knowledge_stock", "knowledge")
USER_FEATURES = ("age", "gender", "occupation")
ITEM_FEATURES = ("release_year", "class")
METRICS = ("auc", "logloss")


def float_seq_positions(dataset, fields) -> None:
    """Give each float_seq position its own embedding row (index = position), values × length.

    RecBole 1.2.1 stores a numerical float_seq as [value, 1] pairs, so every position shares one
    embedding and the model sees only the vector's mean. After this, `embed_float_seq_fields`' mean
    over positions becomes Σ_j v_j·E[j]. Call it between `create_dataset` and `data_preparation`
    (the features are still DataFrames of (values, indices) pairs then); modifies them in place.
    """
    for name in fields:
        feat = next((f for f in (dataset.user_feat, dataset.item_feat) if f is not None and name in f), None)
        if feat is None:
            raise UserError(f"float_seq field {name} is in neither the .user nor the .item features")
        cells = list(feat[name])
        if not cells or not isinstance(cells[0], tuple):
            raise UserError(f"float_seq field {name} is not in numerical_features (or the dataset is already built)")
        length = max(len(v) for v, _ in cells)
        feat[name] = [(np.asarray(v, dtype=np.float64) * length, np.arange(1, len(v) + 1, dtype=np.float64))
                      for v, _ in cells]
        dataset.field2bucketnum[name] = length + 1


def _fields(data_path: Path, name: str) -> tuple[list[str], list[str]]:
    """The float_seq fields of the exported .user and .item headers."""
    out = []
    for suffix in ("user", "item"):
        header = (data_path / name / f"{name}.{suffix}").read_text(encoding="utf-8").split("\n", 1)[0]
        out.append([c.split(":")[0] for c in header.split("\t") if c.endswith(":float_seq")])
    return out[0], out[1]


def recbole_config(data_path: Path, name: str, model: str, variant: str, *, knowledge_fields: tuple[list, list],
                   seed: int, epochs: int, checkpoint_dir: Path, positive_rating: float = 4.0,
                   learning_rate: float = 1e-3, batch_size: int = 2048, stopping_step: int = 3, extra: dict | None = None):
    user_k, item_k = knowledge_fields if variant != "base" else ([], [])
    return make_config(model=model, dataset=name, config_dict={
        "data_path": str(data_path),
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"],
                     "user": ["user_id", *USER_FEATURES, *user_k], "item": ["item_id", *ITEM_FEATURES, *item_k]},
        "threshold": {"rating": positive_rating},
        "numerical_features": [*user_k, *item_k],
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "labeled"},
        "train_neg_sample_args": None,
        "metrics": ["AUC", "LogLoss"],
        "valid_metric": "AUC",
        "epochs": epochs,
        "stopping_step": stopping_step,
        "eval_step": 1,
        "learning_rate": learning_rate,
        "train_batch_size": batch_size,
        "eval_batch_size": 8192,
        **run_settings(checkpoint_dir, seed),
        **(extra or {}),
    })


def train_eval(config, variant: str, knowledge_fields: tuple[list, list], work_dir: Path) -> dict:
    """One RecBole run: fit with early stopping on valid AUC, reload the best state, evaluate test."""
    prepare_recbole()
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    init_seed(config["seed"], config["reproducibility"])
    logging.getLogger().setLevel(logging.WARNING)
    start = time.perf_counter()
    dataset = create_dataset(config)
    if variant == "knowledge":
        float_seq_positions(dataset, [*knowledge_fields[0], *knowledge_fields[1]])
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    work_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(work_dir):  # RecBole writes tensorboard logs relative to the working directory
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        saved = Path(trainer.saved_model_file)
        model.load_state_dict(load_checkpoint(saved)["state_dict"])
        valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
        test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    saved.unlink(missing_ok=True)
    epochs_run = len(trainer.train_loss_dict)
    return {
        "seed": int(config["seed"]),
        "valid": {k: float(v) for k, v in valid.items()},
        "test": {k: float(v) for k, v in test.items()},
        "best_epoch": epochs_run - int(trainer.cur_step),  # eval_step 1: epochs since the best one
        "epochs_run": epochs_run,
        "params": int(sum(p.numel() for p in model.parameters())),
        "seconds": round(time.perf_counter() - start, 1),
        "interactions": {"train": len(train_data.dataset), "valid": len(valid_data.dataset), "test": len(test_data.dataset)},
        "eval_pairs": _raw_pairs(valid_data.dataset) + _raw_pairs(test_data.dataset),
    }


def _raw_pairs(dataset) -> list[tuple[str, str]]:
    inter = dataset.inter_feat
    users = dataset.id2token(dataset.uid_field, inter[dataset.uid_field].numpy())
    items = dataset.id2token(dataset.iid_field, inter[dataset.iid_field].numpy())
    return list(zip(users.tolist(), items.tolist()))


def history_overlap(cfg, ds, pairs) -> dict:
    """Validation/test interactions whose item is in the user's visible history (what knowledge sees)."""
    from rlrf.reward.model import load_lists_for

    lists = load_lists_for(cfg, ds)
    seen = {u: {ds.catalog.ids[i] for i in lst.history} for u, lst in lists.items()}
    inside = sum(1 for u, i in pairs if i in seen.get(u, ()))
    return {"eval_interactions": len(pairs), "inside_visible_history": inside}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), (float(statistics.stdev(values)) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> dict:
    out = {}
    for split in ("valid", "test"):
        for metric in METRICS:
            vals = [r[split][metric] for r in runs]
            mean, sd = _mean_sd(vals)
            out[f"{split}_{metric}"] = {"mean": mean, "sd": sd}
    out["epochs_run"] = _mean_sd([r["epochs_run"] for r in runs])[0]
    out["seconds"] = _mean_sd([r["seconds"] for r in runs])[0]
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
    """Train and test `model` on the export's RecBole dataset for each variant and seed.

    Writes `<export_dir>/recbole_<model>.json` (every run + mean ± sd) and `recbole_<model>.md`
    (the table); with `knowledge_fields` other than "raw" the names get `_<fields>`.
    `extra_config`: more RecBole settings (e.g. {"embedding_size": 16}).
    """
    from rlrf.data.dataset import load_dataset
    from rlrf.export.vectors import load_export

    export_dir = Path(export_dir)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"variant: unknown '{unknown[0]}' ({', '.join(VARIANTS)})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    *_, meta = load_export(export_dir, ds)  # refuses an export of another dataset
    data_path = export_dir / meta["recbole"]["data_path"]
    name = meta["recbole"]["dataset"]
    fields = select_fields(_fields(data_path, name), knowledge_fields)
    if not fields[0] and not fields[1] and any(v != "base" for v in variants):
        raise UserError(f"{data_path / name}: no {knowledge_fields} float_seq field in the .user or .item file")
    work = export_dir.parent / f".recbole-{export_dir.name}-{model}-{uuid.uuid4().hex[:8]}"
    result = {
        "model": model, "epochs": epochs, "seeds": list(seeds), "variants": list(variants),
        "task": "label = rating >= %g; per-user time order 80/10/10; RecBole labeled evaluation" % cfg.data.positive_rating,
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
                                    checkpoint_dir=work, positive_rating=cfg.data.positive_rating, extra=extra_config)
            run = train_eval(config, variant, fields, work)
            pairs = run.pop("eval_pairs")
            runs.append(run)
            if show_progress and log:
                log(f"{model} {variant} seed {seed}: test AUC {run['test']['auc']:.4f} LogLoss {run['test']['logloss']:.4f} "
                    f"(valid AUC {run['valid']['auc']:.4f}, best epoch {run['best_epoch']}/{run['epochs_run']}, {run['seconds']:.0f} s)")
        result["runs"][variant] = runs
        result["summary"][variant] = summarise(runs)
    result["overlap"] = history_overlap(cfg, ds, pairs) if pairs is not None else None
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(work)
    stem = f"recbole_{model}" + ("" if knowledge_fields == "raw" else f"_{knowledge_fields}")
    atomic_write_json(export_dir / f"{stem}.json", result)
    atomic_write_text(export_dir / f"{stem}.md", markdown_table(result))
    return result
