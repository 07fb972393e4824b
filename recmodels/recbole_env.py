"""RecBole 1.2.1 on today's stack: the workarounds, applied once, in one place (the facts behind each are in its docstring).

- Importing `recbole.model.sequential_recommender` switches on autograd anomaly detection for the
  whole process (sine.py); we switch it off again (about 1.4x faster).
- glibc returning freed arenas to the OS on every SASRec batch costs a third of the step time;
  keeping them (no mmap, high trim threshold) avoids it.
- `recbole.quick_start` imports ray (and pkg_resources): never import it.
- `recbole.config.Config` also reads `--key=value` pairs from `sys.argv`, so an `rlrf` option such as
  `--epochs=60` would silently become a RecBole setting: build configs with `make_config`.
- RecBole's trainer saves its best state (model, optimizer, its whole Config) with `torch.save`,
  and loading such a file can run arbitrary code. `prepare_recbole` replaces `Trainer._save_checkpoint` so that
  the best state is written as safetensors (the model's tensors only) to
  `trainer.saved_model_file`, renamed `*.safetensors`; `load_checkpoint` reads only that format.
  No torch.save file is ever written or loaded, so `Trainer.evaluate(load_best_model=True)` (a
  torch.load) must not be used: load the best state with `load_checkpoint` instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import warnings
from pathlib import Path

import torch

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


@functools.cache
def prepare_recbole() -> None:
    """Import RecBole's models and undo their global side effects; idempotent."""
    import recbole.model.sequential_recommender  # noqa: F401  (the import that enables anomaly mode)
    from recbole.trainer import Trainer

    torch.autograd.set_detect_anomaly(False)
    Trainer._save_checkpoint = _save_checkpoint_safetensors
    # RecBole's pandas and amp calls warn on every dataset load; the behaviour is correct on pandas 2.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    logging.getLogger("recbole").setLevel(logging.WARNING)
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        try:
            libc = ctypes.CDLL(libc_name)
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
        except (OSError, AttributeError):  # not glibc: nothing to tune
            pass


def make_config(model: str, dataset: str, config_dict: dict):
    """A RecBole `Config` from `config_dict` alone: the process's command line is hidden from it."""
    import sys

    from recbole.config import Config

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return Config(model=model, dataset=dataset, config_dict=config_dict)
    finally:
        sys.argv = argv


def run_settings(checkpoint_dir: Path, seed: int) -> dict:
    """RecBole settings every rlrf model shares: CPU, seeded, quiet, nothing cached but the checkpoint
    (RecBole's dataset/dataloader caches are keyed by name only and would outlive our atomic files)."""
    return {
        "checkpoint_dir": str(checkpoint_dir),
        "seed": seed,
        "reproducibility": True,
        "use_gpu": False,
        "device": "cpu",
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
        "state": "WARNING",
    }


def _save_checkpoint_safetensors(self, epoch, verbose=True, **kwargs):
    """Replaces RecBole's `Trainer._save_checkpoint`: the model's tensors as safetensors, no torch.save.

    Resuming RecBole's training from a checkpoint (optimizer state, epoch) is not something rlrf
    does, so only the weights are kept. `self.saved_model_file` ends in `.safetensors`.
    """
    if not self.config["single_spec"] and self.config["local_rank"] != 0:
        return
    if self.model.other_parameter():
        raise RuntimeError(f"{type(self.model).__name__} keeps non-tensor state; rlrf saves tensors only")
    path = Path(kwargs.pop("saved_model_file", self.saved_model_file)).with_suffix(".safetensors")
    self.saved_model_file = str(path)
    from rlrf.core.io import save_state_dict

    save_state_dict(path, self.model.state_dict(), {"epoch": str(epoch)})


def load_checkpoint(path: Path) -> dict:
    """The best state RecBole's trainer saved (see `_save_checkpoint_safetensors`): {"state_dict": ...}."""
    from rlrf.core.io import read_safetensors

    tensors, _ = read_safetensors(path, "train the model again")
    return {"state_dict": tensors}
