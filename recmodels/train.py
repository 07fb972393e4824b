"""Tensors from reranking lists, building, training, scoring, saving and loading DLCM / PRM.

Training: binary cross-entropy on the list labels, AdamW, seeded; after each epoch the model is
scored on the VALIDATION users' lists and the state with the best MAP@5 is kept (early stopping
after `patience` epochs without improvement). Test users are never looked at here.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recmodels.experts import ListFeatures
from recmodels.dlcm import DLCM
from recmodels.prm import PRM
from rlrf.core.errors import UserError
from rlrf.evaluation.metrics import map_at_k

MODEL_FILE = "model.pt"
META_FILE = "meta.json"


@dataclass
class ListTensors:
    """Lists as aligned tensors. items / hist hold catalog index + 1 (0 = padding)."""

    users: list[str]
    items: torch.Tensor  # [N, L] long
    labels: torch.Tensor  # [N, L] float
    hist: torch.Tensor  # [N, H] long
    hist_r: torch.Tensor  # [N, H] long: 0 pad/unknown, 1 below threshold, 2 positive

    def __len__(self) -> int:
        return len(self.users)

    def take(self, idx) -> "ListTensors":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ListTensors([self.users[i] for i in idx.tolist()], self.items[idx], self.labels[idx],
                           self.hist[idx], self.hist_r[idx])


def tensorize(lists: Sequence, max_history: int = 30, positive_rating: float = 4.0) -> ListTensors:
    """RerankList-like records (user, history, history_ratings, items, labels) → ListTensors."""
    if not lists:
        raise UserError("no reranking lists to tensorize (is the split empty?)")
    lengths = {len(lst.items) for lst in lists}
    if len(lengths) != 1:
        raise UserError(f"reranking lists have different lengths {sorted(lengths)}; data.lists.length must hold for all")
    n, length = len(lists), lengths.pop()
    h = max(1, min(max_history, max(len(lst.history) for lst in lists)))
    items = torch.tensor([[i + 1 for i in lst.items] for lst in lists], dtype=torch.long)
    labels = torch.tensor([lst.labels for lst in lists], dtype=torch.float32)
    hist = torch.zeros(n, h, dtype=torch.long)
    hist_r = torch.zeros(n, h, dtype=torch.long)
    for row, lst in enumerate(lists):
        hs = lst.history[-h:]
        rs = (lst.history_ratings or [None] * len(lst.history))[-h:]
        if hs:
            hist[row, : len(hs)] = torch.tensor(hs) + 1
            hist_r[row, : len(rs)] = torch.tensor([0 if r is None else (2 if r >= positive_rating else 1) for r in rs])
    assert items.shape[1] == length
    return ListTensors([lst.user for lst in lists], items, labels, hist, hist_r)


def item_prior_features(ds, users, positive_rating: float = 4.0) -> np.ndarray:
    """[n_items, 2]: smoothed share of ratings >= positive_rating, (pos + 1) / (n + 2), and
    log1p(n) / log1p(max n), over the given (TRAIN) users' interactions."""
    n = len(ds.catalog)
    pos, cnt = np.zeros(n), np.zeros(n)
    for u in users:
        user = ds.users[u]
        for i, r in zip(user.items, user.ratings):
            cnt[i] += 1
            pos[i] += r is not None and r >= positive_rating
    return np.stack([(pos + 1) / (cnt + 2), np.log1p(cnt) / max(np.log1p(cnt.max()), 1e-9)], 1).astype(np.float32)


