"""Model files are safetensors only: a planted torch.save file is refused with one line, never loaded.

Each test plants, at a path rlrf reads a model from, a torch.save file whose payload would create a
marker file when unpickled, then checks the stage refuses it with a UserError naming the file and
that the marker was never created.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from rlrf.core.errors import UserError


class _Payload:
    """Unpickling this runs `os.mknod(marker)`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mknod, (self.marker,))


def plant(path, marker, legacy: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"state_dict": {"w": torch.zeros(1)}, "hyperparameters": {}, "meta": {}, "x": _Payload(marker)}
    torch.save(blob, path, _use_new_zipfile_serialization=not legacy)
    assert not marker.exists()


def _tiny_reranker(tmp_path):
    from recmodels.train import build_reranker
    from rlrf.core.config import RewardConfig
    from rlrf.reward.training import reranker_hyperparameters as hyperparameters

    hp = hyperparameters(RewardConfig(embed_dim=4, hidden=8, heads=2), "prm", False, 5)
    genres = np.eye(7, 3, dtype=np.float32)
    return build_reranker(hp, 7, genres), hp, genres


@pytest.mark.parametrize("name", ["model.pt", "seed_3.pt"])
@pytest.mark.parametrize("legacy", [False, True])
def test_planted_reranker_file_is_refused_and_never_runs(tmp_path, name, legacy):
    from recmodels.train import load_reranker

    marker = tmp_path / "pwned"
    plant(tmp_path / "reward" / "prm" / name, marker, legacy)
    with pytest.raises(UserError, match=rf"{name}: a torch.save file .* never loads .*train it again"):
        load_reranker(tmp_path / "reward" / "prm", "d", "enc", 7, np.eye(7, 3), name=name)
    assert not marker.exists()


def test_reranker_round_trips_as_safetensors_with_its_header(tmp_path):
    from safetensors import safe_open

    from recmodels.train import load_reranker, save_reranker

    model, hp, genres = _tiny_reranker(tmp_path)
    save_reranker(tmp_path, model, hp, {"dataset": "d", "n_items": 7}, name="seed_0.pt")
    with safe_open(str(tmp_path / "seed_0.pt"), framework="pt") as f:  # a safetensors file under its old name
        assert json.loads(f.metadata()["rlrf"])["hyperparameters"] == hp
    loaded, meta = load_reranker(tmp_path, "d", "enc", 7, genres, name="seed_0.pt")
    assert meta["hyperparameters"] == hp
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    with pytest.raises(UserError, match="trained on dataset 'd'"):
        load_reranker(tmp_path, "other", "enc", 7, genres, name="seed_0.pt")


def test_reranker_hyperparameters_are_checked_at_load(tmp_path):
    from recmodels.train import load_reranker, save_reranker

    model, hp, genres = _tiny_reranker(tmp_path)
    save_reranker(tmp_path, model, {**hp, "heads": 3}, {"dataset": "d", "n_items": 7})
    with pytest.raises(UserError, match=r"model.pt: hyperparameter heads \(3\) must divide hidden \(8\)"):
        load_reranker(tmp_path, "d", "enc", 7, genres)


def test_planted_recbole_checkpoint_is_refused(tmp_path):
    from recmodels.recbole_env import load_checkpoint

    marker = tmp_path / "pwned"
    plant(tmp_path / "SASRec-Nov-24-2026.pth", marker)
    with pytest.raises(UserError, match="a torch.save file"):
        load_checkpoint(tmp_path / "SASRec-Nov-24-2026.pth")
    assert not marker.exists()


def test_garbage_model_file_is_one_line(tmp_path):
    from rlrf.core.io import read_safetensors

    (tmp_path / "m.pt").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(UserError, match=r"m.pt: not a safetensors file"):
        read_safetensors(tmp_path / "m.pt", "train it again")


def _sasrec_setup(tmp_path):
    from rlrf.core.config import DataConfig, SASRecConfig
    from rlrf.data.dataset import load_dataset

    ds = load_dataset(DataConfig(max_users=30), seed=0)
    cfg = SASRecConfig(epochs=1, hidden_size=8, n_heads=2, n_layers=1, max_seq_length=10, show_progress=False)
    return ds, cfg


def test_planted_sasrec_cache_is_refused_and_never_runs(tmp_path):
    """The cached SASRec weights are read from safetensors only; an old sasrec.pth is removed unread."""
    from recmodels.sequential import WEIGHTS_FILE
    from rlrf.data.candidates import generate_candidates

    torch.set_num_threads(1)
    ds, cfg = _sasrec_setup(tmp_path)
    out = tmp_path / "sasrec"
    marker = tmp_path / "pwned"
    plant(out / "sasrec.pth", marker)  # an older rlrf's cache: never read
    plant(out / "SASRec-Nov-24-2026_03-00-00.pth", marker)  # a killed older run's RecBole checkpoint
    plant(out / WEIGHTS_FILE, marker)
    with pytest.raises(UserError, match=rf"{WEIGHTS_FILE}: a torch.save file .*re-run `rlrf data`"):
        generate_candidates(ds, cfg, 30, out, seed=0)
    assert not marker.exists()
    assert not (out / "sasrec.pth").exists() and not list(out.glob("SASRec-*"))
    assert not (out / "work").exists()

    (out / WEIGHTS_FILE).unlink()  # as the message says: the rerun trains and caches safetensors
    first = generate_candidates(ds, cfg, 30, out, seed=0)
    assert sorted(p.name for p in out.iterdir()) == ["sasrec.json", WEIGHTS_FILE]
    again = generate_candidates(ds, cfg, 30, out, seed=0)  # from the cache
    assert again.items == first.items
    assert not marker.exists()
