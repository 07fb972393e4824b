"""RecBole SASRec on given item sequences: train (or reuse a cached model), score histories, top-M.

The caller decides what SASRec may see (rlrf.data.candidates: no evaluated future item). We write
the sequences as RecBole atomic files with the position as timestamp, so RecBole's order is exactly
ours. The trained model is cached in `out_dir`, keyed by a hash of the sequences and the settings
(`SASRecSettings`).

The cache is `out_dir/sasrec.safetensors`; the hash is in the file's header (`sasrec.json` repeats it
for people). Everything RecBole writes (its atomic files, its best-state checkpoint, tensorboard
logs) goes into the scratch folder `out_dir/work/`, which every run empties first and removes when
done: a run killed at any point leaves nothing the next run does not clear or reuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from recmodels.recbole_env import load_checkpoint, make_config, prepare_recbole, run_settings
from rlrf.core.io import atomic_write_json, atomic_write_text, read_safetensors, save_state_dict

DATASET_NAME = "rlrf_sasrec"  # never 'ml-100k': RecBole resolves that name to its bundled copy
WEIGHTS_FILE = "sasrec.safetensors"
SCRATCH_DIR = "work"
# What older versions (or a kill) left directly in sasrec/: never read, removed on start.
STALE = ("sasrec.pth", ".sasrec.pth.tmp", "sasrec.pth.tmp", "recbole_data", "log_tensorboard", "SASRec-*.pth")


@dataclass(frozen=True)
class SASRecSettings:
    """What SASRec is trained with (RecBole's names where RecBole has one)."""

    epochs: int = 5
    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 2
    max_seq_length: int = 50
    batch_size: int = 2048
    learning_rate: float = 1e-3
    eval_step: int = 1
    stopping_step: int = 3
    show_progress: bool = True


def _write_atomic(sequences: dict[str, list[int]], folder: Path) -> None:
    """Item tokens are catalog indices and timestamps are positions: RecBole keeps our exact order."""
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for uid, items in sequences.items():
        lines.extend(f"{uid}\t{item}\t{pos}" for pos, item in enumerate(items))
    atomic_write_text(folder / f"{DATASET_NAME}.inter", "\n".join(lines) + "\n")


def _recbole_config(settings: SASRecSettings, data_root: Path, checkpoint_dir: Path, seed: int):
    return make_config(
        model="SASRec",
        dataset=DATASET_NAME,
        config_dict={
            "data_path": str(data_root),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "MAX_ITEM_LIST_LENGTH": settings.max_seq_length,
            "hidden_size": settings.hidden_size,
            "inner_size": settings.hidden_size * 2,
            "n_layers": settings.n_layers,
            "n_heads": settings.n_heads,
            "loss_type": "CE",
            "train_neg_sample_args": None,
            "epochs": settings.epochs,
            "train_batch_size": settings.batch_size,
            "eval_batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "eval_step": settings.eval_step,
            "stopping_step": settings.stopping_step,
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
            "metrics": ["Hit", "NDCG"],
            "topk": [10],
            "valid_metric": "NDCG@10",
            **run_settings(checkpoint_dir, seed),
        },
    )


def _fingerprint(sequences: dict[str, list[int]], settings: SASRecSettings, seed: int) -> str:
    h = hashlib.sha256(json.dumps([sorted(sequences.items()), asdict(settings), seed]).encode())
    return h.hexdigest()[:16]


def _clear_leftovers(out_dir: Path) -> Path:
    """Empty the scratch folder and remove what older versions or a killed run left; returns scratch."""
    for pattern in (SCRATCH_DIR, f".{WEIGHTS_FILE}.tmp", *STALE):
        for path in out_dir.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    scratch = out_dir / SCRATCH_DIR
    scratch.mkdir(parents=True)
    return scratch


def train_sasrec(sequences: dict[str, list[int]], settings: SASRecSettings, out_dir: Path, seed: int = 0):
    """Train (or reuse the cached) SASRec on `sequences` (user -> catalogue indices, oldest first);
    returns (model, recbole dataset)."""
    prepare_recbole()
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    fingerprint = _fingerprint(sequences, settings, seed)
    scratch = _clear_leftovers(out_dir)
    try:
        data_root = scratch / "recbole_data"
        _write_atomic(sequences, data_root / DATASET_NAME)
        config = _recbole_config(settings, data_root, scratch, seed)
        init_seed(seed, reproducibility=True)
        logging.getLogger().setLevel(logging.WARNING)
        dataset = create_dataset(config)
        train_data, valid_data, _ = data_preparation(config, dataset)
        model = SASRec(config, train_data.dataset)

        checkpoint = out_dir / WEIGHTS_FILE
        meta_path = out_dir / "sasrec.json"
        state = None
        if checkpoint.exists():
            tensors, header = read_safetensors(checkpoint, "re-run `rlrf data` (the model is trained again)")
            if header.get("fingerprint") == fingerprint:
                state = tensors
        if state is not None:
            model.load_state_dict(state)
        else:
            # RecBole's trainer writes tensorboard logs relative to the working directory.
            with contextlib.chdir(scratch):
                trainer = Trainer(config, model)
                try:
                    trainer.fit(train_data, valid_data, saved=True, show_progress=settings.show_progress)
                finally:
                    trainer.tensorboard.close()
                best = load_checkpoint(Path(trainer.saved_model_file))
            model.load_state_dict(best["state_dict"])
            save_state_dict(checkpoint, model.state_dict(), {"fingerprint": fingerprint})
            atomic_write_json(meta_path, {"fingerprint": fingerprint, "config": asdict(settings)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model.eval()
    return model, dataset


@torch.no_grad()
def score_histories(model, dataset, n_items: int, histories: dict[str, list[int]], batch_size: int = 512) -> tuple[list[str], np.ndarray]:
    """Scores over our catalog [n_users, n_items] for each user's history; unseen-by-SASRec items get -inf."""
    from recbole.data.interaction import Interaction

    # Item tokens in our atomic file are catalog indices (see _write_atomic); internal id 0 is '[PAD]'.
    tokens = dataset.field2id_token["item_id"]
    valid_cols = np.arange(1, len(tokens))
    catalog_cols = np.array([int(t) for t in tokens[1:]], dtype=np.int64)
    internal_of = dict(zip(catalog_cols.tolist(), valid_cols.tolist()))
    max_len = model.max_seq_length
    users = list(histories)
    out = np.full((len(users), n_items), -np.inf, dtype=np.float32)
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        seqs = np.zeros((len(chunk), max_len), dtype=np.int64)
        lengths = np.ones(len(chunk), dtype=np.int64)
        for row, uid in enumerate(chunk):
            ids = [internal_of[i] for i in histories[uid] if i in internal_of][-max_len:]
            if ids:
                seqs[row, : len(ids)] = ids
                lengths[row] = len(ids)
        inter = Interaction({"item_id_list": torch.from_numpy(seqs), "item_length": torch.from_numpy(lengths)})
        scores = model.full_sort_predict(inter).view(len(chunk), -1).numpy()
        out[start : start + len(chunk), catalog_cols] = scores[:, valid_cols]
    return users, out


def top_m(scores: np.ndarray, histories: list[list[int]], m: int) -> np.ndarray:
    """Top-M catalog indices per row, with each row's seen history masked out."""
    masked = scores.copy()
    for row, seen in enumerate(histories):
        masked[row, seen] = -np.inf
    part = np.argpartition(-masked, kth=min(m, masked.shape[1] - 1), axis=1)[:, :m]
    order = np.argsort(-np.take_along_axis(masked, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