def build_reranker(hp: dict, n_items: int, genre_matrix, item_knowledge=None, item_prior=None) -> nn.Module:
    """DLCM or PRM from a hyperparameter dict: kind, knowledge, list_length, embed_dim, hidden, heads,
    layers, adapter_out, adapter_hidden, shared_experts, specific_experts, dropout, knowledge_dropout
    and optionally history, item_prior, summary_match, history_dropout, match_scale (the dict is saved
    with the weights and read back by `load_reranker`)."""
    gm = torch.as_tensor(np.asarray(genre_matrix), dtype=torch.float32)
    ik = None
    if hp["knowledge"]:
        if item_knowledge is None:
            raise ValueError("a +knowledge reranker needs item knowledge vectors")
        ik = torch.as_tensor(np.asarray(item_knowledge), dtype=torch.float32)
    features = ListFeatures(n_items, gm, hp["embed_dim"], ik, hp["adapter_out"], hp["adapter_hidden"],
                            hp["shared_experts"], hp["specific_experts"], hp["dropout"], hp["knowledge_dropout"],
                            hp.get("history", True), _prior_tensor(hp, item_prior),
                            hp.get("summary_match", False), hp.get("history_dropout", 0.0),
                            match_scale=hp.get("match_scale", 1.0))
    if hp["kind"] == "dlcm":
        return DLCM(features, hp["hidden"])
    if hp["kind"] == "prm":
        return PRM(features, hp["list_length"], hp["hidden"], hp["heads"], hp["layers"], hp["dropout"])
    raise UserError(f"reward.model: unknown reranker '{hp['kind']}' (dlcm or prm)")


def _prior_tensor(hp: dict, item_prior):
    if not hp.get("item_prior", False):
        return None
    if item_prior is None:
        raise ValueError("reward.item_prior is on but no item prior features were given")
    return torch.as_tensor(np.asarray(item_prior), dtype=torch.float32)


def _knowledge_args(model: nn.Module, idx, user_k, has_k):
    if not model.features.knowledge:
        return None, None
    if user_k is None:
        return None, None
    return user_k[idx], (has_k[idx] if has_k is not None else None)


@torch.no_grad()
def predict(model: nn.Module, data: ListTensors, user_k: torch.Tensor | None = None,
            has_k: torch.Tensor | None = None, batch_size: int = 2048) -> torch.Tensor:
    """Scores [N, L] in eval mode (no dropout), batched."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        uk, hk = _knowledge_args(model, idx, user_k, has_k)
        out.append(model(data.items[idx], data.hist[idx], data.hist_r[idx], uk, hk))
    return torch.cat(out)


def valid_map(model, data: ListTensors, user_k=None, has_k=None, k: int = 5) -> float:
    return float(map_at_k(predict(model, data, user_k, has_k), data.labels, k).mean())


@dataclass(frozen=True)
class TrainSettings:
    """How a reranker is trained: AdamW, BCE on the labels, early stopping on VALID MAP@5."""

    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 10  # epochs without a better VALID MAP@5 before stopping


def train_reranker(model: nn.Module, train: ListTensors, valid: ListTensors, settings: TrainSettings, seed: int,
                   train_k: tuple | None = None, valid_k: tuple | None = None, log=None) -> dict:
    """Train in place; the model ends holding its best-validation state. Returns the training history.

    train_k / valid_k: (user_k [N, Dk], has_k [N]) aligned with the lists, for +knowledge models.
    train_k may also be a callable `epoch -> (user_k, has_k)`: summaries resampled every epoch.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    tk = (None, None) if train_k is None or callable(train_k) else train_k
    vk = valid_k or (None, None)
    best = -1.0
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, stale, history = 0, 0, []
    start = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        model.train()
        if callable(train_k):
            tk = train_k(epoch)
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        for b in range(0, len(train), settings.batch_size):
            idx = order[b: b + settings.batch_size]
            uk, hk = _knowledge_args(model, idx, *tk)
            logits = model(train.items[idx], train.hist[idx], train.hist_r[idx], uk, hk)
            loss = loss_fn(logits, train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        score = valid_map(model, valid, *vk)
        history.append({"epoch": epoch, "loss": total / len(train), "valid_map@5": score})
        if log is not None:
            log(history[-1])
        if score > best + 1e-9:
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= settings.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return {"best_epoch": best_epoch, "valid_map@5": best, "epochs_run": len(history),
            "seconds": time.perf_counter() - start, "history": history}


FORMAT = "rlrf-reranker/1"


def save_reranker(folder: Path, model: nn.Module, hp: dict, meta: dict, name: str = MODEL_FILE) -> None:
    """The state dict (item knowledge table included) as safetensors + meta.json naming dataset, encoder,
    hyperparameters. The file's name keeps its `.pt` (model.pt, seed_<s>.pt) but holds safetensors; its
    own hyperparameters and meta travel in the safetensors header (JSON), so a copy of the file
    (reward's model.pt) carries them. No torch.save."""
    from rlrf.core.io import atomic_write_json, save_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "hyperparameters": hp, "meta": meta}
    save_state_dict(folder / name, model.state_dict(), {"rlrf": json.dumps(header, ensure_ascii=False)})
    atomic_write_json(folder / META_FILE, {**meta, "hyperparameters": hp})


