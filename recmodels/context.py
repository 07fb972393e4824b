"""A RecBole context-aware model (DeepFM by default) with and without float_seq knowledge fields.

The experiment that drives it on an `rlrf export` lives in rlrf/experiments/recbole.py; this module
is the RecBole side only: the config, one train/evaluate run, and the float_seq fix below.

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
import time
from pathlib import Path

import numpy as np
import torch

from recmodels.recbole_env import load_checkpoint, make_config, prepare_recbole, run_settings
from rlrf.core.errors import UserError

VARIANTS = ("base", "knowledge_stock", "knowledge")
USER_FEATURES = ("age", "gender", "occupation")
ITEM_FEATURES = ("release_year", "class")


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


def float_seq_fields(data_path: Path, name: str) -> tuple[list[str], list[str]]:
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