def check_hyperparameters(hp: dict, where: str) -> None:
    """Sizes positive, heads dividing the sizes they split: a saved file is checked before building."""
    keys = ("embed_dim", "hidden", "list_length") + (("heads", "layers") if hp.get("kind") == "prm" else ())
    for key in keys:
        value = hp.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{where}: hyperparameter {key} must be a positive integer (got {value!r})")
    if hp.get("kind") == "prm" and hp["hidden"] % hp["heads"]:
        raise UserError(f"{where}: hyperparameter heads ({hp['heads']}) must divide hidden ({hp['hidden']})")


def load_reranker(path: Path, dataset: str, encoder: str, n_items: int, genre_matrix,
                  name: str = MODEL_FILE) -> tuple[nn.Module, dict]:
    """Load a saved reranker; a model trained on another dataset or encoder is a UserError naming both.
    Only safetensors is read: an older rlrf's torch.save file is refused (re-train it)."""
    from rlrf.core.io import read_safetensors

    file = Path(path) / name
    if not file.exists():
        raise UserError(f"{file}: reward model not found; run `rlrf reward train` first")
    state, header = read_safetensors(file, "train it again (`rlrf reward train`, or the stage that wrote it)")
    blob = _parse_header(file, header)
    meta, hp = blob["meta"], blob["hyperparameters"]
    if meta.get("dataset") != dataset:
        raise UserError(f"{file}: reward model trained on dataset '{meta.get('dataset')}', "
                        f"but this run's dataset is '{dataset}'")
    if hp.get("knowledge") and meta.get("encoder") != encoder:
        raise UserError(f"{file}: reward model trained with encoder '{meta.get('encoder')}', "
                        f"but this run's encoder is '{encoder}'")
    if meta.get("n_items") != n_items:
        raise UserError(f"{file}: reward model has {meta.get('n_items')} items, this dataset has {n_items}")
    check_hyperparameters(hp, str(file))
    ik = state.get("features.item_k")
    ip = state.get("features.item_prior")
    model = build_reranker(hp, n_items, genre_matrix, None if ik is None else ik[1:], None if ip is None else ip[1:])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"{file}: weights do not fit its hyperparameters ({str(err).splitlines()[0]})") from None
    model.eval()
    return model, {**meta, "hyperparameters": hp}


def _parse_header(file: Path, header: dict[str, str]) -> dict:
    try:
        blob = json.loads(header["rlrf"])
        if blob.get("format") != FORMAT or not isinstance(blob["meta"], dict) or not isinstance(blob["hyperparameters"], dict):
            raise ValueError(blob.get("format"))
    except (KeyError, ValueError, TypeError, AttributeError):
        raise UserError(f"{file}: not an rlrf reranker file (no '{FORMAT}' header); train it again") from None
    return blob


def read_header(file: Path) -> dict:
    """{"format", "hyperparameters", "meta"} of one saved reranker file, without loading its tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise UserError(f"{file}: not a safetensors reranker file ({err}); train it again") from None
    return _parse_header(Path(file), header)
